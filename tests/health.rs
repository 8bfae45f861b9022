//! The health check (contract, "Health check"), through the built
//! `bootstrap` under a Runtime API: a Scheduled Event and `GET /v1/health`
//! run the secret, token, permissions and API checks afresh, answer which
//! failed and why, and write `HealthCheckFailed` per check.
#![allow(unused_imports)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use mde_testkit::{
    Api, FakeDefender, FakeRuntime, Fault, GENERIC_WEBHOOK_SECRET, Outcome, demo_machines, events,
    moto,
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

fn tick() -> Value {
    json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-12-07T09:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/mde-offboard-health"],
        "detail": {}
    })
}

struct Running {
    runtime: FakeRuntime,
    child: Child,
    stdout: tokio::task::JoinHandle<String>,
}

async fn start(fake: &FakeDefender, secret_text: &str, extra: &[(&str, &str)]) -> Running {
    let runtime = FakeRuntime::start().await;
    let secret = put_secret(secret_text).await;
    let mut c = Command::new(env!("CARGO_BIN_EXE_bootstrap"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(runtime.lambda_env())
        .env("SECRET_ID", &secret)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto::moto().endpoint)
        .env("MDE_API_URL", fake.url())
        .env("MDE_LOGIN_URL", fake.url())
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = c.spawn().expect("start bootstrap");
    let mut out = child.stdout.take().unwrap();
    let stdout = tokio::spawn(async move {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s).await;
        s
    });
    Running {
        runtime,
        child,
        stdout,
    }
}

impl Running {
    /// The answer to a Scheduled Event: always the JSON itself.
    async fn check(&self) -> Value {
        match self.runtime.invoke(tick(), Duration::from_secs(20)).await {
            Some(Outcome::Response(v)) => v,
            other => panic!("a Scheduled Event is answered, never failed: {other:?}"),
        }
    }

    /// The EMF lines the function wrote, once it is stopped.
    async fn emf(mut self) -> Vec<Value> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let stdout = self.stdout.await.unwrap();
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("_aws").is_some())
            .collect()
    }
}

fn check<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {answer}"))
}

fn oks(answer: &Value) -> Vec<bool> {
    answer["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ok"].as_bool().unwrap())
        .collect()
}

fn secret_with(f: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    f(&mut v);
    v.to_string()
}

#[tokio::test]
async fn a_healthy_tenant_passes_every_check_afresh_each_time() {
    let fake = FakeDefender::start(demo_machines()).await;
    let f = start(&fake, &mde_testkit::secret_json(), &[]).await;
    let a = f.check().await;
    assert_eq!(a["status"], "ok", "{a}");
    assert_eq!(a["version"], env!("CARGO_PKG_VERSION"));
    let names: Vec<_> = a["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, ["secret", "token", "permissions", "defender_api"]);
    assert_eq!(oks(&a), [true; 4]);
    let lists: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.api == Api::ListMachines)
        .collect();
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].query.as_deref(), Some("$top=1"));
    assert_eq!(
        fake.count(Api::Offboard),
        0,
        "a health check offboards nothing"
    );

    // Afresh: each later check asks Entra ID again, not the warm cache.
    // The warm-up's own login may still land in between (at most one), so
    // two more checks must add at least two logins: with a cached token
    // they would add at most that one.
    let logins = fake.count(Api::Login);
    assert_eq!(f.check().await["status"], "ok");
    assert_eq!(f.check().await["status"], "ok");
    assert!(fake.count(Api::Login) >= logins + 2, "each check logs in");

    let emf = f.emf().await;
    let checks: Vec<_> = emf.iter().filter(|v| v.get("Check").is_some()).collect();
    assert_eq!(checks.len(), 12, "one line per check per run: {emf:?}");
    assert!(checks.iter().all(|v| v["HealthCheckFailed"] == 0));
    assert_eq!(
        checks[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["Check"], []])
    );
}

#[tokio::test]
async fn a_wrong_client_secret_fails_the_token_check_and_says_why() {
    let fake = FakeDefender::start(demo_machines()).await;
    let secret = secret_with(|v| v["client_secret"] = json!("an-expired-or-wrong-secret"));
    let f = start(&fake, &secret, &[]).await;
    let a = f.check().await;
    assert_eq!(a["status"], "failing");
    assert_eq!(oks(&a), [true, false, false, false]);
    let token = check(&a, "token")["detail"].as_str().unwrap();
    assert!(token.contains("7000215"), "names Entra's error: {token}");
    assert!(!token.contains("an-expired-or-wrong-secret"));
    assert_eq!(check(&a, "defender_api")["detail"], "not run");
    assert_eq!(fake.count(Api::ListMachines), 0);
    let emf = f.emf().await;
    let failed: Vec<_> = emf
        .iter()
        .filter(|v| v["HealthCheckFailed"] == 1)
        .map(|v| v["Check"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed, ["token", "permissions", "defender_api"]);
}

#[tokio::test]
async fn a_missing_consent_fails_the_permissions_check_naming_the_permission() {
    let fake = FakeDefender::start(demo_machines()).await;
    fake.set_token_roles(&["Machine.Read.All"]);
    let f = start(&fake, &mde_testkit::secret_json(), &[]).await;
    let a = f.check().await;
    assert_eq!(a["status"], "failing");
    assert_eq!(oks(&a), [true, true, false, true]);
    let d = check(&a, "permissions")["detail"].as_str().unwrap();
    assert!(d.contains("Machine.Offboard"), "{d}");

    // A dry-run deployment rehearsing with read permission only is healthy.
    let f = start(&fake, &mde_testkit::secret_json(), &[("DRY_RUN", "true")]).await;
    assert_eq!(f.check().await["status"], "ok");

    // With no permission at all, Defender's 403 fails the API check too.
    fake.set_token_roles(&[]);
    let f = start(&fake, &mde_testkit::secret_json(), &[]).await;
    let a = f.check().await;
    assert_eq!(oks(&a), [true, true, false, false]);
    let d = check(&a, "defender_api")["detail"].as_str().unwrap();
    assert!(d.contains("403"), "{d}");
}

#[tokio::test]
async fn a_malformed_secret_fails_the_secret_check_and_runs_nothing_else() {
    let fake = FakeDefender::start(demo_machines()).await;
    let secret = secret_with(|v| {
        v.as_object_mut().unwrap().remove("client_id");
    });
    let f = start(&fake, &secret, &[]).await;
    let a = f.check().await;
    assert_eq!(oks(&a), [false, false, false, false]);
    let d = check(&a, "secret")["detail"].as_str().unwrap();
    assert!(d.contains("client_id"), "names the key: {d}");
    assert_eq!(check(&a, "token")["detail"], "not run");
    assert_eq!(fake.calls().len(), 0);
}

#[tokio::test]
async fn an_api_that_stopped_answering_as_today_fails_naming_status_and_code() {
    let fake = FakeDefender::start(demo_machines()).await;
    let f = start(&fake, &mde_testkit::secret_json(), &[]).await;
    fake.fault(
        Api::ListMachines,
        Fault::Status {
            status: 410,
            code: "ApiVersionRetired".into(),
        },
    );
    let a = f.check().await;
    assert_eq!(oks(&a), [true, true, true, false]);
    let d = check(&a, "defender_api")["detail"].as_str().unwrap();
    assert!(d.contains("410") && d.contains("ApiVersionRetired"), "{d}");
}

/// `GET /v1/health`: the generic source's auth (or the reader's); an
/// unauthenticated caller learns nothing.
#[tokio::test]
async fn get_health_is_authenticated_and_answers_the_same_checks() {
    let fake = FakeDefender::start(demo_machines()).await;
    let f = start(&fake, &mde_testkit::secret_json(), &[]).await;
    let id = "msg_health_1";
    let ts = now();
    let sig =
        mde_offboard::support::webhook_sig::StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
            .unwrap()
            .sign(id, ts, b"");
    let ts = ts.to_string();
    let headers = [
        ("webhook-id", id),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    let event = events::http_api_v2("GET", "/v1/health", &headers, "");
    let (status, a, _) = lambda_response(f.runtime.invoke(event, Duration::from_secs(20)).await);
    assert_eq!(status, 200);
    assert_eq!(a["status"], "ok", "{a}");
    assert_eq!(a["checks"].as_array().unwrap().len(), 4);

    let event = events::http_api_v2("GET", "/v1/health", &[], "");
    let (status, a, _) = lambda_response(f.runtime.invoke(event, Duration::from_secs(20)).await);
    assert_eq!(
        (status, a["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(a.get("checks").is_none());

    let event = events::http_api_v2("POST", "/v1/health", &headers, "");
    let (status, _, _) = lambda_response(f.runtime.invoke(event, Duration::from_secs(20)).await);
    assert_eq!(status, 405);
}

#[tokio::test]
async fn the_worker_does_not_run_the_health_check() {
    let fake = FakeDefender::start(demo_machines()).await;
    let f = start(
        &fake,
        &mde_testkit::secret_json(),
        &[("MDE_MODE", "worker")],
    )
    .await;
    match f.runtime.invoke(tick(), Duration::from_secs(20)).await {
        Some(Outcome::Error(v)) => assert_eq!(v["errorType"], "MdeOffboard.Refused"),
        other => panic!("refused: {other:?}"),
    }
    assert_eq!(fake.calls().len(), 0);
}

/// Real requests that fail for the health check's reasons page too: the
/// metric `CredentialFailure` beside the 500, `Unavailable` beside a 503.
#[tokio::test]
async fn real_requests_refused_for_credentials_count_credential_failure() {
    let fake = FakeDefender::start(demo_machines()).await;
    let secret = secret_with(|v| v["client_secret"] = json!("an-expired-or-wrong-secret"));
    let f = start(&fake, &secret, &[]).await;
    let body = r#"{"ticket": "INC-1", "comment": "leaver", "devices": ["LAPTOP-17.contoso.com"]}"#;
    let (event, _) = signed_lambda_event("/v1/offboard", body);
    let (status, a, _) = lambda_response(f.runtime.invoke(event, Duration::from_secs(20)).await);
    assert_eq!(
        (status, a["error"]["code"].as_str()),
        (500, Some("bad_credentials"))
    );

    fake.set_token_roles(&["Machine.Read.All"]);
    let f2 = start(&fake, &mde_testkit::secret_json(), &[]).await;
    let (event, _) = signed_lambda_event("/v1/offboard", body);
    let (status, a, _) = lambda_response(f2.runtime.invoke(event, Duration::from_secs(20)).await);
    assert_eq!(
        (status, a["error"]["code"].as_str()),
        (500, Some("missing_permission"))
    );

    for f in [f, f2] {
        let emf = f.emf().await;
        let counted: f64 = emf
            .iter()
            .filter_map(|v| v["CredentialFailure"].as_f64())
            .sum();
        assert_eq!(counted, 1.0, "{emf:?}");
    }
}

#[tokio::test]
async fn a_secrets_manager_that_cannot_be_reached_is_503_and_counts_unavailable() {
    let fake = FakeDefender::start(demo_machines()).await;
    // A port nothing listens on: Secrets Manager unreachable, not refusing.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let f = start(
        &fake,
        &mde_testkit::secret_json(),
        &[("AWS_ENDPOINT_URL_SECRETS_MANAGER", &endpoint)],
    )
    .await;
    let body = r#"{"ticket": "INC-1", "comment": "leaver", "devices": ["LAPTOP-17.contoso.com"]}"#;
    let (event, _) = signed_lambda_event("/v1/offboard", body);
    let (status, a, headers) =
        lambda_response(f.runtime.invoke(event, Duration::from_secs(30)).await);
    assert_eq!(
        (status, a["error"]["code"].as_str()),
        (503, Some("secret_unavailable"))
    );
    assert!(headers.get("retry-after").is_some(), "{headers}");
    let emf = f.emf().await;
    let unavailable: f64 = emf.iter().filter_map(|v| v["Unavailable"].as_f64()).sum();
    let credential: f64 = emf
        .iter()
        .filter_map(|v| v["CredentialFailure"].as_f64())
        .sum();
    assert_eq!((unavailable, credential), (1.0, 0.0), "{emf:?}");
}
