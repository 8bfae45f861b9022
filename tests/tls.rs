//! The built `bootstrap` over HTTPS: Secrets Manager (moto), the login
//! endpoint and the Defender API each behind a TLS front on loopback whose
//! certificate a test CA signed. The function trusts compiled-in roots and
//! `MDE_CA_FILE`'s certificates, nothing from the system store.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use mde_testkit::tls::{TestCa, TlsFront, addr_of};
use mde_testkit::{Api, FakeDefender, FakeRuntime, Outcome, moto};
use serde_json::{Value, json};
use tokio::process::Command;

struct Https {
    ca: TestCa,
    fake: FakeDefender,
    secrets: TlsFront,
    login: TlsFront,
    api: TlsFront,
    secret_id: String,
}

async fn https() -> Https {
    let ca = TestCa::new();
    let fake = FakeDefender::start(mde_testkit::demo_machines()).await;
    let secret_id = put_secret(&mde_testkit::secret_json()).await;
    let secrets = TlsFront::start(addr_of(&moto::moto().endpoint), &ca).await;
    let login = TlsFront::start(addr_of(&fake.url()), &ca).await;
    let api = TlsFront::start(addr_of(&fake.url()), &ca).await;
    Https {
        ca,
        fake,
        secrets,
        login,
        api,
        secret_id,
    }
}

fn bootstrap(runtime: &FakeRuntime, h: &Https) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bootstrap"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(runtime.lambda_env())
        .env("SECRET_ID", &h.secret_id)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", h.secrets.url())
        .env("MDE_LOGIN_URL", h.login.url())
        .env("MDE_API_URL", h.api.url())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

fn offboard_event(device: &str) -> Value {
    let body = json!({"ticket": "INC0012345", "comment": "Laptop retired", "devices": [device]})
        .to_string();
    signed_lambda_event("/v1/offboard", &body).0
}

fn answer(outcome: Option<Outcome>) -> (u16, Value) {
    let (status, body, _) = lambda_response(outcome);
    (status, body)
}

#[tokio::test]
async fn every_host_is_reached_over_https_with_the_ca_of_mde_ca_file() {
    let h = https().await;
    let runtime = FakeRuntime::start().await;
    let mut cmd = bootstrap(&runtime, &h);
    cmd.env("MDE_CA_FILE", h.ca.write_ca_file("mde-tls-test-ca"));
    let _child = cmd.spawn().unwrap();

    let (status, body) = answer(
        runtime
            .invoke(offboard_event(ids::WIN11), Duration::from_secs(20))
            .await,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "offboard_requested");
    assert_eq!(h.fake.count(Api::Offboard), 1);
    for (host, front) in [
        ("Secrets Manager", &h.secrets),
        ("login", &h.login),
        ("API", &h.api),
    ] {
        // One each: the first invocation waited for the connections the
        // warm-up was opening instead of racing them with its own.
        assert_eq!(front.handshakes(), 1, "TLS handshakes with {host}");
    }

    // Warm: the connections the first invocation used are kept; a second
    // one opens none.
    let before = h.secrets.handshakes() + h.login.handshakes() + h.api.handshakes();
    let (status, body) = answer(
        runtime
            .invoke(offboard_event(ids::WIN10), Duration::from_secs(20))
            .await,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "offboard_requested");
    let after = h.secrets.handshakes() + h.login.handshakes() + h.api.handshakes();
    assert_eq!(after, before, "a warm invocation made a new TLS handshake");
}

#[tokio::test]
async fn without_mde_ca_file_an_unknown_ca_is_refused_and_the_system_store_is_not_read() {
    let h = https().await;
    let runtime = FakeRuntime::start().await;
    let mut cmd = bootstrap(&runtime, &h);
    // The variables OpenSSL and rustls-native-certs read: the function's
    // roots are compiled in, so neither makes the test CA trusted.
    let ca_file = h.ca.write_ca_file("mde-tls-test-system");
    cmd.env("SSL_CERT_FILE", &ca_file)
        .env("SSL_CERT_DIR", std::env::temp_dir());
    let _child = cmd.spawn().unwrap();

    let (status, body) = answer(
        runtime
            .invoke(offboard_event(ids::WIN11), Duration::from_secs(20))
            .await,
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "secret_unavailable", "{body}");
    assert_eq!(
        h.secrets.handshakes(),
        0,
        "a handshake with an untrusted CA completed"
    );
    assert_eq!(h.fake.count(Api::Login), 0);
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

#[tokio::test]
async fn an_unusable_mde_ca_file_ends_init_naming_it() {
    let h = https().await;
    let empty = std::env::temp_dir().join(format!("mde-tls-empty-{}.pem", std::process::id()));
    std::fs::write(&empty, "no certificates here\n").unwrap();
    for path in [
        "/nonexistent/ca.pem".to_string(),
        empty.to_string_lossy().into_owned(),
    ] {
        let runtime = FakeRuntime::start().await;
        let mut cmd = bootstrap(&runtime, &h);
        cmd.env("MDE_CA_FILE", &path);
        let out = cmd.spawn().unwrap().wait_with_output().await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{path}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("MDE_CA_FILE") && !stderr.contains("panicked"),
            "{stderr}"
        );
        let (kind, body) = runtime.init_error().expect("init error posted");
        assert_eq!(kind.as_deref(), Some("Runtime.ConfigError"));
        assert!(
            body["errorMessage"]
                .as_str()
                .unwrap()
                .contains("MDE_CA_FILE")
        );
        assert_eq!(runtime.next_calls(), 0);
    }
}
