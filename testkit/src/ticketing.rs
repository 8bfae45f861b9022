//! Stateful fakes of the three write-back endpoints, checking auth and body
//! shape as the real APIs do and answering their real error shapes:
//! - Jira Cloud `POST /rest/api/3/issue/{key}/comment` (basic
//!   `email:api_token`; the body an Atlassian Document Format doc; 201;
//!   errors `{"errorMessages": [...], "errors": {...}}`);
//! - ServiceNow `PATCH /api/now/table/{table}/{sys_id}` (basic; 200
//!   `{"result": {...}}`; errors `{"error": {"message", "detail"},
//!   "status": "failure"}`);
//! - PagerDuty `POST /incidents/{id}/notes` (`Authorization: Token
//!   token=...` and a `From` header; 201 `{"note": {...}}`; errors
//!   `{"error": {"message", "code"}}`).
//!
//! One server serves all three; each system's base URL is `url()`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

pub const JIRA_EMAIL: &str = "automation@contoso.com";
pub const JIRA_TOKEN: &str = "jira-api-token-never-log";
pub const SNOW_USER: &str = "mde.integration";
pub const SNOW_PASSWORD: &str = "snow-password-never-log";
pub const PD_TOKEN: &str = "pd-rest-token-never-log";
pub const PD_FROM: &str = "secops@contoso.com";

/// One write that landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `jira`, `servicenow` or `pagerduty`.
    pub system: &'static str,
    /// The issue key, `table/sys_id`, or incident id.
    pub record: String,
    pub text: String,
}

#[derive(Default)]
struct Inner {
    jira_issues: HashSet<String>,
    snow_records: HashSet<(String, String)>,
    pd_incidents: HashSet<String>,
    written: Vec<Written>,
    /// Statuses to answer next, before any check (faults).
    fail_next: Vec<u16>,
    calls: usize,
}

#[derive(Clone)]
pub struct FakeTicketing {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

impl FakeTicketing {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake ticketing systems");
        let addr = listener.local_addr().expect("local addr");
        let me = Self { inner, addr };
        let app = Router::new()
            .route("/rest/api/3/issue/{key}/comment", post(jira_comment))
            .route("/api/now/table/{table}/{sys_id}", patch(snow_patch))
            .route("/incidents/{id}/notes", post(pd_note))
            .with_state(me.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        me
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    pub fn with_jira_issue(self, key: &str) -> Self {
        self.inner.lock().unwrap().jira_issues.insert(key.into());
        self
    }
    pub fn with_snow_record(self, table: &str, sys_id: &str) -> Self {
        self.inner
            .lock()
            .unwrap()
            .snow_records
            .insert((table.into(), sys_id.into()));
        self
    }
    pub fn with_pd_incident(self, id: &str) -> Self {
        self.inner.lock().unwrap().pd_incidents.insert(id.into());
        self
    }
    /// The next calls answer these statuses (e.g. `[503]`), whatever they hold.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.inner.lock().unwrap().fail_next = statuses.to_vec();
    }
    pub fn written(&self) -> Vec<Written> {
        self.inner.lock().unwrap().written.clone()
    }
    pub fn calls(&self) -> usize {
        self.inner.lock().unwrap().calls
    }

    /// The secret keys that point the function at this fake.
    pub fn secret_keys(&self) -> Value {
        json!({
            "jira_api": {"base_url": self.url(), "email": JIRA_EMAIL, "api_token": JIRA_TOKEN},
            "servicenow_api": {"base_url": self.url(), "user": SNOW_USER, "password": SNOW_PASSWORD},
            "pagerduty_api": {"base_url": self.url(), "token": PD_TOKEN, "from": PD_FROM},
        })
    }

    fn fault(&self) -> Option<u16> {
        let mut g = self.inner.lock().unwrap();
        g.calls += 1;
        (!g.fail_next.is_empty()).then(|| g.fail_next.remove(0))
    }
}

fn basic_ok(h: &HeaderMap, user: &str, password: &str) -> bool {
    let want = format!("Basic {}", B64.encode(format!("{user}:{password}")));
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

fn answer(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

/// The text of an ADF doc of paragraphs of text nodes, as Jira requires
/// (`type: doc`, `version: 1`); `None` for anything else.
fn adf_text(doc: &Value) -> Option<String> {
    if doc.get("type")? != "doc" || doc.get("version")? != 1 {
        return None;
    }
    let mut out = String::new();
    for block in doc.get("content")?.as_array()? {
        for node in block.get("content")?.as_array()? {
            if node.get("type")? != "text" {
                return None;
            }
            out.push_str(node.get("text")?.as_str()?);
        }
    }
    Some(out)
}

async fn jira_comment(
    State(me): State<FakeTicketing>,
    Path(key): Path<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(s) = me.fault() {
        return answer(
            s,
            json!({"errorMessages": ["Internal server error"], "errors": {}}),
        );
    }
    if !basic_ok(&h, JIRA_EMAIL, JIRA_TOKEN) {
        return answer(
            401,
            json!({"errorMessages": ["You are not authenticated. Authentication required to perform this operation."], "errors": {}}),
        );
    }
    let mut g = me.inner.lock().unwrap();
    if !g.jira_issues.contains(&key) {
        return answer(
            404,
            json!({"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}}),
        );
    }
    let text = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| adf_text(v.get("body")?));
    let Some(text) = text else {
        return answer(
            400,
            json!({"errorMessages": [], "errors": {"comment": "Comment body is not valid!"}}),
        );
    };
    g.written.push(Written {
        system: "jira",
        record: key,
        text,
    });
    let id = g.written.len();
    answer(
        201,
        json!({"id": id.to_string(), "self": format!("/rest/api/3/comment/{id}")}),
    )
}

async fn snow_patch(
    State(me): State<FakeTicketing>,
    Path((table, sys_id)): Path<(String, String)>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let failure = |status: u16, message: &str, detail: &str| {
        answer(
            status,
            json!({"error": {"message": message, "detail": detail}, "status": "failure"}),
        )
    };
    if let Some(s) = me.fault() {
        return failure(s, "Internal error", "");
    }
    if !basic_ok(&h, SNOW_USER, SNOW_PASSWORD) {
        return failure(
            401,
            "User Not Authenticated",
            "Required to provide Auth information",
        );
    }
    let mut g = me.inner.lock().unwrap();
    if !g.snow_records.contains(&(table.clone(), sys_id.clone())) {
        return failure(
            404,
            "No Record found",
            "Record doesn't exist or ACL restricts the record retrieval",
        );
    }
    let v: Option<Value> = serde_json::from_slice(&body).ok();
    let Some(text) = v
        .as_ref()
        .and_then(|v| v.get("work_notes"))
        .and_then(Value::as_str)
    else {
        return failure(
            400,
            "Exception while reading request",
            "The payload is not valid JSON.",
        );
    };
    g.written.push(Written {
        system: "servicenow",
        record: format!("{table}/{sys_id}"),
        text: text.to_string(),
    });
    answer(
        200,
        json!({"result": {"sys_id": sys_id, "sys_class_name": table}}),
    )
}

async fn pd_note(
    State(me): State<FakeTicketing>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let error = |status: u16, message: &str, code: u32| {
        answer(status, json!({"error": {"message": message, "code": code}}))
    };
    if let Some(s) = me.fault() {
        return error(s, "Internal Server Error", 2000);
    }
    let want = format!("Token token={PD_TOKEN}");
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
        return error(401, "Authentication failed", 2006);
    }
    if h.get("from").and_then(|v| v.to_str().ok()) != Some(PD_FROM) {
        return answer(
            400,
            json!({"error": {"message": "Invalid Input Provided", "code": 2001, "errors": ["Requester User Not Found"]}}),
        );
    }
    let mut g = me.inner.lock().unwrap();
    if !g.pd_incidents.contains(&id) {
        return error(404, "Not Found", 2100);
    }
    let v: Option<Value> = serde_json::from_slice(&body).ok();
    let Some(text) = v
        .as_ref()
        .and_then(|v| v.pointer("/note/content"))
        .and_then(Value::as_str)
    else {
        return answer(
            400,
            json!({"error": {"message": "Invalid Input Provided", "code": 2001, "errors": ["Note content can't be blank"]}}),
        );
    };
    g.written.push(Written {
        system: "pagerduty",
        record: id,
        text: text.to_string(),
    });
    answer(201, json!({"note": {"id": "PWL7QXS", "content": text}}))
}
