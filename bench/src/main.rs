//! `mde-bench`: starts each implementation as Lambda does (an executable
//! under a Runtime API endpoint), against the same fakes of Secrets Manager
//! (moto, behind a counting proxy), Entra ID login and Defender, in the same
//! run, and prints each figure for both with the ratio.
//!
//!   mde-bench --rust target/release/bootstrap --peer bench/peer/bootstrap
//!             [--starts 10] [--invocations 1000] [--json out.json]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use mde_offboard::ingest::auth::standard_sign;
use mde_testkit::proxy::FlakyProxy;
use mde_testkit::{
    Api, FakeDefender, FakeMachine, FakeRuntime, GENERIC_WEBHOOK_SECRET, Outcome, events, moto,
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

struct Args {
    rust: String,
    peer: String,
    starts: usize,
    invocations: usize,
    json: Option<String>,
    /// Only the ledger figures (no peer needed).
    ledger_only: bool,
}

fn args() -> Args {
    let v: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        v.iter()
            .position(|a| a == k)
            .and_then(|i| v.get(i + 1).cloned())
    };
    Args {
        rust: get("--rust").unwrap_or_else(|| "target/release/bootstrap".into()),
        peer: get("--peer").unwrap_or_else(|| "bench/peer/bootstrap".into()),
        starts: get("--starts").and_then(|s| s.parse().ok()).unwrap_or(10),
        invocations: get("--invocations")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000),
        json: get("--json"),
        ledger_only: v.iter().any(|a| a == "--ledger-only"),
    }
}

fn machine_id(i: usize) -> String {
    format!("{:040x}", 0xbe00_0000usize + i)
}

struct World {
    fake: FakeDefender,
    proxy: FlakyProxy,
    secret_id: String,
}

async fn world(machines: usize) -> World {
    let moto = moto::moto();
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&moto.endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "bench"))
        .build();
    let secret_id = format!("mde-offboard/bench-{}", std::process::id());
    aws_sdk_secretsmanager::Client::from_conf(conf)
        .create_secret()
        .name(&secret_id)
        .secret_string(mde_testkit::secret_json())
        .send()
        .await
        .expect("create the secret in moto");
    let fake = FakeDefender::start(
        (0..machines)
            .map(|i| {
                FakeMachine::new(
                    &machine_id(i),
                    &format!("bench-{i}.contoso.com"),
                    "Windows11",
                )
            })
            .collect(),
    )
    .await;
    let proxy = FlakyProxy::start(
        moto.endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("moto addr"),
    )
    .await;
    World {
        fake,
        proxy,
        secret_id,
    }
}

fn spawn(exe: &str, runtime: &FakeRuntime, w: &World) -> Child {
    spawn_with(exe, runtime, w, &[])
}

fn spawn_with(exe: &str, runtime: &FakeRuntime, w: &World, extra: &[(&str, String)]) -> Child {
    Command::new(exe)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .envs(runtime.lambda_env())
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", w.proxy.url())
        .env("SECRET_ID", &w.secret_id)
        .env("MDE_API_URL", w.fake.url())
        .env("MDE_LOGIN_URL", w.fake.url())
        .env("RUST_LOG", "info")
        // 3,000 warm calls in a few seconds: the client-side limiter would
        // (rightly) hold them to 100 a minute. The peer has no limiter.
        .env("RATE_LIMIT_PER_MINUTE", "1000000")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {exe}: {e}"))
}

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn event(body: &str) -> Value {
    let id = format!(
        "msg_bench_{}",
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sig = standard_sign(GENERIC_WEBHOOK_SECRET, &id, now, body.as_bytes());
    let ts = now.to_string();
    events::http_api_v2(
        "POST",
        "/v1/offboard",
        &[
            ("webhook-id", &id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        body,
    )
}

fn offboard_body(device: &str, dry_run: bool) -> String {
    json!({"ticket": "BENCH-1", "comment": "benchmark", "devices": [device], "dry_run": dry_run})
        .to_string()
}

async fn invoke(runtime: &FakeRuntime, body: &str, want: &str) -> Duration {
    let (outcome, held) = runtime
        .invoke_timed(event(body), Duration::from_secs(20))
        .await
        .expect("an answer within 20 s");
    let Outcome::Response(v) = outcome else {
        panic!("an error instead of a response: {outcome:?}")
    };
    let answer = v["body"].as_str().unwrap_or("");
    assert!(answer.contains(want), "expected {want}, got {answer}");
    held
}

async fn wait_first_next(runtime: &FakeRuntime, since: Instant) -> Duration {
    loop {
        if let Some(t) = runtime.first_next() {
            return t.duration_since(since);
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "no GET next within 30 s"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn measure(
    exe: &str,
    w: &World,
    a: &Args,
    first_machine: usize,
) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    // Init: process start to the first GET /runtime/invocation/next.
    let mut inits = Vec::new();
    for _ in 0..a.starts {
        let runtime = FakeRuntime::start().await;
        let t0 = Instant::now();
        let mut child = spawn(exe, &runtime, w);
        inits.push(wait_first_next(&runtime, t0).await);
        let _ = child.kill().await;
    }
    out.insert("init_ms_median", ms(percentile(&mut inits, 0.5)));

    let runtime = FakeRuntime::start().await;
    let t0 = Instant::now();
    let mut child = spawn(exe, &runtime, w);
    let pid = child.id().expect("pid");
    let init = wait_first_next(&runtime, t0).await;
    let first = invoke(
        &runtime,
        &offboard_body(&machine_id(first_machine), false),
        "offboard_requested",
    )
    .await;
    out.insert("first_invocation_ms", ms(first));
    out.insert("start_to_first_answer_ms", ms(t0.elapsed()));
    out.insert("init_ms_this_start", ms(init));

    // Warm: counters from here on.
    w.fake.reset_calls();
    let secrets_before = w.proxy.secret_fetches();
    let n = a.invocations;
    let mut dry = Vec::with_capacity(n);
    for _ in 0..n {
        dry.push(
            invoke(
                &runtime,
                &offboard_body(&machine_id(first_machine), true),
                "would_offboard",
            )
            .await,
        );
    }
    let defender_dry = w.fake.count(Api::AnyDefender);
    let mut real = Vec::with_capacity(n);
    for i in 0..n {
        real.push(
            invoke(
                &runtime,
                &offboard_body(&machine_id(first_machine + 1 + i), false),
                "offboard_requested",
            )
            .await,
        );
    }
    let defender_real = w.fake.count(Api::AnyDefender) - defender_dry;
    let mut refused = Vec::with_capacity(n);
    for _ in 0..n {
        refused.push(invoke(&runtime, "{\"ticket\": 1}", "wrong_type").await);
    }
    out.insert("warm_refused_p50_ms", ms(percentile(&mut refused, 0.5)));
    out.insert("warm_refused_p99_ms", ms(percentile(&mut refused, 0.99)));
    out.insert("warm_dry_run_p50_ms", ms(percentile(&mut dry, 0.5)));
    out.insert("warm_dry_run_p99_ms", ms(percentile(&mut dry, 0.99)));
    out.insert("warm_offboard_p50_ms", ms(percentile(&mut real, 0.5)));
    out.insert("warm_offboard_p99_ms", ms(percentile(&mut real, 0.99)));
    out.insert("peak_rss_mib", peak_rss_kib(pid) as f64 / 1024.0);
    out.insert(
        "warm_secret_fetches",
        (w.proxy.secret_fetches() - secrets_before) as f64,
    );
    out.insert("warm_token_fetches", w.fake.count(Api::Login) as f64);
    out.insert(
        "defender_calls_per_device_dry",
        defender_dry as f64 / n as f64,
    );
    out.insert(
        "defender_calls_per_device_offboard",
        defender_real as f64 / n as f64,
    );
    let _ = child.kill().await;
    out
}

/// The warm offboard with the ledger on (moto's DynamoDB, through a proxy
/// that counts the calls by operation), beside the same figure without it
/// from the same binary in the same run.
async fn measure_ledger(
    exe: &str,
    w: &World,
    a: &Args,
    first_machine: usize,
) -> Vec<(String, f64)> {
    let table = mde_testkit::ledger_table::ledger_table_from_template().await;
    let moto_addr = moto::moto()
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("moto addr");
    let proxy = mde_testkit::serial::SerialProxy::start(moto_addr).await;
    let mut out = Vec::new();
    for (label, ledger) in [("without ledger", false), ("with ledger", true)] {
        let runtime = FakeRuntime::start().await;
        let extra = if ledger {
            vec![
                ("LEDGER_TABLE", table.clone()),
                ("AWS_ENDPOINT_URL_DYNAMODB", proxy.url()),
            ]
        } else {
            Vec::new()
        };
        let mut child = spawn_with(exe, &runtime, w, &extra);
        wait_first_next(&runtime, Instant::now()).await;
        let base = first_machine + if ledger { a.invocations + 1 } else { 0 };
        // One to warm up (secret, token, connections), not counted.
        invoke(
            &runtime,
            &offboard_body(&machine_id(base), false),
            "offboard_requested",
        )
        .await;
        let before = proxy.calls();
        let mut real = Vec::with_capacity(a.invocations);
        for i in 0..a.invocations {
            real.push(
                invoke(
                    &runtime,
                    &offboard_body(&machine_id(base + 1 + i), false),
                    "offboard_requested",
                )
                .await,
            );
        }
        out.push((
            format!("warm offboard {label}, p50 (ms)"),
            ms(percentile(&mut real, 0.5)),
        ));
        out.push((
            format!("warm offboard {label}, p99 (ms)"),
            ms(percentile(&mut real, 0.99)),
        ));
        if ledger {
            let after = proxy.calls();
            for (op, n) in &after {
                let d = n - before.get(op).copied().unwrap_or(0);
                out.push((
                    format!("DynamoDB {op} per delivery (1 device)"),
                    d as f64 / a.invocations as f64,
                ));
            }
        }
        let _ = child.kill().await;
    }
    out
}

#[tokio::main]
async fn main() {
    let a = args();
    let w = Arc::new(world(5 * a.invocations + 6).await);
    if a.ledger_only {
        let ledger = measure_ledger(&a.rust, &w, &a, 0).await;
        println!("| ledger figure ({}, same run) | value |", a.rust);
        println!("|---|---:|");
        for (label, v) in &ledger {
            println!("| {label} | {v:.3} |");
        }
        return;
    }
    eprintln!("measuring {} ...", a.rust);
    let rust = measure(&a.rust, &w, &a, 0).await;
    eprintln!("measuring {} ...", a.peer);
    let peer = measure(&a.peer, &w, &a, a.invocations + 1).await;

    let rows: [(&str, &str, bool); 15] = [
        (
            "init_ms_median",
            "init: start to first GET next, median (ms)",
            true,
        ),
        ("first_invocation_ms", "first invocation (ms)", true),
        (
            "start_to_first_answer_ms",
            "start to first answer (ms)",
            true,
        ),
        (
            "warm_refused_p50_ms",
            "warm, refused before Defender, p50 (ms)",
            true,
        ),
        (
            "warm_refused_p99_ms",
            "warm, refused before Defender, p99 (ms)",
            true,
        ),
        (
            "warm_dry_run_p50_ms",
            "warm dry run, 1 device, p50 (ms)",
            true,
        ),
        (
            "warm_dry_run_p99_ms",
            "warm dry run, 1 device, p99 (ms)",
            true,
        ),
        (
            "warm_offboard_p50_ms",
            "warm offboard, 1 device, p50 (ms)",
            true,
        ),
        (
            "warm_offboard_p99_ms",
            "warm offboard, 1 device, p99 (ms)",
            true,
        ),
        ("peak_rss_mib", "peak RSS after the run (MiB)", true),
        ("warm_secret_fetches", "Secrets Manager calls, warm", false),
        ("warm_token_fetches", "token calls, warm", false),
        (
            "defender_calls_per_device_dry",
            "Defender calls per device, dry run",
            false,
        ),
        (
            "defender_calls_per_device_offboard",
            "Defender calls per device, offboard",
            false,
        ),
        (
            "init_ms_this_start",
            "init of the measured start (ms)",
            true,
        ),
    ];
    println!("| figure | mde-offboard (Rust) | Python peer | peer / Rust |");
    println!("|---|---:|---:|---:|");
    for (key, label, ratio) in rows {
        let (r, p) = (rust[key], peer[key]);
        let ratio = if ratio && r > 0.0 {
            format!("{:.1}x", p / r)
        } else {
            "".into()
        };
        println!("| {label} | {r:.3} | {p:.3} | {ratio} |");
    }
    eprintln!("measuring {} with and without the ledger ...", a.rust);
    let ledger = measure_ledger(&a.rust, &w, &a, 2 * a.invocations + 4).await;
    println!();
    println!("| ledger figure (Rust, same run) | value |");
    println!("|---|---:|");
    for (label, v) in &ledger {
        println!("| {label} | {v:.3} |");
    }
    if let Some(path) = a.json {
        let ledger: BTreeMap<&str, f64> = ledger.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let v = json!({"rust": rust, "python_peer": peer, "ledger": ledger});
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap())
            .expect("write the results");
    }
}
