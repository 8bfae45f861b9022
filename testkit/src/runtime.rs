//! A Lambda Runtime API endpoint, as the Lambda service offers it to a
//! custom runtime: `invocation/next` long-polls for an event, the runtime
//! posts the answer to `invocation/{id}/response` (or `/error`), and a
//! failed init posts to `init/error`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

struct Pending {
    id: String,
    /// The payload as the invoker wrote it.
    event: String,
    deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Response(Value),
    Error(Value),
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<String, oneshot::Sender<(Outcome, Duration)>>,
    delivered: HashMap<String, std::time::Instant>,
    init_error: Option<(Option<String>, Value)>,
    next_calls: usize,
    first_next: Option<std::time::Instant>,
}

struct Shared {
    inner: Mutex<Inner>,
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>,
}

#[derive(Clone)]
pub struct FakeRuntime {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Pending>,
    addr: SocketAddr,
    seq: Arc<Mutex<u64>>,
}

const PREFIX: &str = "/2018-06-01/runtime";

impl FakeRuntime {
    pub async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            queue: tokio::sync::Mutex::new(rx),
        });
        let app = Router::new()
            .route(&format!("{PREFIX}/invocation/next"), get(next))
            .route(
                &format!("{PREFIX}/invocation/{{id}}/response"),
                post(response),
            )
            .route(&format!("{PREFIX}/invocation/{{id}}/error"), post(error))
            .route(&format!("{PREFIX}/init/error"), post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Runtime API");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            shared,
            tx,
            addr,
            seq: Arc::new(Mutex::new(0)),
        }
    }

    /// The value for `AWS_LAMBDA_RUNTIME_API`.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The environment Lambda gives a custom runtime, pointed at this
    /// endpoint, with test credentials for the AWS SDK.
    pub fn lambda_env(&self) -> Vec<(&'static str, String)> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.endpoint().as_str()),
            ("AWS_LAMBDA_FUNCTION_NAME", "mde-offboard"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/25/[$LATEST]abc"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/mde-offboard"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect()
    }

    /// Queues an event with a deadline `budget` from now and waits for the
    /// runtime's answer (at most `budget` plus a second).
    pub async fn invoke(&self, event: Value, budget: Duration) -> Option<Outcome> {
        self.invoke_timed(event, budget).await.map(|(o, _)| o)
    }

    /// As `invoke`, with the payload's bytes as given (a key twice, say,
    /// which a `Value` cannot hold).
    pub async fn invoke_raw(&self, payload: &str, budget: Duration) -> Option<Outcome> {
        self.invoke_text(payload.to_string(), budget)
            .await
            .map(|(o, _)| o)
    }

    /// As `invoke`, with the time the function held the event: from the
    /// moment `next` handed it over to the moment the answer arrived.
    pub async fn invoke_timed(
        &self,
        event: Value,
        budget: Duration,
    ) -> Option<(Outcome, Duration)> {
        self.invoke_text(event.to_string(), budget).await
    }

    async fn invoke_text(&self, event: String, budget: Duration) -> Option<(Outcome, Duration)> {
        let id = {
            let mut s = self.seq.lock().expect("seq");
            *s += 1;
            format!("8476a536-e9f4-11e8-9739-{:012x}", *s)
        };
        let (done_tx, done_rx) = oneshot::channel();
        self.shared
            .inner
            .lock()
            .expect("runtime state")
            .waiting
            .insert(id.clone(), done_tx);
        let deadline_ms = (SystemTime::now() + budget)
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        self.tx
            .send(Pending {
                id,
                event,
                deadline_ms,
            })
            .ok()?;
        tokio::time::timeout(budget + Duration::from_secs(1), done_rx)
            .await
            .ok()?
            .ok()
    }

    /// What the runtime posted to `init/error`: the error-type header and
    /// the JSON body.
    pub fn init_error(&self) -> Option<(Option<String>, Value)> {
        self.shared
            .inner
            .lock()
            .expect("runtime state")
            .init_error
            .clone()
    }

    /// When the runtime first asked for an event (the end of its init).
    pub fn first_next(&self) -> Option<std::time::Instant> {
        self.shared.inner.lock().expect("runtime state").first_next
    }

    /// How many times the runtime has asked for the next event.
    pub fn next_calls(&self) -> usize {
        self.shared.inner.lock().expect("runtime state").next_calls
    }
}

async fn next(State(sh): State<Arc<Shared>>) -> Response {
    {
        let mut inner = sh.inner.lock().expect("runtime state");
        inner.next_calls += 1;
        inner.first_next.get_or_insert_with(std::time::Instant::now);
    }
    let p = {
        let mut q = sh.queue.lock().await;
        q.recv().await
    };
    let Some(p) = p else {
        return StatusCode::GONE.into_response();
    };
    let mut h = HeaderMap::new();
    h.insert("lambda-runtime-aws-request-id", p.id.parse().expect("id"));
    h.insert(
        "lambda-runtime-deadline-ms",
        p.deadline_ms.to_string().parse().expect("digits"),
    );
    h.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:mde-offboard"
            .parse()
            .expect("arn"),
    );
    h.insert(
        "lambda-runtime-trace-id",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
            .parse()
            .expect("trace"),
    );
    h.insert("content-type", "application/json".parse().expect("ct"));
    sh.inner
        .lock()
        .expect("runtime state")
        .delivered
        .insert(p.id.clone(), std::time::Instant::now());
    (StatusCode::OK, h, p.event).into_response()
}

fn finish(sh: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    let now = std::time::Instant::now();
    let mut inner = sh.inner.lock().expect("runtime state");
    let held = inner
        .delivered
        .remove(id)
        .map(|t| now.duration_since(t))
        .unwrap_or_default();
    match inner.waiting.remove(id) {
        Some(tx) => {
            let _ = tx.send((outcome, held));
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn response(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let v = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
    finish(&sh, &id, Outcome::Response(v))
}

async fn error(State(sh): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    finish(&sh, &id, Outcome::Error(v))
}

async fn init_error(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let kind = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    sh.inner.lock().expect("runtime state").init_error = Some((kind, v));
    StatusCode::ACCEPTED
}
