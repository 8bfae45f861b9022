#!/usr/bin/env python3
"""Renders the CloudWatch dashboard of template.yaml (OperatorDashboard) from
the EMF lines of a local run, so the book (Operate, Dashboard) can show
what an operator sees.

    python3 docs/render_dashboard.py EMF_LOG [-o docs/src/operate/dashboard.png]

EMF_LOG is the function's stdout (mde-local's, or the bootstrap's): lines
that are not EMF objects are skipped. The widgets, their titles and their
metrics are read from the template itself, so the picture follows the
dashboard when either changes. CloudWatch's 5-minute periods are scaled down
to the run's length: a local run lasts seconds, not hours.

Needs matplotlib and PyYAML (pip install matplotlib pyyaml).
"""

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "MdeOffboard"
# One bucket per round of docs/dashboard_run.sh, as one period each.
BUCKETS = 6


class CfnLoader(yaml.SafeLoader):
    """Keeps CloudFormation's short tags (!Sub, !If, ...) as plain values."""


def _any_tag(loader, _suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


CfnLoader.add_multi_constructor("!", _any_tag)


def dashboard_widgets(template: Path):
    doc = yaml.load(template.read_text(), Loader=CfnLoader)
    body = doc["Resources"]["OperatorDashboard"]["Properties"]["DashboardBody"]
    text = body[0] if isinstance(body, list) else body
    subs = {
        "MetricsNamespace": NAMESPACE,
        "AWS::Region": "us-east-1",
        "QueueName": "OffboardQueue",
        "DeadLetterQueueName": "OffboardDeadLetterQueue",
    }
    text = re.sub(r"\$\{([^}]+)\}", lambda m: subs.get(m.group(1), m.group(0)), text)
    return json.loads(text)["widgets"]


def read_emf(path: Path):
    """(timestamp_ms, source, {metric: [values]}) per EMF line."""
    points = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        try:
            obj = json.loads(line)
            meta = obj["_aws"]
            ts = int(meta["Timestamp"])
            names = [m["Name"] for d in meta["CloudWatchMetrics"] for m in d["Metrics"]]
        except (ValueError, KeyError, TypeError):
            continue
        values = {}
        for n in names:
            v = obj.get(n)
            values[n] = v if isinstance(v, list) else [v]
        points.append((ts, obj.get("Source", ""), values))
    return points


def percentile(values, p):
    if not values:
        return math.nan
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def series(points, metric, stat, source=None):
    """The metric per bucket of the run, with the widget's statistic."""
    if not points:
        return [], []
    t0 = min(p[0] for p in points)
    t1 = max(p[0] for p in points)
    width = max((t1 - t0) / BUCKETS, 1)
    buckets = defaultdict(list)
    for ts, src, values in points:
        if source is not None and src != source:
            continue
        b = min(int((ts - t0) / width), BUCKETS - 1)
        buckets[b].extend(v for v in values.get(metric, []) if isinstance(v, (int, float)))
    xs = [(i + 0.5) * width / 1000 for i in range(BUCKETS)]
    ys = []
    for i in range(BUCKETS):
        vals = buckets.get(i, [])
        if stat.startswith("p"):
            ys.append(percentile(vals, float(stat[1:])))
        elif stat == "Maximum":
            ys.append(max(vals) if vals else math.nan)
        else:
            ys.append(sum(vals) if vals else 0.0)
    return xs, ys


def lines_of(widget, points):
    """(label, xs, ys, color) for each line the widget would draw."""
    props = widget["properties"]
    out = []
    for m in props["metrics"]:
        opts = m[-1] if isinstance(m[-1], dict) else {}
        if "expression" in opts:
            found = re.search(r'MetricName=\\?"([^"\\]+)', opts["expression"])
            metric = found.group(1) if found else None
            sources = sorted({p[1] for p in points if metric in p[2]})
            for src in sources:
                xs, ys = series(points, metric, "Sum", src)
                out.append((f"{opts.get('label', metric)} · {src}", xs, ys, None))
            continue
        namespace, metric = m[0], m[1]
        if namespace != NAMESPACE:
            continue
        stat = opts.get("stat", props.get("stat", "Sum"))
        xs, ys = series(points, metric, stat)
        out.append((opts.get("label", metric), xs, ys, opts.get("color")))
    return out


def render(widgets, points, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(w["y"] + w["height"] for w in widgets)
    fig = plt.figure(figsize=(18, rows * 0.8 + 1.0), dpi=100)
    fig.patch.set_facecolor("#f2f3f3")
    grid = fig.add_gridspec(rows, 24, hspace=2.6, wspace=2.2, left=0.04, right=0.99, top=0.93, bottom=0.04)
    span = (max(p[0] for p in points) - min(p[0] for p in points)) / 1000 if points else 0
    fig.suptitle(
        f"mde-offboard — CloudWatch dashboard (OperatorDashboard) rendered from a local run's "
        f"{len(points)} EMF lines over {span:.0f} s",
        fontsize=13,
        x=0.04,
        ha="left",
    )
    for w in widgets:
        ax = fig.add_subplot(grid[w["y"] : w["y"] + w["height"], w["x"] : w["x"] + w["width"]])
        props = w["properties"]
        ax.set_title(props.get("title", ""), loc="left", fontsize=11, fontweight="bold")
        ax.set_facecolor("white")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.grid(axis="y", color="#e5e5e5")
        ax.tick_params(labelsize=8)
        lines = lines_of(w, points)
        if not lines:
            ax.text(
                0.5,
                0.5,
                "AWS/SQS: no data in a local run\n(queue mode on AWS only)",
                ha="center",
                va="center",
                color="#777",
                transform=ax.transAxes,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        stacked = props.get("stacked", False)
        if stacked:
            xs = lines[0][1]
            ax.stackplot(
                xs,
                *[ys for _, _, ys, _ in lines],
                labels=[label for label, *_ in lines],
                colors=[c for *_, c in lines] if all(c for *_, c in lines) else None,
                alpha=0.85,
            )
        else:
            for label, xs, ys, color in lines:
                ax.plot(xs, ys, label=label, color=color, linewidth=1.8, marker="o", markersize=2.5)
        ax.set_xlabel("seconds into the run (one point per period)", fontsize=8)
        ax.legend(fontsize=7, loc="upper left", frameon=False, ncol=2 if len(lines) > 4 else 1)
        ax.set_ylim(bottom=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=fig.get_facecolor())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("emf_log", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "src" / "operate" / "dashboard.png")
    ap.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    args = ap.parse_args()
    widgets = dashboard_widgets(args.template)
    points = read_emf(args.emf_log)
    if not points:
        sys.exit(f"{args.emf_log}: no EMF lines")
    render(widgets, points, args.out)
    print(f"{args.out}: {len(widgets)} widgets from {len(points)} EMF lines")


if __name__ == "__main__":
    main()
