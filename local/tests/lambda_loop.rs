//! A Rust Lambda developer's loop, as `cargo lambda watch` and `invoke` run
//! it, with the built binaries: `mde-local tenant` serves the simulated
//! tenant and Secrets Manager and prints the environment; the real
//! `bootstrap` runs with that environment against a Runtime API (as
//! `cargo lambda watch` provides one); `mde-local sign` makes the event
//! that `cargo lambda invoke --data-file` sends.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mde_testkit::{FakeRuntime, Outcome};
use serde_json::Value;
use tokio::io::AsyncReadExt;

fn root() -> String {
    format!("{}/..", env!("CARGO_MANIFEST_DIR"))
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Lambda binary of the root package, built as `cargo lambda watch`
/// builds it. Another package's binary has no `CARGO_BIN_EXE_` here, so it
/// is built by cargo itself (a no-op when up to date), next to this test.
fn bootstrap() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "mde-offboard",
            "--bin",
            "bootstrap",
        ])
        .current_dir(root())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --bin bootstrap");
    // target/debug/deps/this-test → target/debug/bootstrap
    let exe = std::env::current_exe().expect("test path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug")
        .join("bootstrap")
}

/// Starts `mde-local tenant` and reads the `export K=V` lines it prints.
fn tenant(extra: &[&str]) -> (Killed, Vec<(String, String)>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mde-local"))
        .args(["tenant", "--port", "0"])
        .args(extra)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mde-local tenant");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut env = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                env.push((k.to_string(), v.to_string()));
            }
        }
        let _ = tx.send(env);
    });
    let child = Killed(child);
    let env = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("mde-local tenant printed its environment");
    (child, env)
}

/// `mde-local sign FILE`: the signed event it writes.
fn signed(file: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mde-local"))
        .args(["sign", file])
        .current_dir(root())
        .output()
        .expect("run mde-local sign");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the signed event is JSON")
}

struct Lambda {
    child: tokio::process::Child,
    stdout: tokio::task::JoinHandle<String>,
}

/// The built bootstrap under a Runtime API, with only the environment Lambda
/// gives a function plus what `mde-local tenant` printed.
fn start_function(runtime: &FakeRuntime, env: &[(String, String)]) -> Lambda {
    let mut child = tokio::process::Command::new(bootstrap())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(runtime.lambda_env())
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start bootstrap");
    let mut out = child.stdout.take().unwrap();
    let stdout = tokio::spawn(async move {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s).await;
        s
    });
    Lambda { child, stdout }
}

impl Lambda {
    async fn logs(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.stdout.await.unwrap()
    }
}

async fn invoke(runtime: &FakeRuntime, event: Value) -> (u16, Value) {
    match runtime.invoke(event, Duration::from_secs(30)).await {
        Some(Outcome::Response(v)) => (
            v["statusCode"].as_u64().unwrap() as u16,
            serde_json::from_str(v["body"].as_str().unwrap()).unwrap(),
        ),
        other => panic!("no response: {other:?}"),
    }
}

fn statuses(v: &Value) -> Vec<&str> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {v}"))
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect()
}

fn permission_warnings(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains("\"missing_permissions\""))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cargo_lambda_watch_and_invoke_work_against_the_local_tenant() {
    let (_tenant, env) = tenant(&[]);
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for name in [
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        "SECRET_ID",
        "MDE_API_URL",
        "MDE_LOGIN_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let runtime = FakeRuntime::start().await;
    let function = start_function(&runtime, &env);

    let (status, body) = invoke(&runtime, signed("events/generic.json")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        statuses(&body),
        [
            "offboard_requested",
            "ambiguous",
            "unsupported_os",
            "protected",
            "not_found"
        ]
    );
    // Signed again, it is a new delivery (a new id), not a replay.
    let (_, again) = invoke(&runtime, signed("events/generic.json")).await;
    assert_eq!(statuses(&again)[0], "already_pending", "{again}");
    for preset in ["jira", "pagerduty", "servicenow", "defender-incident"] {
        let (status, v) = invoke(&runtime, signed(&format!("events/{preset}.json"))).await;
        assert_eq!(status, 200, "{preset}: {v}");
        assert!(!statuses(&v).is_empty(), "{preset}: {v}");
    }
    let (status, v) = invoke(&runtime, signed("events/generic-dry-run.json")).await;
    assert_eq!((status, statuses(&v)), (200, vec!["would_offboard"; 2]));
    // A bare body is wrapped in an HTTP API event on its source's route.
    let (status, v) = invoke(&runtime, signed("events/pagerduty.body.json")).await;
    assert_eq!(status, 200, "{v}");
    assert!(!statuses(&v).is_empty(), "{v}");

    let logs = function.logs().await;
    assert!(permission_warnings(&logs).is_empty(), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_offboard_consent_is_one_clear_line_at_start() {
    let (_tenant, env) = tenant(&["--roles", "Machine.ReadWrite.All"]);
    let runtime = FakeRuntime::start().await;
    let function = start_function(&runtime, &env);
    // Offboards are refused once, naming the permission, before any
    // device is tried; a dry run still answers.
    let (status, body) = invoke(&runtime, signed("events/generic.json")).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "missing_permission", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Machine.Offboard"),
        "{body}"
    );
    let (status, dry) = invoke(&runtime, signed("events/generic-dry-run.json")).await;
    assert_eq!(
        (status, statuses(&dry)),
        (200, vec!["would_offboard"; 2]),
        "{dry}"
    );
    let logs = function.logs().await;
    let warnings = permission_warnings(&logs);
    assert_eq!(warnings.len(), 1, "{logs}");
    let line: Value = serde_json::from_str(warnings[0]).unwrap();
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["missing_permissions"], "Machine.Offboard", "{line}");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("Machine.Offboard"),
        "{line}"
    );
}
