//! Shared set-up for the integration tests: the fake Defender and login
//! APIs, moto's Secrets Manager, and signed API Gateway events.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use lambda_http::{Body, Context, Request, RequestExt, Response};
use mde_offboard::App;
use mde_offboard::adapters::secrets_manager::SecretsManagerSource;
use mde_offboard::config::Config;
use mde_offboard::support::webhook_sig::{StandardWebhooks, secret_key};
use mde_testkit::{FakeDefender, GENERIC_WEBHOOK_SECRET, demo_machines, events, moto};
use serde_json::Value;

#[allow(unused_imports)]
pub use mde_testkit::ids;

pub fn sm_client() -> aws_sdk_secretsmanager::Client {
    sm_client_at(&moto::moto().endpoint)
}

/// The client the function builds, pointed at `endpoint`.
pub fn sm_client_at(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    mde_offboard::adapters::aws::SdkClient::with_limits(
        aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests")),
    )
}

pub fn sqs_client() -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(&moto::moto().endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// A new queue in moto; returns its URL.
pub async fn new_queue() -> String {
    let name = format!(
        "mde-offboard-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    sqs_client()
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create the queue in moto")
        .queue_url
        .expect("a queue URL")
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Stores `text` as a new secret in moto and returns its name.
pub async fn put_secret(text: &str) -> String {
    let name = format!(
        "mde-offboard/test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    sm_client()
        .create_secret()
        .name(&name)
        .secret_string(text)
        .send()
        .await
        .expect("create the secret in moto");
    name
}

pub struct Harness {
    pub fake: FakeDefender,
    pub app: App,
    pub secret_name: String,
}

pub struct Options {
    pub env: Vec<(&'static str, String)>,
    pub secret: String,
    /// Where the function reaches Secrets Manager, if not moto directly.
    pub secrets_endpoint: Option<String>,
    /// An SQS queue (in moto) for queue mode.
    pub queue_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            env: vec![("PROTECTED_TAGS", "vip".into())],
            secret: mde_testkit::secret_json(),
            secrets_endpoint: None,
            queue_url: None,
        }
    }
}

impl Harness {
    pub async fn new() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(opts: Options) -> Self {
        let fake = FakeDefender::start(demo_machines()).await;
        let secret_name = put_secret(&opts.secret).await;
        let mut env: Vec<(String, String)> = vec![
            ("SECRET_ID".into(), secret_name.clone()),
            ("MDE_API_URL".into(), fake.url()),
            ("MDE_LOGIN_URL".into(), fake.url()),
        ];
        env.extend(opts.env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let config = Config::from_lookup(|k| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        })
        .expect("test configuration");
        let client = match &opts.secrets_endpoint {
            Some(e) => sm_client_at(e),
            None => sm_client(),
        };
        let source = Arc::new(SecretsManagerSource::new(client, secret_name.clone()));
        let mut app = mde_offboard::init::Wiring::new(config, source).build();
        if let Some(url) = &opts.queue_url {
            app = app.with_queue(Arc::new(mde_offboard::adapters::sqs::SqsQueue::new(
                sqs_client(),
                url.clone(),
            )));
        }
        Self {
            fake,
            app,
            secret_name,
        }
    }

    pub async fn send(&self, req: Request) -> (u16, Value, Response<Body>) {
        let resp = mde_offboard::inbound::http::handle(&self.app, req).await;
        let status = resp.status().as_u16();
        let body = match resp.body() {
            Body::Text(t) => serde_json::from_str(t).expect("the answer is JSON"),
            Body::Empty => Value::Null,
            Body::Binary(b) => serde_json::from_slice(b).expect("the answer is JSON"),
            _ => Value::Null,
        };
        (status, body, resp)
    }

    pub async fn offboard(&self, body: &Value) -> (u16, Value, Response<Body>) {
        self.send(signed("POST", "/v1/offboard", &body.to_string()))
            .await
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HTTP API v2.0 event signed with Standard Webhooks, as a `Request`.
pub fn signed(method: &str, path: &str, body: &str) -> Request {
    signed_with(method, path, body, GENERIC_WEBHOOK_SECRET, now())
}

pub fn signed_with(method: &str, path: &str, body: &str, secret: &str, ts: i64) -> Request {
    let id = format!("msg_{}", SEQ.fetch_add(1, Ordering::SeqCst));
    let sig = StandardWebhooks::from_bytes(secret_key(secret).unwrap_or_default()).sign(
        &id,
        ts,
        body.as_bytes(),
    );
    let ts = ts.to_string();
    request(
        method,
        path,
        &[
            ("webhook-id", &id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        body,
    )
}

pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
    let event = events::http_api_v2(method, path, headers, body);
    lambda_http::request::from_str(&event.to_string()).expect("a valid HTTP API event")
}

/// Gives the request a Lambda deadline `budget` from now.
pub fn with_deadline(req: Request, budget: Duration) -> Request {
    let deadline = SystemTime::now() + budget;
    let mut ctx = Context::default();
    ctx.request_id = "test-request".into();
    ctx.deadline = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    req.with_lambda_context(ctx)
}

pub fn results(body: &Value) -> &Vec<Value> {
    body["results"].as_array().expect("results")
}

/// An HTTP API event for the built binary, signed for the generic source
/// with a fresh webhook id; also the signature, for tests that look for it
/// in the logs.
pub fn signed_lambda_event(path: &str, body: &str) -> (Value, String) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let id = format!("msg_bin_{}", SEQ.fetch_add(1, Ordering::SeqCst));
    let sig = StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
        .unwrap()
        .sign(&id, now(), body.as_bytes());
    let ts = now().to_string();
    let event = events::http_api_v2(
        "POST",
        path,
        &[
            ("webhook-id", &id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        body,
    );
    (event, sig)
}

/// The status, JSON body and headers of the runtime's answer to an HTTP
/// event; panics on anything else.
pub fn lambda_response(outcome: Option<mde_testkit::Outcome>) -> (u16, Value, Value) {
    match outcome {
        Some(mde_testkit::Outcome::Response(v)) => {
            let status = v["statusCode"].as_u64().unwrap() as u16;
            let body = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
            (status, body, v["headers"].clone())
        }
        other => panic!("no response from the runtime: {other:?}"),
    }
}
