//! The built `bootstrap`, run as Lambda runs it: against a Runtime API
//! endpoint, with Secrets Manager (moto) reached through the standard
//! `AWS_ENDPOINT_URL_SECRETS_MANAGER` override, and the fake Defender.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use mde_testkit::{
    Api, FakeDefender, FakeRuntime, GENERIC_WEBHOOK_SECRET, Outcome, demo_machines, moto,
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

fn bootstrap(runtime: &FakeRuntime) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bootstrap"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(runtime.lambda_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// A running bootstrap whose output is drained as it comes: trace logging
/// fills a pipe's 64 KiB long before the test reads it.
struct Running {
    child: Child,
    stdout: tokio::task::JoinHandle<String>,
    stderr: tokio::task::JoinHandle<String>,
}

fn drain(
    mut r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s).await;
        s
    })
}

fn run(mut cmd: Command) -> Running {
    let mut child = cmd.spawn().expect("start bootstrap");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    Running {
        child,
        stdout,
        stderr,
    }
}

async fn output_of(mut r: Running) -> (String, String) {
    let _ = r.child.start_kill();
    let _ = r.child.wait().await;
    (r.stdout.await.unwrap(), r.stderr.await.unwrap())
}

fn response_of(outcome: Option<Outcome>) -> (u16, Value, Value) {
    lambda_response(outcome)
}

fn signed_event(path: &str, body: &str) -> (Value, String) {
    signed_lambda_event(path, body)
}

#[tokio::test]
async fn the_binary_serves_invocations_and_logs_nothing_secret() {
    let runtime = FakeRuntime::start().await;
    let fake = FakeDefender::start(demo_machines()).await;
    let secret = put_secret(&mde_testkit::secret_json()).await;
    let mut cmd = bootstrap(&runtime);
    cmd.env("SECRET_ID", &secret)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto::moto().endpoint)
        .env("MDE_API_URL", fake.url())
        .env("MDE_LOGIN_URL", fake.url())
        .env("PROTECTED_TAGS", "VIP")
        .env("RUST_LOG", "trace");
    let child = run(cmd);

    let body = json!({"ticket": "INC0012345", "comment": "Laptop retired", "devices": [ids::WIN11, "kiosk-01.contoso.com", ids::PROTECTED]}).to_string();
    let (event, sig) = signed_event("/v1/offboard", &body);
    let first = runtime.invoke(event, Duration::from_secs(20)).await;
    if first.is_none() {
        let (o, e) = output_of(child).await;
        panic!(
            "no answer after {} next calls; the binary said:\n{o}\n{e}",
            runtime.next_calls()
        );
    }
    let (status, answer, headers) = response_of(first);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers["content-type"], "application/json");
    let statuses: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["offboard_requested", "ambiguous", "protected"]);

    // Warm: the same instance answers again without a new secret or token.
    let (event, _) = signed_event("/v1/offboard", &body);
    let (status, again, _) = response_of(runtime.invoke(event, Duration::from_secs(20)).await);
    assert_eq!(status, 200);
    assert_eq!(again["results"][0]["status"], "already_pending");
    assert_eq!(fake.count(Api::Login), 1);

    // Bad input does not stop it serving.
    let (event, _) = signed_event("/v1/offboard", "{not json");
    let (status, err, _) = response_of(runtime.invoke(event, Duration::from_secs(20)).await);
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );

    let token = fake
        .calls()
        .into_iter()
        .find_map(|c| c.authorization)
        .expect("a Defender call with a token");
    let token = token.trim_start_matches("Bearer ").to_string();
    let (stdout, stderr) = output_of(child).await;
    let logs = format!("{stdout}{stderr}");
    assert!(logs.lines().count() > 20, "trace logging was on:\n{logs}");
    for (what, secret) in [
        ("client secret", mde_testkit::defender::CLIENT_SECRET),
        ("token", token.as_str()),
        ("webhook secret", GENERIC_WEBHOOK_SECRET),
        (
            "webhook secret key",
            GENERIC_WEBHOOK_SECRET.trim_start_matches("whsec_"),
        ),
        ("another source's secret", "pd-old-secret-never-log"),
        ("signature", sig.trim_start_matches("v1,")),
    ] {
        let leak = logs.lines().find(|l| l.contains(secret)).unwrap_or("");
        assert!(
            !logs.contains(secret),
            "the {what} appears in the logs: {leak}"
        );
    }
    // One audit line per device, with its keys.
    let audits: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["event"] == "device_outcome")
        .collect();
    assert_eq!(audits.len(), 6, "{stdout}");
    let first = &audits[0];
    for key in [
        "timestamp",
        "level",
        "service",
        "function_request_id",
        "cold_start",
        "ticket",
        "device",
        "machine_id",
        "status",
        "action_id",
        "source_ip",
        "webhook_id",
    ] {
        assert!(first.get(key).is_some(), "audit line lacks {key}: {first}");
    }
    assert_eq!(first["cold_start"], true);
    assert_eq!(audits[3]["cold_start"], false);
    assert_eq!(first["ticket"], "INC0012345");
    assert_eq!(first["status"], "offboard_requested");
    assert_eq!(first["source_ip"], "203.0.113.10");

    // One EMF line per invocation; the first carries init's secret and token
    // fetches, the warm one none.
    let emf: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l.get("_aws").is_some())
        .collect();
    assert_eq!(emf.len(), 2, "the bad request records nothing: {stdout}");
    let cold = &emf[0];
    assert_eq!(
        cold["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "MdeOffboard"
    );
    assert_eq!(cold["Source"], "generic");
    assert_eq!(cold["SecretFetches"], 1.0);
    assert_eq!(cold["TokenFetches"], 1.0);
    assert_eq!(cold["offboard_requested"], 1.0);
    assert_eq!(cold["ambiguous"], 1.0);
    assert_eq!(cold["protected"], 1.0);
    assert!(
        cold["DefenderLatency"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
    let warm = &emf[1];
    assert_eq!(warm["already_pending"], 1.0);
    assert!(
        warm.get("SecretFetches").is_none() && warm.get("TokenFetches").is_none(),
        "{warm}"
    );
    println!("EMF: {cold}\nAUDIT: {first}");
}

#[tokio::test]
async fn bad_configuration_ends_init_with_one_line_naming_the_variable() {
    for (var, value) in [
        ("SECRET_ID", ""),
        ("MDE_CLOUD", "moon"),
        ("MAX_DEVICES", "lots"),
    ] {
        let runtime = FakeRuntime::start().await;
        let mut cmd = bootstrap(&runtime);
        cmd.env("SECRET_ID", "mde").env(var, value);
        let child = cmd.spawn().unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].contains(var) && !lines[0].contains("panicked"),
            "{stderr}"
        );
        let (kind, body) = runtime
            .init_error()
            .expect("init error posted to the Runtime API");
        assert_eq!(kind.as_deref(), Some("Runtime.ConfigError"));
        assert!(body["errorMessage"].as_str().unwrap().contains(var));
        assert_eq!(runtime.next_calls(), 0);
    }
}

/// The `entra-jwt` scheme in the built binary: a managed identity's token
/// is admitted through the generic route; a refused one is 401 with the
/// fixed sentence while the log names the reason; neither token is logged.
#[tokio::test]
async fn the_binary_admits_an_entra_token_and_logs_why_it_refuses_one() {
    use mde_testkit::defender::TENANT_ID;
    use mde_testkit::entra::{AUDIENCE_URI, CALLER_OID, TestKey, v1_claims};

    let runtime = FakeRuntime::start().await;
    let fake = FakeDefender::start(demo_machines()).await;
    let secret = put_secret(&mde_testkit::secret_json()).await;
    let sources = json!({"sources": {"generic": {"auth": {"scheme": "entra-jwt",
        "audiences": [AUDIENCE_URI], "principals": [CALLER_OID]}}}});
    let mut cmd = bootstrap(&runtime);
    cmd.env("SECRET_ID", &secret)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto::moto().endpoint)
        .env("MDE_API_URL", fake.url())
        .env("MDE_LOGIN_URL", fake.url())
        .env("SOURCES", sources.to_string())
        .env("RUST_LOG", "trace");
    let child = run(cmd);

    let key = TestKey::shared();
    let good = key.token(&v1_claims(TENANT_ID, AUDIENCE_URI));
    let body =
        json!({"ticket": "INC-77", "comment": "Retired by the playbook", "devices": [ids::WIN11]})
            .to_string();
    let event = |token: &str| {
        mde_testkit::events::http_api_v2(
            "POST",
            "/v1/offboard",
            &[("authorization", &format!("Bearer {token}"))],
            &body,
        )
    };
    let first = runtime.invoke(event(&good), Duration::from_secs(20)).await;
    if first.is_none() {
        let (o, e) = output_of(child).await;
        panic!("no answer; the binary said:\n{o}\n{e}");
    }
    let (status, answer, _) = response_of(first);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["status"], "offboard_requested");
    assert_eq!(fake.count(Api::Keys), 1);

    let mut claims = v1_claims(TENANT_ID, AUDIENCE_URI);
    claims["aud"] = json!("api://another-app");
    let refused = key.token(&claims);
    let (status, err, _) = response_of(
        runtime
            .invoke(event(&refused), Duration::from_secs(20))
            .await,
    );
    assert_eq!(status, 401);
    assert_eq!(
        err["error"]["message"],
        "the request could not be authenticated; the function's log says why."
    );
    assert_eq!(fake.count(Api::Keys), 1, "the cached keys served");

    let (stdout, stderr) = output_of(child).await;
    let logs = format!("{stdout}{stderr}");
    let refusal = logs
        .lines()
        .find(|l| l.contains("request refused") && l.contains("401"))
        .unwrap_or_else(|| panic!("no refusal line:\n{logs}"));
    assert!(
        refusal.contains("audience") && refusal.contains("api://another-app"),
        "the log says why: {refusal}"
    );
    for (what, token) in [("accepted token", &good), ("refused token", &refused)] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "the {what} appears in the logs");
    }
}
