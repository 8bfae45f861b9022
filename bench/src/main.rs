//! `mde-bench`: starts each implementation as Lambda does (an executable
//! under a Runtime API endpoint), against the same fakes of Secrets Manager
//! (moto, behind a counting proxy), Entra ID login and Defender, in the same
//! run, and prints each figure for all of them with the ratios. The floor is
//! a bare `lambda_http` function (bench/floor): what the runtime itself costs.
//! The first answer is measured twice: with the fakes over plain HTTP, and
//! over HTTPS on loopback (a test CA the function is told to trust), where it
//! meets the handshakes a real first invocation pays.
//!
//!   mde-bench --rust target/release/bootstrap --peer bench/peer/bootstrap
//!             --floor target/release/mde-floor
//!             [--starts 10] [--init-starts 30] [--invocations 1000]
//!             [--json out.json]
//!             [--no-peer] [--ledger-only]
//!   mde-bench --rust target/release/bootstrap --bulk [--devices 5000]
//!             [--minute-ms 1000]    (see bulk.rs)

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use mde_offboard::support::webhook_sig::StandardWebhooks;
use mde_testkit::proxy::FlakyProxy;
use mde_testkit::tls::{TestCa, TlsFront, addr_of};
use mde_testkit::{
    Api, FakeDefender, FakeMachine, FakeRuntime, GENERIC_WEBHOOK_SECRET, Outcome, events, moto,
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

mod bulk;

struct Args {
    rust: String,
    peer: String,
    floor: String,
    /// Ours and the floor only (the knob table's runs).
    no_peer: bool,
    starts: usize,
    /// Starts of the floor and ours taking turns, for the init row.
    init_starts: usize,
    invocations: usize,
    json: Option<String>,
    /// Only the ledger figures (no peer needed).
    ledger_only: bool,
    /// The bulk benchmark instead (`bulk.rs`).
    bulk: bool,
    devices: usize,
    minute_ms: u64,
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
        floor: get("--floor").unwrap_or_else(|| "target/release/mde-floor".into()),
        no_peer: v.iter().any(|a| a == "--no-peer"),
        starts: get("--starts").and_then(|s| s.parse().ok()).unwrap_or(10),
        init_starts: get("--init-starts")
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
        invocations: get("--invocations")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000),
        json: get("--json"),
        ledger_only: v.iter().any(|a| a == "--ledger-only"),
        bulk: v.iter().any(|a| a == "--bulk"),
        devices: get("--devices")
            .and_then(|s| s.parse().ok())
            .unwrap_or(5000),
        minute_ms: get("--minute-ms")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000),
    }
}

fn machine_id(i: usize) -> String {
    format!("{:040x}", 0xbe00_0000usize + i)
}

/// A machine no start has offboarded yet: every real offboard in the run
/// gets its own, so none is answered as already offboarded.
fn fresh_machine() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    machine_id(NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
}

struct World {
    fake: FakeDefender,
    proxy: FlakyProxy,
    secret_id: String,
    tls: TlsWorld,
}

/// The same fakes behind TLS fronts, one per host the function talks to
/// (Secrets Manager, Entra ID login, the Defender API), as in Lambda.
struct TlsWorld {
    ca_file: String,
    secrets: TlsFront,
    login: TlsFront,
    api: TlsFront,
}

impl TlsWorld {
    /// The variables that point a start at the HTTPS fakes: ours reads
    /// `MDE_CA_FILE`; the peer's urllib `SSL_CERT_FILE` and boto3
    /// `AWS_CA_BUNDLE`.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", self.secrets.url()),
            ("MDE_API_URL", self.api.url()),
            ("MDE_LOGIN_URL", self.login.url()),
            ("MDE_CA_FILE", self.ca_file.clone()),
            ("SSL_CERT_FILE", self.ca_file.clone()),
            ("AWS_CA_BUNDLE", self.ca_file.clone()),
        ]
    }

    fn fronts(&self) -> [&TlsFront; 3] {
        [&self.secrets, &self.login, &self.api]
    }

    fn handshakes_since(&self, t: Instant) -> usize {
        self.fronts().iter().map(|f| f.handshakes_since(t)).sum()
    }

    fn handshake_times_since(&self, t: Instant) -> Vec<Duration> {
        self.fronts()
            .iter()
            .flat_map(|f| f.handshake_times_since(t))
            .collect()
    }
}

/// Secrets Manager in moto.
fn secrets_client() -> aws_sdk_secretsmanager::Client {
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&moto::moto().endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "bench"))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

async fn world(machines: usize) -> World {
    let moto = moto::moto();
    let secret_id = format!("mde-offboard/bench-{}", std::process::id());
    secrets_client()
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
    let proxy = FlakyProxy::start(addr_of(&moto.endpoint)).await;
    let ca = TestCa::new();
    let tls = TlsWorld {
        ca_file: ca.write_ca_file("mde-bench-ca"),
        secrets: TlsFront::start(addr_of(&proxy.url()), &ca).await,
        login: TlsFront::start(addr_of(&fake.url()), &ca).await,
        api: TlsFront::start(addr_of(&fake.url()), &ca).await,
    };
    World {
        fake,
        proxy,
        secret_id,
        tls,
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
    let sig = StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
        .unwrap()
        .sign(&id, now, body.as_bytes());
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

/// What one implementation is asked, and what it should answer.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Ours and the peer: the whole job.
    Function,
    /// The floor refuses everything; only what the runtime costs is measured.
    Floor,
}

/// Starts from cold, `starts` times: init (process start to the first GET
/// next), the first invocation (a real one-device offboard) and start to
/// first answer, with the medians. With `tls`, the fakes are reached over
/// HTTPS, and the handshakes that began after the invocation was handed
/// over (those the first answer waited for and nothing overlapped) are
/// counted too.
async fn cold_starts(
    exe: &str,
    w: &World,
    starts: usize,
    kind: Kind,
    tls: bool,
) -> BTreeMap<&'static str, f64> {
    let (mut inits, mut firsts, mut totals) = (vec![], vec![], vec![]);
    let (mut handshakes, mut handshake_times) = (vec![], vec![]);
    for _ in 0..starts {
        let runtime = FakeRuntime::start().await;
        let extra = if tls { w.tls.env() } else { Vec::new() };
        let t0 = Instant::now();
        let mut child = spawn_with(exe, &runtime, w, &extra);
        inits.push(wait_first_next(&runtime, t0).await);
        let first = match kind {
            Kind::Function => {
                invoke(
                    &runtime,
                    &offboard_body(&fresh_machine(), false),
                    "offboard_requested",
                )
                .await
            }
            Kind::Floor => invoke(&runtime, "{}", "unauthenticated").await,
        };
        totals.push(t0.elapsed());
        firsts.push(first);
        let _ = child.kill().await;
        handshakes.push(Duration::from_secs(w.tls.handshakes_since(t0) as u64));
        handshake_times.extend(w.tls.handshake_times_since(t0));
    }
    let mut out = BTreeMap::new();
    if tls {
        out.insert("tls_first_invocation_ms", ms(percentile(&mut firsts, 0.5)));
        out.insert(
            "tls_start_to_first_answer_ms",
            ms(percentile(&mut totals, 0.5)),
        );
        // Every start should open one connection per host and no more:
        // the first invocation reuses what the warm-up opened.
        out.insert(
            "tls_handshakes_per_start_max",
            percentile(&mut handshakes, 1.0).as_secs() as f64,
        );
        if !handshake_times.is_empty() {
            out.insert(
                "tls_handshake_ms",
                ms(percentile(&mut handshake_times, 0.5)),
            );
        }
    } else {
        out.insert("init_ms_median", ms(percentile(&mut inits, 0.5)));
        out.insert("first_invocation_ms", ms(percentile(&mut firsts, 0.5)));
        out.insert("start_to_first_answer_ms", ms(percentile(&mut totals, 0.5)));
    }
    out
}

/// Init alone, with every upstream a closed port: the warm-up fails at
/// once, so nothing else (moto above all, a Python server on the same two
/// cores) runs while the process starts. In Lambda the Runtime API and the
/// upstreams are on other machines; this is the figure to hold against the
/// floor. Median of `starts`.
async fn quiet_inits(exe: &str, w: &World, starts: usize) -> Duration {
    interleaved_quiet_inits(&[exe], w, starts).await[0]
}

/// As `quiet_inits` for several binaries taking turns start by start (as
/// `bench/init-starts` does), so a busy moment of the machine falls on all
/// of them alike: the floor and ours are compared this way.
async fn interleaved_quiet_inits(exes: &[&str], w: &World, starts: usize) -> Vec<Duration> {
    let closed = "http://127.0.0.1:1".to_string();
    let extra = [
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", closed.clone()),
        ("MDE_API_URL", closed.clone()),
        ("MDE_LOGIN_URL", closed),
    ];
    // Its environment only: the endpoint itself is `FirstNext`'s.
    let runtime = FakeRuntime::start().await;
    let mut inits = vec![Vec::with_capacity(starts); exes.len()];
    for _ in 0..starts {
        for (exe, times) in exes.iter().zip(inits.iter_mut()) {
            let endpoint = FirstNext::start();
            let mut env = extra.to_vec();
            env.push(("AWS_LAMBDA_RUNTIME_API", endpoint.addr.to_string()));
            let t0 = Instant::now();
            let mut child = spawn_with(exe, &runtime, w, &env);
            let at = tokio::task::spawn_blocking(move || endpoint.wait())
                .await
                .expect("the waiting thread");
            times.push(at.duration_since(t0));
            let _ = child.kill().await;
        }
    }
    inits.iter_mut().map(|t| percentile(t, 0.5)).collect()
}

/// A Runtime API endpoint that only notes when `GET next` arrives: a
/// blocking listener on its own OS thread, so the moment is read as soon as
/// the kernel has the bytes, not when the driver's async runtime gets round
/// to it (it shares the two cores with the start being measured, and with
/// whatever that start does just after its `GET next`).
struct FirstNext {
    addr: std::net::SocketAddr,
    at: std::sync::mpsc::Receiver<Instant>,
}

impl FirstNext {
    fn start() -> Self {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, at) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            while let Ok(n @ 1..) = conn.read(&mut chunk) {
                got.extend_from_slice(&chunk[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let now = Instant::now();
                    assert!(
                        got.starts_with(b"GET /2018-06-01/runtime/invocation/next"),
                        "the first request is GET next"
                    );
                    let _ = tx.send(now);
                    break;
                }
            }
            // Held open (no answer) until the start is killed.
            let _ = conn.read(&mut chunk);
        });
        Self { addr, at }
    }

    fn wait(self) -> Instant {
        self.at
            .recv_timeout(Duration::from_secs(30))
            .expect("GET next within 30 s")
    }
}

/// Everything for one implementation: cold starts over plain HTTP and over
/// HTTPS, then one warm instance.
/// `quiet_init`: measure init with nothing else running here (the peer);
/// the floor's and ours are measured together, taking turns.
async fn measure(
    exe: &str,
    w: &World,
    a: &Args,
    kind: Kind,
    quiet_init: bool,
) -> BTreeMap<&'static str, f64> {
    let mut out = cold_starts(exe, w, a.starts, kind, false).await;
    if quiet_init {
        out.insert(
            "init_quiet_ms_median",
            ms(quiet_inits(exe, w, a.starts).await),
        );
    }
    if kind == Kind::Function {
        out.extend(cold_starts(exe, w, a.starts, kind, true).await);
    }

    let runtime = FakeRuntime::start().await;
    let mut child = spawn(exe, &runtime, w);
    let pid = child.id().expect("pid");
    wait_first_next(&runtime, Instant::now()).await;
    let n = a.invocations;
    let refused_body = match kind {
        Kind::Function => "{\"ticket\": 1}",
        Kind::Floor => "{}",
    };
    let refused_answer = match kind {
        Kind::Function => "wrong_type",
        Kind::Floor => "unauthenticated",
    };
    if kind == Kind::Floor {
        let mut refused: Vec<_> = Vec::with_capacity(n);
        for _ in 0..n {
            refused.push(invoke(&runtime, refused_body, refused_answer).await);
        }
        out.insert("warm_refused_p50_ms", ms(percentile(&mut refused, 0.5)));
        out.insert("warm_refused_p99_ms", ms(percentile(&mut refused, 0.99)));
        out.insert("peak_rss_mib", peak_rss_kib(pid) as f64 / 1024.0);
        let _ = child.kill().await;
        return out;
    }
    // One to warm up (secret, token, connections), not counted.
    invoke(
        &runtime,
        &offboard_body(&fresh_machine(), false),
        "offboard_requested",
    )
    .await;

    // Warm: counters from here on.
    w.fake.reset_calls();
    let secrets_before = w.proxy.secret_fetches();
    let dry_machine = fresh_machine();
    let mut dry = Vec::with_capacity(n);
    for _ in 0..n {
        dry.push(
            invoke(
                &runtime,
                &offboard_body(&dry_machine, true),
                "would_offboard",
            )
            .await,
        );
    }
    let defender_dry = w.fake.count(Api::AnyDefender);
    let mut real = Vec::with_capacity(n);
    for _ in 0..n {
        real.push(
            invoke(
                &runtime,
                &offboard_body(&fresh_machine(), false),
                "offboard_requested",
            )
            .await,
        );
    }
    let defender_real = w.fake.count(Api::AnyDefender) - defender_dry;
    let mut refused = Vec::with_capacity(n);
    for _ in 0..n {
        refused.push(invoke(&runtime, refused_body, refused_answer).await);
    }
    // 25 devices in one request: the cost per device, beside the fake's own
    // round trips (two per device: the machine read and the offboard).
    let rounds = (n / 25).clamp(4, 40);
    let mut batch = Vec::with_capacity(rounds);
    let calls_before = w.fake.count(Api::AnyDefender);
    for _ in 0..rounds {
        let devices: Vec<String> = (0..25).map(|_| fresh_machine()).collect();
        let body =
            json!({"ticket": "BENCH-25", "comment": "benchmark", "devices": devices}).to_string();
        batch.push(invoke(&runtime, &body, "offboard_requested").await);
    }
    let batch_calls = w.fake.count(Api::AnyDefender) - calls_before;
    out.insert("warm_refused_p50_ms", ms(percentile(&mut refused, 0.5)));
    out.insert("warm_refused_p99_ms", ms(percentile(&mut refused, 0.99)));
    out.insert("warm_dry_run_p50_ms", ms(percentile(&mut dry, 0.5)));
    out.insert("warm_dry_run_p99_ms", ms(percentile(&mut dry, 0.99)));
    out.insert("warm_offboard_p50_ms", ms(percentile(&mut real, 0.5)));
    out.insert("warm_offboard_p99_ms", ms(percentile(&mut real, 0.99)));
    out.insert(
        "warm_25_devices_per_device_ms",
        ms(percentile(&mut batch, 0.5)) / 25.0,
    );
    out.insert(
        "defender_calls_per_device_25",
        batch_calls as f64 / (25 * rounds) as f64,
    );
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
async fn measure_ledger(exe: &str, w: &World, a: &Args) -> Vec<(String, f64)> {
    let table = mde_testkit::ledger_table::ledger_table_from_template().await;
    let proxy = mde_testkit::serial::SerialProxy::start(addr_of(&moto::moto().endpoint)).await;
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
        // One to warm up (secret, token, connections), not counted.
        invoke(
            &runtime,
            &offboard_body(&fresh_machine(), false),
            "offboard_requested",
        )
        .await;
        let before = proxy.calls();
        let mut real = Vec::with_capacity(a.invocations);
        for _ in 0..a.invocations {
            real.push(
                invoke(
                    &runtime,
                    &offboard_body(&fresh_machine(), false),
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

/// The fake Defender's own round trip, from a client like ours (one kept
/// connection): what a warm device cannot go below.
async fn fake_round_trip(w: &World, n: usize) -> Duration {
    let http = reqwest::Client::new();
    let url = format!("{}/api/machines/{}", w.fake.url(), machine_id(0));
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(&url).send().await.expect("the fake answers");
        let _ = r.bytes().await;
        v.push(t.elapsed());
    }
    percentile(&mut v, 0.5)
}

/// One row of the table: the key in each implementation's figures, its
/// label, and whether a ratio means anything for it.
const ROWS: [(&str, &str, bool); 25] = [
    (
        "init_quiet_ms_median",
        "init: start to first GET next, nothing else running, floor and ours taking turns, median (ms)",
        true,
    ),
    (
        "init_ms_median",
        "init: start to first GET next, live fakes on the same cores, median (ms)",
        true,
    ),
    ("first_invocation_ms", "first invocation, median (ms)", true),
    (
        "start_to_first_answer_ms",
        "start to first answer, median (ms)",
        true,
    ),
    (
        "tls_first_invocation_ms",
        "first invocation, HTTPS fakes, median (ms)",
        true,
    ),
    (
        "tls_start_to_first_answer_ms",
        "start to first answer, HTTPS fakes, median (ms)",
        true,
    ),
    (
        "tls_extra_ms",
        "what HTTPS adds to start to first answer (ms)",
        true,
    ),
    (
        "tls_handshake_ms",
        "one TLS handshake at the fake's end, median (ms)",
        false,
    ),
    (
        "tls_extra_in_handshakes",
        "what HTTPS adds, in handshakes",
        false,
    ),
    (
        "tls_handshakes_per_start_max",
        "TLS handshakes per start (3 hosts), max",
        false,
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
    (
        "warm_25_devices_per_device_ms",
        "warm offboard, 25 devices, per device, p50 (ms)",
        true,
    ),
    (
        "fake_round_trip_ms",
        "the fake Defender's own round trip, p50 (ms)",
        false,
    ),
    ("peak_rss_mib", "peak RSS after the run (MiB)", true),
    ("binary_mib", "binary (MiB)", true),
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
        "defender_calls_per_device_25",
        "Defender calls per device, 25 devices",
        false,
    ),
];

fn cell(m: &BTreeMap<&str, f64>, key: &str) -> String {
    m.get(key)
        .map(|v| format!("{v:.3}"))
        .unwrap_or_else(|| "".into())
}

fn ratio(num: &BTreeMap<&str, f64>, den: &BTreeMap<&str, f64>, key: &str) -> String {
    match (num.get(key), den.get(key)) {
        (Some(n), Some(d)) if *d > 0.0 => format!("{:.1}x", n / d),
        _ => "".into(),
    }
}

fn binary_mib(path: &str) -> Option<f64> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
}

#[tokio::main]
async fn main() {
    let a = args();
    if a.bulk {
        let figures = bulk::run(bulk::BulkArgs {
            exe: a.rust.clone(),
            devices: a.devices,
            minute: Duration::from_millis(a.minute_ms),
        })
        .await;
        println!(
            "| bulk figure ({} devices, two workers and the HTTP function) | value |",
            a.devices
        );
        println!("|---|---:|");
        for (label, v) in &figures {
            println!("| {label} | {v:.3} |");
        }
        if let Some(path) = a.json {
            let m: BTreeMap<&str, f64> = figures.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&json!({"bulk": m})).unwrap(),
            )
            .expect("write the results");
        }
        return;
    }
    let machines = 5 * a.invocations + 2000 + 4 * a.starts;
    let w = Arc::new(world(machines).await);
    if a.ledger_only {
        let ledger = measure_ledger(&a.rust, &w, &a).await;
        println!("| ledger figure ({}, same run) | value |", a.rust);
        println!("|---|---:|");
        for (label, v) in &ledger {
            println!("| {label} | {v:.3} |");
        }
        return;
    }
    eprintln!("init of the floor and {}, taking turns ...", a.rust);
    let quiet = interleaved_quiet_inits(&[&a.floor, &a.rust], &w, a.init_starts).await;
    eprintln!("measuring the floor {} ...", a.floor);
    let mut floor = measure(&a.floor, &w, &a, Kind::Floor, false).await;
    floor.insert("init_quiet_ms_median", ms(quiet[0]));
    eprintln!("measuring {} ...", a.rust);
    let mut rust = measure(&a.rust, &w, &a, Kind::Function, false).await;
    rust.insert("init_quiet_ms_median", ms(quiet[1]));
    rust.insert("fake_round_trip_ms", ms(fake_round_trip(&w, 1000).await));
    let mut peer = if a.no_peer {
        BTreeMap::new()
    } else {
        eprintln!("measuring {} ...", a.peer);
        measure(&a.peer, &w, &a, Kind::Function, true).await
    };
    for m in [&mut rust, &mut peer] {
        if let (Some(t), Some(p)) = (
            m.get("tls_start_to_first_answer_ms"),
            m.get("start_to_first_answer_ms"),
        ) {
            let extra = t - p;
            m.insert("tls_extra_ms", extra);
            if let Some(h) = m.get("tls_handshake_ms").copied().filter(|h| *h > 0.0) {
                m.insert("tls_extra_in_handshakes", extra / h);
            }
        }
    }
    for (m, path) in [(&mut floor, &a.floor), (&mut rust, &a.rust)] {
        if let Some(size) = binary_mib(path) {
            m.insert("binary_mib", size);
        }
    }
    println!(
        "| figure | floor (bare lambda_http) | mde-offboard (Rust) | Rust / floor | Python peer | peer / Rust |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (key, label, ratios) in ROWS {
        let (rf, pr) = if ratios {
            (ratio(&rust, &floor, key), ratio(&peer, &rust, key))
        } else {
            ("".into(), "".into())
        };
        println!(
            "| {label} | {} | {} | {rf} | {} | {pr} |",
            cell(&floor, key),
            cell(&rust, key),
            cell(&peer, key)
        );
    }
    let ledger = if a.no_peer {
        Vec::new()
    } else {
        eprintln!("measuring {} with and without the ledger ...", a.rust);
        let ledger = measure_ledger(&a.rust, &w, &a).await;
        println!();
        println!("| ledger figure (Rust, same run) | value |");
        println!("|---|---:|");
        for (label, v) in &ledger {
            println!("| {label} | {v:.3} |");
        }
        ledger
    };
    if let Some(path) = a.json {
        let ledger: BTreeMap<&str, f64> = ledger.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let v = json!({"floor": floor, "rust": rust, "python_peer": peer, "ledger": ledger});
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap())
            .expect("write the results");
    }
}
