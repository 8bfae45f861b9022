//! A stateful fake of EC2 Auto Scaling's lifecycle calls,
//! `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat`, which
//! moto 5.2.1 does not serve (its Auto Scaling backend creates, lists and
//! deletes hooks, and has no lifecycle actions). Faithful to what the
//! function relies on: the awsQuery protocol (a form POST with `Action`
//! and `Version=2011-01-01`), a SigV4 `Authorization` scoped to
//! `autoscaling` required, the XML answers and error shapes of the real
//! service, and lifecycle actions that are active until completed (or
//! expired): a token that names no active action of that group and hook is
//! `ValidationError` "No active Lifecycle Action found with token <token>",
//! as AWS answers. Point `AWS_ENDPOINT_URL_AUTO_SCALING` at `url()`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

const XMLNS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

/// One lifecycle action a hook holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleActionState {
    pub group: String,
    pub hook: String,
    pub instance: String,
    pub token: String,
    pub heartbeats: u32,
    /// `CONTINUE` or `ABANDON` once completed; `None` while active.
    pub result: Option<String>,
    /// Ended by its hook's timeout (see `expire`).
    pub expired: bool,
}

/// One request the fake saw.
#[derive(Debug, Clone)]
pub struct AsgCall {
    pub form: HashMap<String, String>,
    pub authorization: Option<String>,
    pub status: u16,
}

impl AsgCall {
    pub fn action(&self) -> &str {
        self.form.get("Action").map_or("", String::as_str)
    }
}

/// A scripted failure of the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsgFault {
    /// 400 `Throttling`, "Rate exceeded".
    Throttling,
    /// 403 `AccessDenied`.
    AccessDenied,
}

#[derive(Default)]
struct Inner {
    actions: Vec<LifecycleActionState>,
    calls: Vec<AsgCall>,
    faults: VecDeque<AsgFault>,
}

#[derive(Clone)]
pub struct FakeAutoScaling {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

impl FakeAutoScaling {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Auto Scaling");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake state")
    }

    /// A terminating instance held by `hook` of `group`, with `token`.
    pub fn hold(&self, group: &str, hook: &str, instance: &str, token: &str) {
        self.lock().actions.push(LifecycleActionState {
            group: group.into(),
            hook: hook.into(),
            instance: instance.into(),
            token: token.into(),
            heartbeats: 0,
            result: None,
            expired: false,
        });
    }

    /// The hook's timeout ends the action with its default result.
    pub fn expire(&self, token: &str) {
        for a in self.lock().actions.iter_mut().filter(|a| a.token == token) {
            a.expired = true;
        }
    }

    /// The next call fails with `fault`; faults queue up in order.
    pub fn fault(&self, fault: AsgFault) {
        self.lock().faults.push_back(fault);
    }

    pub fn action(&self, token: &str) -> Option<LifecycleActionState> {
        self.lock()
            .actions
            .iter()
            .find(|a| a.token == token)
            .cloned()
    }

    pub fn calls(&self) -> Vec<AsgCall> {
        self.lock().calls.clone()
    }

    /// The calls of one action (`CompleteLifecycleAction`, ...).
    pub fn calls_of(&self, action: &str) -> Vec<AsgCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.action() == action)
            .collect()
    }
}

type Shared = Arc<Mutex<Inner>>;

async fn handle(
    axum::extract::State(st): axum::extract::State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = crate::defender::form_fields(&body);
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let r = answer(&st, &form, authorization.as_deref());
    let status = r.status().as_u16();
    st.lock().expect("fake state").calls.push(AsgCall {
        form,
        authorization,
        status,
    });
    r
}

fn answer(st: &Shared, form: &HashMap<String, String>, authorization: Option<&str>) -> Response {
    let signed = authorization.is_some_and(|a| {
        a.starts_with("AWS4-HMAC-SHA256 Credential=")
            && a.contains("/autoscaling/aws4_request")
            && a.contains("SignedHeaders=")
            && a.contains("Signature=")
    });
    if !signed {
        return error(
            403,
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
        );
    }
    let action = form.get("Action").map(String::as_str).unwrap_or("");
    if form.get("Version").map(String::as_str) != Some("2011-01-01")
        || !matches!(
            action,
            "CompleteLifecycleAction" | "RecordLifecycleActionHeartbeat"
        )
    {
        return error(
            400,
            "InvalidAction",
            "Could not find operation for this action and version",
        );
    }
    let mut inner = st.lock().expect("fake state");
    if let Some(f) = inner.faults.pop_front() {
        return match f {
            AsgFault::Throttling => error(400, "Throttling", "Rate exceeded"),
            AsgFault::AccessDenied => error(
                403,
                "AccessDenied",
                &format!("User is not authorized to perform: autoscaling:{action}"),
            ),
        };
    }
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    for required in ["AutoScalingGroupName", "LifecycleHookName"] {
        if get(required).is_empty() {
            return error(
                400,
                "ValidationError",
                &format!(
                    "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
                    lower_first(required)
                ),
            );
        }
    }
    let (token, instance) = (get("LifecycleActionToken"), get("InstanceId"));
    if token.is_empty() && instance.is_empty() {
        return error(
            400,
            "ValidationError",
            "Either an InstanceId or a LifecycleActionToken is required",
        );
    }
    let result = get("LifecycleActionResult");
    if action == "CompleteLifecycleAction" && !matches!(result, "CONTINUE" | "ABANDON") {
        return error(
            400,
            "ValidationError",
            "Valid values for LifecycleActionResult are CONTINUE and ABANDON",
        );
    }
    let found = inner.actions.iter_mut().find(|a| {
        a.group == get("AutoScalingGroupName")
            && a.hook == get("LifecycleHookName")
            && (token.is_empty() || a.token == token)
            && (instance.is_empty() || a.instance == instance)
            && a.result.is_none()
            && !a.expired
    });
    let Some(a) = found else {
        let message = match token.is_empty() {
            false => format!("No active Lifecycle Action found with token {token}"),
            true => format!("No active Lifecycle Action found with instance ID {instance}"),
        };
        return error(400, "ValidationError", &message);
    };
    match action {
        "CompleteLifecycleAction" => a.result = Some(result.to_string()),
        _ => a.heartbeats += 1,
    }
    xml(
        200,
        format!(
            "<{action}Response xmlns=\"{XMLNS}\">\n  <{action}Result/>\n  <ResponseMetadata>\n    <RequestId>5c1b9e4e-EXAMPLE</RequestId>\n  </ResponseMetadata>\n</{action}Response>\n"
        ),
    )
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

fn xml(status: u16, body: String) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [
            ("content-type", "text/xml"),
            ("x-amzn-requestid", "5c1b9e4e-EXAMPLE"),
        ],
        body,
    )
        .into_response()
}

fn error(status: u16, code: &str, message: &str) -> Response {
    xml(
        status,
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n  <RequestId>5c1b9e4e-EXAMPLE</RequestId>\n</ErrorResponse>\n"
        ),
    )
}
