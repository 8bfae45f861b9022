//! The documentation (the mdBook under `docs/`, README.md and the other
//! top-level Markdown files) kept true by the sources it describes:
//!
//! - the HTTP API page is rendered from `openapi.yaml` and the template
//!   parameter table from `template.yaml`; a committed page that differs
//!   fails, and `BLESS=1 cargo test --test docs` rewrites it;
//! - every environment variable the code reads or the template sets, every
//!   metric name, every error code and every alarm is documented;
//! - every internal link and anchor resolves, every `{{#include}}` names a
//!   file, and every ```json block parses.
//!
//! No network, no build of the book: `.ci/run` builds it with mdbook.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/src");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(ROOT)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every `.md` file under `dir`, sorted.
fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The book's pages and the top-level Markdown a reader meets on GitHub.
fn all_markdown() -> Vec<PathBuf> {
    let mut files = markdown_files(Path::new(BOOK));
    for top in [
        "README.md",
        "SECURITY.md",
        "CHANGELOG.md",
        "docs/development.md",
    ] {
        files.push(Path::new(ROOT).join(top));
    }
    files
}

fn bless() -> bool {
    std::env::var_os("BLESS").is_some_and(|v| v == "1")
}

/// Puts `body` between the `<!-- generated from {what}: begin/end -->`
/// markers of `file`. Fails when the committed text differs, unless
/// `BLESS=1`, which rewrites it.
fn check_generated(file: &str, what: &str, body: &str) {
    let begin = format!("<!-- generated from {what}: begin -->\n");
    let end = format!("<!-- generated from {what}: end -->");
    let text = read(file);
    let start = text
        .find(&begin)
        .unwrap_or_else(|| panic!("{file} has no line {begin:?}"))
        + begin.len();
    let stop = text[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("{file} has no line {end:?}"))
        + start;
    if text[start..stop] == *body {
        return;
    }
    if bless() {
        let new = format!("{}{body}{}", &text[..start], &text[stop..]);
        std::fs::write(Path::new(ROOT).join(file), new).unwrap();
        return;
    }
    let (old, new): (Vec<&str>, Vec<&str>) =
        (text[start..stop].lines().collect(), body.lines().collect());
    let first = old
        .iter()
        .zip(&new)
        .position(|(a, b)| a != b)
        .unwrap_or(old.len().min(new.len()));
    panic!(
        "{file} is out of date with {what} (first difference at generated line {}:\n  committed: {:?}\n  expected:  {:?}).\nRewrite it with: BLESS=1 cargo test --test docs",
        first + 1,
        old.get(first).copied().unwrap_or("<end>"),
        new.get(first).copied().unwrap_or("<end>"),
    );
}

/// Text safe inside a Markdown table cell on one line: pipes escaped
/// everywhere (GFM reads `\|` inside code spans too), `<`, `>` and `*`
/// only outside code spans, where they would be read as HTML or emphasis.
fn cell(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    for (i, piece) in one_line.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        let piece = piece.replace('|', "\\|");
        if i % 2 == 0 {
            out.push_str(
                &piece
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('*', "\\*"),
            );
        } else {
            out.push_str(&piece);
        }
    }
    out
}

fn code(s: &str) -> String {
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

// ---------------------------------------------------------------------------
// template.yaml
// ---------------------------------------------------------------------------

fn template() -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&read("template.yaml")).expect("template.yaml is YAML")
}

fn yaml_text(v: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::String(s) => Some(s.clone()),
        Y::Number(n) => Some(n.to_string()),
        Y::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The parameter table: every parameter, in the template's order.
fn render_parameters(t: &serde_yaml_ng::Value) -> String {
    let params = t["Parameters"].as_mapping().expect("Parameters");
    let mut out =
        String::from("| parameter | default | allowed | description |\n|---|---|---|---|\n");
    for (name, p) in params {
        let name = name.as_str().expect("a parameter name");
        let default = match p.get("Default").and_then(yaml_text) {
            None => "**required**".to_string(),
            Some(d) if d.is_empty() => "*(empty)*".to_string(),
            Some(d) => code(&d),
        };
        let mut allowed = Vec::new();
        if let Some(values) = p.get("AllowedValues").and_then(|v| v.as_sequence()) {
            let values: Vec<String> = values
                .iter()
                .filter_map(yaml_text)
                .map(|v| code(&v))
                .collect();
            allowed.push(values.join(", "));
        }
        match (
            p.get("MinValue").and_then(yaml_text),
            p.get("MaxValue").and_then(yaml_text),
        ) {
            (Some(lo), Some(hi)) => allowed.push(format!("{lo} to {hi}")),
            (Some(lo), None) => allowed.push(format!("{lo} or more")),
            (None, Some(hi)) => allowed.push(format!("up to {hi}")),
            (None, None) => {}
        }
        if p.get("Type").and_then(|v| v.as_str()) == Some("CommaDelimitedList") {
            allowed.push("comma-separated list".to_string());
        }
        let description = p.get("Description").and_then(yaml_text).unwrap_or_default();
        out.push_str(&format!(
            "| {} | {default} | {} | {} |\n",
            code(name),
            allowed.join("; "),
            cell(&description)
        ));
    }
    out
}

#[test]
fn the_parameter_table_is_generated_from_the_template() {
    let t = template();
    let table = render_parameters(&t);
    let count = t["Parameters"].as_mapping().unwrap().len();
    assert_eq!(table.lines().count(), count + 2, "one row per parameter");
    check_generated("docs/src/deploy/parameters.md", "template.yaml", &table);
}

/// `FailedAlarm` → `failed`, `LambdaThrottlesAlarm` → `lambda-throttles`.
fn runbook_name(logical_id: &str) -> String {
    let base = logical_id.strip_suffix("Alarm").unwrap_or(logical_id);
    let mut out = String::new();
    for (i, c) in base.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[test]
fn every_alarm_of_the_template_has_a_runbook_page() {
    let t = template();
    let summary = read("docs/src/SUMMARY.md");
    let mut alarms = Vec::new();
    for (id, r) in t["Resources"].as_mapping().expect("Resources") {
        if r["Type"].as_str() != Some("AWS::CloudWatch::Alarm") {
            continue;
        }
        let id = id.as_str().unwrap();
        let page = format!("operate/runbooks/{}.md", runbook_name(id));
        let path = format!("docs/src/{page}");
        assert!(
            Path::new(ROOT).join(&path).exists(),
            "the alarm {id} has no runbook page: write {path}"
        );
        assert!(
            read(&path).contains(id),
            "{path} should name the alarm {id}"
        );
        assert!(
            summary.contains(&format!("({page})")),
            "SUMMARY.md should list {page} (the alarm {id})"
        );
        // The page is named where the alarm's email lands.
        let pointer = format!("operate/runbooks/{}", runbook_name(id));
        let description = r["Properties"]["AlarmDescription"].as_str().unwrap_or("");
        assert!(
            description.contains(&format!("Runbook: {pointer}.")),
            "{id}'s AlarmDescription should end with 'Runbook: {pointer}.'"
        );
        alarms.push(id.to_string());
    }
    assert!(alarms.len() >= 14, "the template's alarms: {alarms:?}");
    assert_eq!(runbook_name("DlqAlarm"), "dlq");
    assert_eq!(
        runbook_name("EventFailureQueueAlarm"),
        "event-failure-queue"
    );
}

#[test]
fn every_runbook_page_has_the_same_parts() {
    let dir = Path::new(BOOK).join("operate/runbooks");
    let mut pages = 0;
    for page in markdown_files(&dir) {
        let name = page.file_name().unwrap().to_str().unwrap();
        if [
            "index.md",
            "kill-switch.md",
            "wrong-device.md",
            "redrive.md",
        ]
        .contains(&name)
        {
            continue;
        }
        pages += 1;
        let text = std::fs::read_to_string(&page).unwrap();
        for part in [
            "**What it means.**",
            "**Confirm.**",
            "**What to do",
            "**Recover.**",
            "**Done when**",
        ] {
            assert!(text.contains(part), "{}: no {part} part", rel(&page));
        }
        assert!(
            text.contains("```text\n") || text.contains("```sh\n"),
            "{}: no query",
            rel(&page)
        );
    }
    assert!(pages >= 8, "alarm pages: {pages}");
}

/// A value of the template, as text, for the facts the runbooks quote.
fn template_fact(t: &serde_yaml_ng::Value, path: &[&str]) -> String {
    let mut v = t;
    for key in path {
        v = &v[*key];
    }
    yaml_text(v).unwrap_or_else(|| serde_yaml_ng::to_string(v).unwrap_or_default())
}

#[test]
fn the_runbooks_quote_the_template_right() {
    let t = template();
    let kill = read("docs/src/operate/runbooks/kill-switch.md");
    let function = template_fact(
        &t,
        &[
            "Resources",
            "OffboardFunction",
            "Properties",
            "FunctionName",
        ],
    );
    let worker = template_fact(
        &t,
        &[
            "Resources",
            "OffboardWorkerFunction",
            "Properties",
            "FunctionName",
        ],
    );
    for (name, suffix) in [(&function, "-offboard"), (&worker, "-offboard-worker")] {
        assert!(
            name.contains(&format!("${{AWS::StackName}}{suffix}")),
            "{name}"
        );
        assert!(
            kill.contains(&format!("\"$STACK{suffix}\"")),
            "kill-switch.md names {suffix}"
        );
    }
    for (resource, what) in [
        ("OffboardFunction", "29 s"),
        ("OffboardWorkerFunction", "30 s"),
    ] {
        let timeout = template_fact(&t, &["Resources", resource, "Properties", "Timeout"]);
        assert_eq!(
            format!("{timeout} s"),
            what,
            "{resource}'s timeout changed: update kill-switch.md"
        );
        assert!(
            kill.contains(what),
            "kill-switch.md quotes {resource}'s timeout {what}"
        );
    }
    for resource in ["OffboardFunction", "OffboardWorkerFunction"] {
        let reserved = template_fact(
            &t,
            &[
                "Resources",
                resource,
                "Properties",
                "ReservedConcurrentExecutions",
            ],
        );
        assert!(
            kill.contains(&format!("--reserved-concurrent-executions {reserved}")),
            "kill-switch.md's undo puts back {resource}'s reserved concurrency {reserved}"
        );
    }
    let age = template_fact(
        &t,
        &[
            "Resources",
            "OffboardEventInvokeConfig",
            "Properties",
            "MaximumEventAgeInSeconds",
        ],
    );
    assert!(
        kill.contains(&format!("({age} s)")),
        "kill-switch.md quotes MaximumEventAgeInSeconds {age}"
    );
    let receives = template_fact(
        &t,
        &[
            "Resources",
            "OffboardQueue",
            "Properties",
            "RedrivePolicy",
            "maxReceiveCount",
        ],
    );
    for page in ["redrive.md", "dlq.md"] {
        let text = read(&format!("docs/src/operate/runbooks/{page}"));
        assert!(
            text.contains(&format!("`maxReceiveCount: {receives}`")),
            "{page} quotes maxReceiveCount {receives}"
        );
    }
    let retention = template_fact(
        &t,
        &[
            "Resources",
            "OffboardDeadLetterQueue",
            "Properties",
            "MessageRetentionPeriod",
        ],
    );
    assert_eq!(
        retention, "1209600",
        "the dead-letter queue keeps 14 days: update redrive.md and dlq.md"
    );
}

// ---------------------------------------------------------------------------
// Configuration, metrics, error codes
// ---------------------------------------------------------------------------

/// The string literals in `text` that look like environment variables.
fn env_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for piece in text.split('"').skip(1).step_by(2) {
        if piece.len() >= 4
            && piece.starts_with(|c: char| c.is_ascii_uppercase())
            && piece
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            out.insert(piece.to_string());
        }
    }
    out
}

/// Source text without its `#[cfg(test)]` module.
fn without_tests(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The backticked names in the first column of the page's tables.
fn first_column_names(page: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in page.lines().filter(|l| l.starts_with("| `")) {
        let first = line[1..].split(" | ").next().unwrap_or("");
        for name in first.split('`').skip(1).step_by(2) {
            out.insert(name.to_string());
        }
    }
    out
}

#[test]
fn every_variable_the_code_reads_or_the_template_sets_is_documented() {
    // Read by the Lambda runtime client, not configuration.
    const NOT_CONFIGURATION: [&str; 1] = ["AWS_LAMBDA_RUNTIME_API"];
    let mut read_by_code = env_names(without_tests(&read("src/config.rs")));
    for file in rust_files(&Path::new(ROOT).join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for call in ["env::var(", "env::var_os("] {
            for piece in without_tests(&text).split(call).skip(1) {
                read_by_code.extend(env_names(piece.split(')').next().unwrap_or("")));
            }
        }
    }
    assert!(read_by_code.contains("SECRET_ID") && read_by_code.contains("RUST_LOG"));

    let t = template();
    let mut set_by_template = BTreeSet::new();
    let mut add = |vars: &serde_yaml_ng::Value| {
        if let Some(m) = vars.as_mapping() {
            set_by_template.extend(m.keys().filter_map(|k| k.as_str().map(String::from)));
        }
    };
    add(&t["Globals"]["Function"]["Environment"]["Variables"]);
    for (_, r) in t["Resources"].as_mapping().unwrap() {
        add(&r["Properties"]["Environment"]["Variables"]);
    }
    assert!(set_by_template.contains("SECRET_ID") && set_by_template.contains("MDE_MODE"));

    let documented = first_column_names(&read("docs/src/reference/configuration.md"));
    let missing: Vec<_> = read_by_code
        .iter()
        .chain(&set_by_template)
        .filter(|v| !NOT_CONFIGURATION.contains(&v.as_str()) && !documented.contains(*v))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        missing.is_empty(),
        "variables read by src/ or set by template.yaml but missing from the table of docs/src/reference/configuration.md: {missing:?}"
    );
}

#[test]
fn every_metric_name_is_documented() {
    let metrics = read("src/ops/metrics.rs");
    let start = metrics
        .find("pub mod names {")
        .expect("src/ops/metrics.rs: pub mod names");
    let block = &metrics[start..];
    let block = &block[..block.find("\n}").expect("the end of mod names")];
    let names: Vec<&str> = block
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(names.len() >= 20, "metric names found: {names:?}");
    let page = read("docs/src/reference/observability.md");
    let table: String = page
        .lines()
        .filter(|l| l.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !table.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics of src/ops/metrics.rs missing from the metrics table of docs/src/reference/observability.md: {missing:?}"
    );
    // The device statuses are metrics too.
    for status in ["offboard_requested", "failed", "budget_exceeded"] {
        assert!(table.contains(&format!("`{status}`")), "{status}");
    }
}

fn openapi() -> Value {
    serde_yaml_ng::from_str(&read("openapi.yaml")).expect("openapi.yaml is YAML")
}

#[test]
fn every_error_code_is_on_the_errors_page() {
    let doc = openapi();
    let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode's enum");
    let page = read("docs/src/reference/errors.md");
    let missing: Vec<_> = codes
        .iter()
        .filter_map(Value::as_str)
        .filter(|c| !page.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes of openapi.yaml missing from docs/src/reference/errors.md: {missing:?}"
    );
}

// ---------------------------------------------------------------------------
// openapi.yaml → the HTTP API page
// ---------------------------------------------------------------------------

struct Api {
    doc: Value,
}

impl Api {
    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let target = self
                    .doc
                    .pointer(r.trim_start_matches('#'))
                    .unwrap_or_else(|| panic!("openapi.yaml: no {r}"));
                self.resolve(target)
            }
            None => v,
        }
    }

    fn ref_name(v: &Value) -> Option<&str> {
        v.get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
    }

    /// A schema's type in words.
    fn type_of(&self, schema: &Value) -> String {
        let s = self.resolve(schema);
        if let Some(values) = s.get("enum").and_then(Value::as_array) {
            let values: Vec<String> = values
                .iter()
                .map(|v| code(v.as_str().map_or(v.to_string(), String::from).as_str()))
                .collect();
            return format!("one of {}", values.join(", "));
        }
        if let Some(c) = s.get("const") {
            return format!("always {}", code(c.as_str().unwrap_or_default()));
        }
        let base = match s.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" or "),
            _ => Self::ref_name(schema).unwrap_or("any").to_string(),
        };
        match (base.as_str(), s.get("items")) {
            ("array", Some(items)) => format!("array of {}", self.type_of(items)),
            _ => base,
        }
    }

    fn description(&self, v: &Value) -> String {
        let own = v.get("description").and_then(Value::as_str);
        let resolved = self.resolve(v).get("description").and_then(Value::as_str);
        cell(own.or(resolved).unwrap_or(""))
    }

    /// The error codes a response's JSON schema allows, if it is an error.
    fn error_codes(&self, schema: &Value) -> Vec<String> {
        let s = self.resolve(schema);
        let mut out = Vec::new();
        if let Some(alts) = s.get("oneOf").and_then(Value::as_array) {
            for alt in alts {
                out.extend(self.error_codes(alt));
            }
            return out;
        }
        for part in s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let c = &part["properties"]["error"]["properties"]["code"];
            if let Some(values) = c.get("enum").and_then(Value::as_array) {
                out.extend(values.iter().filter_map(Value::as_str).map(String::from));
            }
            if let Some(v) = c.get("const").and_then(Value::as_str) {
                out.push(v.to_string());
            }
        }
        out
    }

    fn security(&self, op: &Value) -> String {
        let reqs = op
            .get("security")
            .or_else(|| self.doc.get("security"))
            .and_then(Value::as_array);
        let Some(reqs) = reqs else {
            return "none".to_string();
        };
        let alternatives: Vec<String> = reqs
            .iter()
            .filter_map(Value::as_object)
            .map(|r| {
                if r.is_empty() {
                    "none".to_string()
                } else {
                    r.keys().map(|k| code(k)).collect::<Vec<_>>().join(" + ")
                }
            })
            .collect();
        alternatives.join(", or ")
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let info = &self.doc["info"];
        out.push_str(&format!(
            "Rendered from `openapi.yaml` (OpenAPI {}, document version {}).\n\n",
            self.doc["openapi"].as_str().unwrap_or("?"),
            info["version"].as_str().unwrap_or("?")
        ));
        out.push_str(info["description"].as_str().unwrap_or("").trim_end());
        out.push_str("\n\n## Routes\n\n| method | path | summary |\n|---|---|---|\n");
        let paths = self.doc["paths"].as_object().expect("paths");
        let mut ops = Vec::new();
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("a path item") {
                if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    continue;
                }
                ops.push((path.as_str(), method.to_uppercase(), op));
            }
        }
        for (path, method, op) in &ops {
            out.push_str(&format!(
                "| {method} | [{}](#{}) | {} |\n",
                code(path),
                anchor_id(&format!("{method} {path}")),
                cell(op["summary"].as_str().unwrap_or(""))
            ));
        }
        for (path, method, op) in &ops {
            out.push_str(&format!("\n## `{method} {path}`\n\n"));
            if let Some(s) = op["summary"].as_str() {
                out.push_str(&format!("**{}.**\n", s.trim_end_matches('.')));
            }
            if let Some(d) = op["description"].as_str() {
                out.push_str(&format!("\n{}\n", d.trim_end()));
            } else {
                out.push('\n');
            }
            out.push_str(&format!("\n**Auth:** {}.\n", self.security(op)));
            let params: Vec<&Value> = op
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(
                    paths[*path]
                        .get("parameters")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                )
                .collect();
            if !params.is_empty() {
                out.push_str("\n| parameter | in | type | description |\n|---|---|---|---|\n");
                for p in params {
                    let r = self.resolve(p);
                    out.push_str(&format!(
                        "| {} | {} | {} | {} |\n",
                        code(r["name"].as_str().unwrap_or("?")),
                        r["in"].as_str().unwrap_or("?"),
                        self.type_of(&r["schema"]),
                        self.description(r)
                    ));
                }
            }
            if let Some(body) = op.get("requestBody") {
                let body = self.resolve(body);
                let media = &body["content"]["application/json"];
                let schema = &media["schema"];
                out.push_str(&format!(
                    "\n**Request body** (`application/json`{}{}):\n",
                    Self::ref_name(schema)
                        .map(|n| format!(", schema `{n}`"))
                        .unwrap_or_default(),
                    if body["required"] == Value::Bool(true) {
                        ", required"
                    } else {
                        ""
                    }
                ));
                let s = self.resolve(schema);
                if let Some(props) = s.get("properties").and_then(Value::as_object) {
                    let required: BTreeSet<&str> = s
                        .get("required")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    out.push_str(
                        "\n| field | type | required | description |\n|---|---|---|---|\n",
                    );
                    for (name, p) in props {
                        out.push_str(&format!(
                            "| {} | {} | {} | {} |\n",
                            code(name),
                            self.type_of(p),
                            if required.contains(name.as_str()) {
                                "yes"
                            } else {
                                "no"
                            },
                            self.description(p)
                        ));
                    }
                    if s.get("additionalProperties") == Some(&Value::Bool(false)) {
                        out.push_str("\nAny other field is refused (400 `unknown_field`).\n");
                    }
                } else {
                    out.push_str("\nThe tool's own JSON, read as the source's definition says.\n");
                }
                if let Some(examples) = media.get("examples").and_then(Value::as_object) {
                    for (name, ex) in examples {
                        let ex = self.resolve(ex);
                        out.push_str(&format!(
                            "\nExample `{name}`{}:\n\n```json\n{}\n```\n",
                            ex.get("summary")
                                .and_then(Value::as_str)
                                .map(|s| format!(" ({})", cell(s)))
                                .unwrap_or_default(),
                            serde_json::to_string_pretty(&ex["value"]).unwrap()
                        ));
                    }
                }
            }
            out.push_str("\n| status | meaning | error codes | headers |\n|---|---|---|---|\n");
            for (status, resp) in op["responses"].as_object().expect("responses") {
                let r = self.resolve(resp);
                let schema = &r["content"]["application/json"]["schema"];
                let codes = if schema.is_null() {
                    Vec::new()
                } else {
                    self.error_codes(schema)
                };
                let headers: Vec<String> = r
                    .get("headers")
                    .and_then(Value::as_object)
                    .map(|h| h.keys().map(|k| code(k)).collect())
                    .unwrap_or_default();
                out.push_str(&format!(
                    "| {status} | {} | {} | {} |\n",
                    cell(r["description"].as_str().unwrap_or("")),
                    codes.iter().map(|c| code(c)).collect::<Vec<_>>().join(", "),
                    headers.join(", ")
                ));
            }
        }
        out.push_str("\n## Security schemes\n\n| name | type | details |\n|---|---|---|\n");
        let schemes = self.doc["components"]["securitySchemes"]
            .as_object()
            .expect("securitySchemes");
        for (name, s) in schemes {
            let mut details = Vec::new();
            if let (Some(at), Some(n)) = (s["in"].as_str(), s["name"].as_str()) {
                details.push(format!("{} in the {at}", code(n)));
            }
            if let Some(scheme) = s["scheme"].as_str() {
                details.push(format!("HTTP {}", code(scheme)));
            }
            if let Some(d) = s["description"].as_str() {
                details.push(cell(d));
            }
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                code(name),
                s["type"].as_str().unwrap_or("?"),
                details.join("; ")
            ));
        }
        out
    }
}

#[test]
fn the_api_page_is_rendered_from_openapi() {
    let api = Api { doc: openapi() };
    let page = api.render();
    for route in ["POST /v1/offboard", "GET /v1/actions/{action_id}"] {
        assert!(page.contains(&format!("## `{route}`")), "{route}");
    }
    check_generated("docs/src/reference/api.md", "openapi.yaml", &page);
}

// ---------------------------------------------------------------------------
// Links, anchors, includes, JSON blocks
// ---------------------------------------------------------------------------

/// An mdBook (and GitHub) heading id: lowercase, alphanumerics, `-` and
/// `_` kept, spaces become `-`, the rest dropped.
fn anchor_id(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_ascii_lowercase())
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// A heading's text as rendered: code spans and links reduced to text.
fn heading_text(line: &str) -> String {
    let text = line.trim_start_matches('#').trim();
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match (after.find("]("), after.find(')')) {
            (Some(j), Some(k)) if j < k => {
                out.push_str(&after[..j]);
                rest = &after[k + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace('`', "")
}

/// Lines outside fenced code blocks, with their numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match fence {
            Some(f) if t.starts_with(f) && t.trim_end() == f => fence = None,
            Some(_) => {}
            None if t.starts_with("```") => {
                let ticks = t.len() - t.trim_start_matches('`').len();
                fence = Some(&t[..ticks]);
            }
            None => out.push((i + 1, line)),
        }
    }
    out
}

fn headings(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut ids = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, line) in prose_lines(&text) {
        if line.starts_with('#') && line.trim_start_matches('#').starts_with(' ') {
            let id = anchor_id(&heading_text(line));
            let n = seen.entry(id.clone()).or_insert(0);
            ids.insert(if *n == 0 {
                id.clone()
            } else {
                format!("{id}-{n}")
            });
            *n += 1;
        }
    }
    ids
}

/// Code spans removed, so that `[x](y)` inside backticks is not a link.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    for (i, piece) in line.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(piece);
        }
    }
    out
}

/// The targets of `[text](target)` and `![alt](target)` links.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    for (i, _) in line.match_indices("](") {
        let rest = &line[i + 2..];
        if let Some(end) = rest.find(')') {
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            out.push(target.to_string());
        }
    }
    out
}

#[test]
fn every_internal_link_resolves() {
    let book = Path::new(BOOK);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in all_markdown() {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.is_empty()
                    || target.starts_with("http://")
                    || target.starts_with("https://")
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let dest = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                let at = format!("{}:{n}: {target}", rel(&file));
                let Ok(dest) = dest.canonicalize() else {
                    broken.push(format!("{at}: no such file"));
                    continue;
                };
                if file.starts_with(book) && !dest.starts_with(book) {
                    broken.push(format!(
                        "{at}: outside docs/src, so missing from the built site"
                    ));
                    continue;
                }
                if let Some(anchor) = anchor
                    && dest.extension().is_some_and(|e| e == "md")
                    && !headings(&dest).contains(anchor)
                {
                    broken.push(format!("{at}: no heading with that id"));
                }
            }
        }
    }
    assert!(checked > 100, "links checked: {checked}");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_book_page_is_in_the_summary_and_every_include_exists() {
    let book = Path::new(BOOK);
    let summary = read("docs/src/SUMMARY.md");
    let listed: BTreeSet<PathBuf> = prose_lines(&summary)
        .iter()
        .flat_map(|(_, l)| link_targets(l))
        .map(|t| book.join(t))
        .collect();
    let mut problems = Vec::new();
    for page in markdown_files(book) {
        if page.ends_with("SUMMARY.md") {
            continue;
        }
        if !listed.contains(&page) {
            problems.push(format!("{}: not in SUMMARY.md", rel(&page)));
        }
        let text = std::fs::read_to_string(&page).unwrap();
        for (n, line) in text.lines().enumerate() {
            for piece in line.split("{{#include ").skip(1) {
                if line.contains("\\{{#include") {
                    continue;
                }
                let target = piece.split("}}").next().unwrap_or("").trim();
                let target = target.split(':').next().unwrap_or(target);
                if !page.parent().unwrap().join(target).is_file() {
                    problems.push(format!("{}:{}: no file {target}", rel(&page), n + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The ```json blocks of a page, with their first line's number.
fn json_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match current.as_mut() {
            Some(_) if t.trim_end() == "```" => out.push(current.take().unwrap()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None if t.trim_end() == "```json" => current = Some((i + 1, String::new())),
            None => {}
        }
    }
    out
}

#[test]
fn every_json_block_parses() {
    let mut bad = Vec::new();
    let mut count = 0;
    for file in all_markdown() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, body) in json_blocks(&text) {
            count += 1;
            let trimmed = body.trim();
            let json = match trimmed
                .strip_prefix("{{#include ")
                .and_then(|r| r.strip_suffix("}}"))
            {
                Some(target) => {
                    let path = file.parent().unwrap().join(target.trim());
                    match std::fs::read_to_string(&path) {
                        Ok(t) => t,
                        Err(e) => {
                            bad.push(format!("{}:{n}: {target}: {e}", rel(&file)));
                            continue;
                        }
                    }
                }
                None => body.clone(),
            };
            if let Err(e) = serde_json::from_str::<Value>(&json) {
                bad.push(format!(
                    "{}:{n}: not JSON ({e}); mark a deliberately partial block ```jsonc",
                    rel(&file)
                ));
            }
        }
    }
    assert!(count > 20, "json blocks found: {count}");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_readme_is_a_short_landing_page_with_the_two_commands() {
    let readme = read("README.md");
    assert!(
        readme.len() < 10 * 1024,
        "README.md is {} bytes: keep it under 10 KB and move detail into docs/src",
        readme.len()
    );
    // CI runs the README's test command; the local run is the other one.
    assert!(readme.contains("\ncargo test --workspace --locked\n"));
    assert!(readme.contains("\ncargo run -p mde-local\n"));
    assert!(readme.contains("1.94"), "the Rust version");
    let cargo = read("Cargo.toml");
    assert!(
        cargo.contains("rust-version = \"1.94\""),
        "README states Cargo.toml's rust-version"
    );
    assert!(readme.contains("```mermaid"), "the architecture picture");
}

#[test]
fn the_helpers_read_markdown_as_mdbook_does() {
    assert_eq!(anchor_id("TLS: roots and entropy"), "tls-roots-and-entropy");
    assert_eq!(
        anchor_id(&heading_text("## 2. Deployed, with a read-only app")),
        "2-deployed-with-a-read-only-app"
    );
    assert_eq!(
        anchor_id(&heading_text(
            "## Passing `Sources` without quoting trouble"
        )),
        "passing-sources-without-quoting-trouble"
    );
    assert_eq!(
        link_targets("see [a](x.md#y) and `[b](not-a-link)` and ![c](p.png)"),
        ["x.md#y", "p.png"]
    );
    let blocks = json_blocks("```json\n{\"a\": 1}\n```\n```jsonc\n{...}\n```\n");
    assert_eq!(blocks, [(1, "{\"a\": 1}\n".to_string())]);
    assert_eq!(
        prose_lines("a\n```sh\n[x](y)\n```\nb")
            .iter()
            .map(|l| l.1)
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(cell("a <b> *c* `<d>|e`"), "a &lt;b&gt; \\*c\\* `<d>\\|e`");
    assert_eq!(
        env_names("env.or(\"DRY_RUN\", x) \"lower\" \"ABC\""),
        BTreeSet::from(["DRY_RUN".to_string()])
    );
}
