//! Webhook keys and auth schemes through the real handler: requests signed
//! by the official Standard Webhooks and Svix Python libraries, weak keys
//! that fail closed, and refusals that cost no Secrets Manager call. The
//! secret comes from memory (a counting source), so no moto is needed.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use lambda_http::{Body, Request};
use mde_offboard::App;
use mde_offboard::config::Config;
use mde_offboard::domain::secret::{CredentialError, SecretSource};
use mde_offboard::support::webhook_sig::{StandardWebhooks, secret_key};
use mde_testkit::{Api, FakeDefender, GENERIC_WEBHOOK_SECRET, demo_machines, events, ids};
use serde_json::{Value, json};

/// A secret source that counts its fetches.
struct Counting {
    text: String,
    fetches: AtomicUsize,
}

impl SecretSource for Counting {
    fn fetch(&self) -> BoxFuture<'_, Result<String, CredentialError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(self.text.clone()) })
    }
}

struct Harness {
    fake: FakeDefender,
    app: App,
    source: Arc<Counting>,
}

impl Harness {
    async fn with(secret: Value, env: &[(&str, &str)]) -> Self {
        let fake = FakeDefender::start(demo_machines()).await;
        let mut vars: Vec<(String, String)> = vec![
            ("SECRET_ID".into(), "in-memory".into()),
            ("MDE_API_URL".into(), fake.url()),
            ("MDE_LOGIN_URL".into(), fake.url()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::from_lookup(|k| {
            vars.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        })
        .expect("test configuration");
        let source = Arc::new(Counting {
            text: secret.to_string(),
            fetches: AtomicUsize::new(0),
        });
        let app = mde_offboard::init::Wiring::new(config, source.clone()).build();
        Self { fake, app, source }
    }

    async fn default() -> Self {
        Self::with(base_secret(), &[]).await
    }

    async fn send(&self, req: Request) -> (u16, Value) {
        let resp = mde_offboard::inbound::http::handle(&self.app, req).await;
        let status = resp.status().as_u16();
        let body = match resp.body() {
            Body::Text(t) => serde_json::from_str(t).expect("the answer is JSON"),
            _ => Value::Null,
        };
        (status, body)
    }

    fn fetches(&self) -> usize {
        self.source.fetches.load(Ordering::SeqCst)
    }
}

fn base_secret() -> Value {
    serde_json::from_str(&mde_testkit::secret_json()).unwrap()
}

fn with_generic(secret: Value) -> Value {
    let mut s = base_secret();
    s["webhook_secrets"]["generic"] = secret;
    s
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn request(path: &str, headers: &[(&str, &str)], body: &str) -> Request {
    let event = events::http_api_v2("POST", path, headers, body);
    lambda_http::request::from_str(&event.to_string()).expect("a valid HTTP API event")
}

fn body() -> String {
    json!({"ticket": "INC7", "comment": "retired", "devices": [ids::WIN11]}).to_string()
}

/// The signature the official Python library `lib` (`standardwebhooks` or
/// `svix`) makes, run by the tests' Python environment (made on first use).
/// Fails the test, never skips it, when Python or the library is missing.
fn python_sign(lib: &str, secret: &str, id: &str, ts: i64, body: &str) -> String {
    let script = format!(
        "import sys\nfrom datetime import datetime, timezone\nfrom {lib}.webhooks import Webhook\n\
         secret, msg_id, ts = sys.argv[1], sys.argv[2], int(sys.argv[3])\n\
         body = sys.stdin.read()\n\
         print(Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), body))\n"
    );
    let python = mde_testkit::python_env().python();
    let mut child = Command::new(&python)
        .args(["-c", &script, secret, id, &ts.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} did not start: {e}", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python library '{lib}' could not sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn requests_signed_by_the_official_python_libraries_are_accepted() {
    // The same 17-byte key written padded and unpadded: a strict decoder
    // refuses the unpadded form, which the libraries accept.
    let unpadded = "whsec_bmV3LXNlY3JldC0xMjM0NTY";
    let padded = "whsec_bmV3LXNlY3JldC0xMjM0NTY=";
    let pairs = [
        (unpadded, unpadded),
        (unpadded, padded),
        (padded, unpadded),
        (padded, padded),
        (GENERIC_WEBHOOK_SECRET, GENERIC_WEBHOOK_SECRET),
    ];
    for (n, (configured, signer)) in pairs.into_iter().enumerate() {
        let h = Harness::with(with_generic(json!(configured)), &[]).await;
        for (lib, prefix) in [("standardwebhooks", "webhook"), ("svix", "svix")] {
            let b = body();
            let id = format!("msg_{lib}_{n}");
            let ts = now();
            let sig = python_sign(lib, signer, &id, ts, &b);
            let ts = ts.to_string();
            let req = request(
                "/v1/offboard",
                &[
                    (&format!("{prefix}-id"), &id),
                    (&format!("{prefix}-timestamp"), &ts),
                    (&format!("{prefix}-signature"), &sig),
                ],
                &b,
            );
            let (status, answer) = h.send(req).await;
            assert_eq!(
                status, 200,
                "{lib} signing with {signer}, {configured} configured: {answer}"
            );
            assert_eq!(answer["results"][0]["device"], ids::WIN11, "{answer}");
        }
    }
}

/// Collects what the function logs during a test, as text.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn weak_keys_refuse_every_call_and_the_log_names_the_key_not_the_value() {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    for weak in [
        "whsec_",
        "whsec_c2hvcnQ",
        "whsec_not*base64!",
        "short-raw-key",
    ] {
        let h = Harness::with(with_generic(json!(weak)), &[]).await;
        // Signed with exactly the configured value: before the key rules,
        // "whsec_" was an empty HMAC key and this was admitted.
        let b = body();
        let ts = now();
        let sig = StandardWebhooks::from_bytes(secret_key(weak).unwrap_or_default()).sign(
            "msg_weak",
            ts,
            b.as_bytes(),
        );
        let ts = ts.to_string();
        let req = request(
            "/v1/offboard",
            &[
                ("webhook-id", "msg_weak"),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &sig),
            ],
            &b,
        );
        let (status, answer) = h.send(req).await;
        assert_eq!(status, 401, "{weak}: {answer}");
        assert_eq!(answer["error"]["code"], "unauthorized");
        assert_eq!(h.fake.count(Api::AnyDefender), 0);
        let log = logs.text();
        assert!(log.contains("webhook_secrets.generic"), "{weak}: {log}");
        assert!(!log.contains(weak), "{weak} was logged: {log}");
        assert!(!answer.to_string().contains(weak), "{answer}");
    }
    // The Python library signs with a 5-byte key without complaint; the
    // function refuses that key, whoever made the signature.
    let h = Harness::with(with_generic(json!("whsec_c2hvcnQ")), &[]).await;
    let b = body();
    let ts = now();
    let sig = python_sign("standardwebhooks", "whsec_c2hvcnQ", "msg_py_weak", ts, &b);
    let ts = ts.to_string();
    let (status, _) = h
        .send(request(
            "/v1/offboard",
            &[
                ("webhook-id", "msg_py_weak"),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &sig),
            ],
            &b,
        ))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_request_without_its_schemes_header_is_refused_before_any_secret_fetch() {
    let h = Harness::default().await;
    let b = body();
    let ts = now().to_string();
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/v1/offboard", vec![]),
        (
            "/v1/offboard",
            vec![("webhook-id", "msg_1"), ("webhook-timestamp", &ts)],
        ),
        // A bearer token is not what the generic route reads.
        ("/v1/offboard", vec![("authorization", "Bearer anything")]),
        ("/v1/webhooks/jira", vec![]),
        ("/v1/webhooks/pagerduty", vec![("x-hub-signature", "x")]),
        ("/v1/webhooks/servicenow", vec![("x-api-key", "x")]),
        ("/v1/webhooks/defender-incident", vec![]),
    ];
    for (path, headers) in &cases {
        let (status, answer) = h.send(request(path, headers, &b)).await;
        assert_eq!(status, 401, "{path} {headers:?}: {answer}");
    }
    assert_eq!(
        h.fetches(),
        0,
        "a refusal without credentials fetched the secret"
    );
    // The counter does count: a request that carries its headers fetches.
    let ts_now = now();
    let sig = StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
        .unwrap()
        .sign("msg_ok", ts_now, b.as_bytes());
    let ts_now = ts_now.to_string();
    let (status, answer) = h
        .send(request(
            "/v1/offboard",
            &[
                ("webhook-id", "msg_ok"),
                ("webhook-timestamp", &ts_now),
                ("webhook-signature", &sig),
            ],
            &b,
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(h.fetches(), 1);
}

#[tokio::test]
async fn bearer_tokens_of_another_length_are_refused_and_the_right_one_admitted() {
    let h = Harness::default().await;
    let snow = json!({"number": "INC0010001", "state": "Closed", "cmdb_ci": ids::WIN11,
        "short_description": "retired"})
    .to_string();
    for token in [
        "snow-bearer-token-never-lo",
        "snow-bearer-token-never-logx",
        "",
        "s",
    ] {
        let auth = format!("Bearer {token}");
        let (status, answer) = h
            .send(request(
                "/v1/webhooks/servicenow",
                &[("authorization", &auth)],
                &snow,
            ))
            .await;
        assert_eq!(status, 401, "{token}: {answer}");
    }
    let (status, answer) = h
        .send(request(
            "/v1/webhooks/servicenow",
            &[("authorization", "Bearer snow-bearer-token-never-log")],
            &snow,
        ))
        .await;
    assert!(status == 200 || status == 202, "{status}: {answer}");
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("events/{name}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn event(v: &Value) -> Request {
    lambda_http::request::from_str(&v.to_string()).expect("a valid event")
}

/// The generic source behind IAM for the SOAR's role, or its API key:
/// the list a team uses while it moves from one to the other.
const GENERIC_IAM_OR_KEY: &str = r#"{"sources": {"generic": {"auth": [
    {"scheme": "iam", "principals": ["arn:aws:sts::123456789012:assumed-role/soar-*/*",
                                     "arn:aws:iam::123456789012:user/xsoar-integration"]},
    {"scheme": "api-key", "header": "x-api-key", "secret": "soar"}]}}}"#;

fn soar_secret() -> Value {
    let mut s = base_secret();
    s["webhook_secrets"]["soar"] =
        json!(["soar-api-key-new-00000001", "soar-api-key-old-00000001"]);
    s
}

/// An HTTP API (payload 2.0) event whose route has IAM authorisation.
fn http_api_iam(arn: &str) -> Value {
    let b = fixture("function-url-iam.json")["body"].clone();
    let mut e = events::http_api_v2("POST", "/v1/offboard", &[], b.as_str().unwrap());
    e["requestContext"]["authorizer"] = json!({"iam": {"accessKey": "ASIAEXAMPLE",
        "accountId": "123456789012", "callerId": "AROAEXAMPLEID:run", "cognitoIdentity": null,
        "principalOrgId": null, "userArn": arn, "userId": "AROAEXAMPLEID:run"}});
    e
}

#[tokio::test]
async fn iam_callers_are_read_from_each_request_context_shape() {
    let h = Harness::with(soar_secret(), &[("SOURCES", GENERIC_IAM_OR_KEY)]).await;
    let furl = fixture("function-url-iam.json");
    let rest = fixture("rest-api-iam.json");
    let http = http_api_iam("arn:aws:sts::123456789012:assumed-role/soar-playbook/run-7");
    for (name, e) in [
        ("function url", &furl),
        ("rest api", &rest),
        ("http api", &http),
    ] {
        let (status, answer) = h.send(event(e)).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(
            answer["results"][0]["device"],
            ids::WIN11,
            "{name}: {answer}"
        );
    }
    let fetched = h.fetches();
    // Another principal, in each shape: refused.
    let mut furl_other = furl.clone();
    furl_other["requestContext"]["authorizer"]["iam"]["userArn"] =
        json!("arn:aws:sts::123456789012:assumed-role/intern/run-1");
    let mut rest_other = rest.clone();
    rest_other["requestContext"]["identity"]["userArn"] =
        json!("arn:aws:iam::123456789012:user/xsoar-integration-2");
    let http_other = http_api_iam("arn:aws:sts::999999999999:assumed-role/soar-playbook/run-7");
    for (name, e) in [
        ("function url", &furl_other),
        ("rest api", &rest_other),
        ("http api", &http_other),
    ] {
        let (status, answer) = h.send(event(e)).await;
        assert_eq!(status, 401, "{name}: {answer}");
    }
    // No identity in the context (a Function URL with AuthType NONE): refused
    // without a secret fetch, whatever the headers claim.
    let mut anonymous = furl.clone();
    anonymous["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    anonymous["headers"]["x-amz-user-arn"] =
        json!("arn:aws:sts::123456789012:assumed-role/soar-playbook/run-7");
    let mut rest_anonymous = rest.clone();
    rest_anonymous["requestContext"]["identity"]["userArn"] = Value::Null;
    // A fresh instance, so a cached secret cannot hide a fetch.
    let fresh = Harness::with(soar_secret(), &[("SOURCES", GENERIC_IAM_OR_KEY)]).await;
    for e in [&anonymous, &rest_anonymous] {
        let (status, answer) = fresh.send(event(e)).await;
        assert_eq!(status, 401, "{answer}");
    }
    assert_eq!(
        fresh.fetches(),
        0,
        "no secret fetch for a call with no identity"
    );
    assert!(fetched >= 1);
}

#[tokio::test]
async fn the_generic_sources_auth_list_admits_an_api_key_with_rotation() {
    let h = Harness::with(soar_secret(), &[("SOURCES", GENERIC_IAM_OR_KEY)]).await;
    let b = body();
    for key in ["soar-api-key-new-00000001", "soar-api-key-old-00000001"] {
        let (status, answer) = h
            .send(request("/v1/offboard", &[("x-api-key", key)], &b))
            .await;
        assert_eq!(status, 200, "{key}: {answer}");
    }
    for key in [
        "soar-api-key-new-0000000",
        "soar-api-key-new-000000011",
        "x",
    ] {
        let (status, answer) = h
            .send(request("/v1/offboard", &[("x-api-key", key)], &b))
            .await;
        assert_eq!(status, 401, "{key}: {answer}");
    }
    // Standard Webhooks no longer admits: the generic source's auth was
    // replaced. A fresh instance, so a cached secret cannot hide a fetch.
    let fresh = Harness::with(soar_secret(), &[("SOURCES", GENERIC_IAM_OR_KEY)]).await;
    let ts = now();
    let sig = StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
        .unwrap()
        .sign("msg_sw", ts, b.as_bytes());
    let ts = ts.to_string();
    let (status, _) = fresh
        .send(request(
            "/v1/offboard",
            &[
                ("webhook-id", "msg_sw"),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &sig),
            ],
            &b,
        ))
        .await;
    assert_eq!(status, 401);
    assert_eq!(fresh.fetches(), 0, "refused before the secret fetch");
    // The action route uses the same auth.
    let (status, answer) = h
        .send(event(&events::http_api_v2(
            "GET",
            "/v1/actions/6b0a7c1e-0000-4000-8000-000000000001",
            &[("x-api-key", "soar-api-key-new-00000001")],
            "",
        )))
        .await;
    assert_ne!(status, 401, "{answer}");
}

#[test]
fn the_generic_source_takes_only_auth() {
    let e = Config::from_lookup(|k| match k {
        "SECRET_ID" => Some("s".into()),
        "SOURCES" => Some(
            r#"{"sources": {"generic": {"auth": {"scheme": "bearer", "secret": "g"}, "devices": "/d"}}}"#
                .into(),
        ),
        _ => None,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("generic") && e.contains("devices"), "{e}");
}

#[tokio::test]
async fn servicenow_basic_auth_from_its_event_file() {
    let mut secret = base_secret();
    secret["webhook_secrets"]["servicenow-basic"] = json!(["servicenow:REPLACED-BY-THE-SENDER"]);
    let sources = r#"{"sources": {"servicenow": {"extends": "servicenow",
        "auth": [{"scheme": "basic", "secret": "servicenow-basic"},
                 {"scheme": "bearer", "secret": "servicenow"}]}}}"#;
    let h = Harness::with(secret, &[("SOURCES", sources)]).await;
    let e = fixture("servicenow-basic.json");
    let (status, answer) = h.send(event(&e)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ticket"], "INC0012345", "{answer}");
    // The bearer of the same list still admits.
    let mut bearer = e.clone();
    bearer["headers"]["authorization"] = json!("Bearer snow-bearer-token-never-log");
    let (status, answer) = h.send(event(&bearer)).await;
    assert_eq!(status, 200, "{answer}");
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    for pair in [
        "servicenow:REPLACED-BY-THE-SENDEr",
        "servicenox:REPLACED-BY-THE-SENDER",
        "servicenow:",
    ] {
        let mut wrong = e.clone();
        wrong["headers"]["authorization"] = json!(format!("Basic {}", engine.encode(pair)));
        let (status, answer) = h.send(event(&wrong)).await;
        assert_eq!(status, 401, "{pair}: {answer}");
    }
    let fresh = Harness::with(base_secret(), &[("SOURCES", sources)]).await;
    let mut bare = e.clone();
    bare["headers"]
        .as_object_mut()
        .unwrap()
        .remove("authorization");
    let (status, _) = fresh.send(event(&bare)).await;
    assert_eq!(status, 401);
    assert_eq!(fresh.fetches(), 0, "refused before the secret fetch");
}

#[tokio::test]
async fn the_servicenow_preset_takes_basic_or_bearer_as_its_secret_allows() {
    // Basic set up (servicenow_basic) beside the bearer token: both admit.
    let mut secret = base_secret();
    secret["webhook_secrets"]["servicenow_basic"] = json!("servicenow:REPLACED-BY-THE-SENDER");
    let h = Harness::with(secret, &[]).await;
    let e = fixture("servicenow-basic.json");
    let (status, answer) = h.send(event(&e)).await;
    assert_eq!(status, 200, "{answer}");
    let mut bearer = e.clone();
    bearer["headers"]["authorization"] = json!("Bearer snow-bearer-token-never-log");
    assert_eq!(h.send(event(&bearer)).await.0, 200);

    // Only the bearer token in the secret: Basic is not set up, so it is
    // refused, and the bearer still admits.
    let h = Harness::with(base_secret(), &[]).await;
    assert_eq!(h.send(event(&e)).await.0, 401);
    assert_eq!(h.send(event(&bearer)).await.0, 200);

    // A Basic value that breaks the key rules closes the whole source.
    let mut weak = base_secret();
    weak["webhook_secrets"]["servicenow_basic"] = json!("mde-offboard:short");
    let h = Harness::with(weak, &[]).await;
    assert_eq!(h.send(event(&bearer)).await.0, 401);
}
