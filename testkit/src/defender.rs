//! A stateful fake of the Defender for Endpoint API and of the Entra ID v2.0
//! token endpoint, faithful to what the function relies on: machines,
//! pending actions, `$filter` on `computerDnsName` with OData quoting, 401
//! for unknown or revoked tokens, 429 with Retry-After, 5xx, slow answers.
//!
//! Both APIs are served on one loopback port; point `MDE_API_URL` and
//! `MDE_LOGIN_URL` at `url()`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub const TENANT_ID: &str = "00000000-0000-0000-0000-000000000000";
pub const CLIENT_ID: &str = "11111111-1111-1111-1111-111111111111";
pub const CLIENT_SECRET: &str = "fake-client-secret-Q8~never-log-me";
pub const SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

/// What an application consented for this function holds: offboarding, and
/// reading machines and actions.
pub const DEFAULT_ROLES: &[&str] = &["Machine.Offboard", "Machine.ReadWrite.All"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeMachine {
    pub id: String,
    pub computer_dns_name: String,
    pub os_platform: String,
    pub os_build: Option<u64>,
    pub machine_tags: Vec<String>,
    /// The Entra tenant it is onboarded in; `None`: `TENANT_ID`.
    pub tenant: Option<String>,
}

impl FakeMachine {
    pub fn new(id: &str, name: &str, platform: &str) -> Self {
        Self {
            id: id.to_string(),
            computer_dns_name: name.to_string(),
            os_platform: platform.to_string(),
            os_build: None,
            machine_tags: Vec::new(),
            tenant: None,
        }
    }

    /// A machine of another tenant (see `FakeDefender::add_tenant`): only
    /// that tenant's tokens see it.
    pub fn in_tenant(mut self, tenant_id: &str) -> Self {
        self.tenant = Some(tenant_id.to_string());
        self
    }

    fn seen_by(&self, tenant: Option<&str>) -> bool {
        self.tenant.as_deref().unwrap_or(TENANT_ID) == tenant.unwrap_or(TENANT_ID)
    }

    pub fn tagged(mut self, tag: &str) -> Self {
        self.machine_tags.push(tag.to_string());
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "computerDnsName": self.computer_dns_name,
            "firstSeen": "2024-03-01T09:12:41.0000000Z",
            "lastSeen": "2026-11-24T18:02:11.0000000Z",
            "osPlatform": self.os_platform,
            "osBuild": self.os_build,
            "version": if self.os_platform == "Windows10" { json!("22H2") } else { Value::Null },
            "healthStatus": "Active",
            "onboardingStatus": "Onboarded",
            "riskScore": "Low",
            "exposureLevel": "Medium",
            "machineTags": self.machine_tags,
            "rbacGroupName": "Default",
            "aadDeviceId": null,
        })
    }
}

/// Which API a scripted fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Login,
    ListMachines,
    GetMachine,
    Offboard,
    GetAction,
    Cancel,
    /// Entra ID's keys endpoint (`/{tenant}/discovery/v2.0/keys`).
    Keys,
    /// Any Defender API call (not login, not the keys).
    AnyDefender,
}

/// A scripted answer that replaces the next normal one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: secs`.
    Throttle { retry_after_secs: u64 },
    /// Any status with Defender's error shape and this code.
    Status { status: u16, code: String },
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Exactly this answer: any status, headers (a `Retry-After` of `1e20`,
    /// a redirect's `Location`) and body.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Fault {
    /// A redirect to `location`, as a hijacked or misconfigured host sends.
    pub fn redirect(status: u16, location: &str) -> Self {
        Self::Answer {
            status,
            headers: vec![("location".into(), location.into())],
            body: String::new(),
        }
    }

    /// A 429 whose `Retry-After` holds `value` verbatim.
    pub fn throttle_raw(value: &str) -> Self {
        Self::Answer {
            status: 429,
            headers: vec![("retry-after".into(), value.into())],
            body: error_body("TooManyRequests", "Rate limit is exceeded.").to_string(),
        }
    }
}

/// One request the fake saw.
#[derive(Debug, Clone)]
pub struct Call {
    pub api: Api,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub body: String,
    pub authorization: Option<String>,
    /// The Entra tenant of the call's token (Defender serves each tenant
    /// its own machines); `None` for a call without a known token.
    pub tenant: Option<String>,
    pub status: u16,
    /// When the fake received it.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Inner {
    machines: Vec<FakeMachine>,
    /// Lower-cased id → the first machine with it: Defender matches ids
    /// case-insensitively, and the benchmark holds thousands of machines
    /// (a scan per call was most of a 25-device request's time).
    by_id: HashMap<String, usize>,
    actions: HashMap<String, Value>,
    pending: HashMap<String, String>,
    /// Issued tokens and the roles each carries.
    tokens: HashMap<String, Vec<String>>,
    /// Issued tokens' tenants (Entra tenant ids).
    token_tenants: HashMap<String, String>,
    /// Tenants besides `TENANT_ID` that the app is consented in.
    other_tenants: Vec<String>,
    /// Faults for one tenant's calls only.
    tenant_faults: VecDeque<(String, Api, Fault)>,
    token_seq: u64,
    action_seq: u64,
    expires_in: Value,
    offboard_status: u16,
    /// The application permissions the issued tokens' `roles` claim lists.
    roles: Vec<String>,
    faults: VecDeque<(Api, Option<String>, Fault)>,
    calls: Vec<Call>,
    /// Set by `trust`: the app has no client secret, only this federated
    /// identity credential over tokens from this STS.
    federation: Option<(crate::sts::FakeSts, Option<FederatedCredential>)>,
    assertion_logins: usize,
    /// The keys the tenant publishes; `None`: `TestKey::shared()`.
    signing_keys: Option<Vec<crate::entra::TestKey>>,
    /// `limit`: Defender's own limits, enforced per API.
    limits: Option<Limits>,
    /// Per API, when each call the limits let through arrived.
    admitted: HashMap<Api, VecDeque<std::time::Instant>>,
}

/// Calls a minute and an hour each API answers before 429, with `minute`
/// standing for a minute.
#[derive(Debug, Clone, Copy)]
struct Limits {
    per_minute: usize,
    per_hour: usize,
    minute: Duration,
}

impl Inner {
    fn add_machine(&mut self, m: FakeMachine) {
        let next = self.machines.len();
        self.by_id.entry(m.id.to_ascii_lowercase()).or_insert(next);
        self.machines.push(m);
    }

    /// The machine with this id, matched as Defender does (any case).
    fn machine(&self, id: &str) -> Option<&FakeMachine> {
        self.by_id
            .get(&id.to_ascii_lowercase())
            .map(|&i| &self.machines[i])
    }
}

/// A federated identity credential on the app registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
}

impl FederatedCredential {
    /// The credential the README's set-up makes for the fake STS's role.
    pub fn for_fake_sts() -> Self {
        Self {
            issuer: crate::sts::ISSUER.into(),
            subject: crate::sts::ROLE_ARN.into(),
            audience: "api://AzureADTokenExchange".into(),
        }
    }
}

#[derive(Clone)]
pub struct FakeDefender {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

impl FakeDefender {
    /// Starts the fake on an ephemeral loopback port, with these machines.
    pub async fn start(machines: Vec<FakeMachine>) -> Self {
        Self::start_on("127.0.0.1:0", machines).await
    }

    pub async fn start_on(bind: &str, machines: Vec<FakeMachine>) -> Self {
        let mut state = Inner::default();
        for m in machines {
            state.add_machine(m);
        }
        let inner = Arc::new(Mutex::new(Inner {
            expires_in: json!(3599),
            offboard_status: 201,
            roles: DEFAULT_ROLES.iter().map(|r| r.to_string()).collect(),
            ..state
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/{tenant}/discovery/v2.0/keys", get(signing_keys))
            .route("/api/machines", get(list_machines))
            .route("/api/machines/findbytag", get(find_by_tag))
            .route("/api/machines/{id}", get(get_machine))
            .route("/api/machines/{id}/offboard", post(offboard))
            .route("/api/machineactions/{id}", get(get_action))
            .route("/api/machineactions/{id}/cancel", post(cancel_action))
            .fallback(fallback)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind the fake Defender");
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

    /// The next call to `api` gets `fault` instead of its normal answer.
    /// Faults queue up in order.
    pub fn fault(&self, api: Api, fault: Fault) {
        self.lock().faults.push_back((api, None, fault));
    }

    /// Like `fault`, for calls whose path contains `path_part` only (one
    /// machine, say).
    pub fn fault_on(&self, api: Api, path_part: &str, fault: Fault) {
        self.lock()
            .faults
            .push_back((api, Some(path_part.to_string()), fault));
    }

    pub fn faults_left(&self) -> usize {
        self.lock().faults.len()
    }

    /// Every token issued so far stops working (401), as after a rotation
    /// or revocation on the tenant.
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    pub fn set_token_lifetime(&self, secs: u64) {
        self.lock().expires_in = json!(secs);
    }

    /// The token answer's `expires_in` as given: huge, negative, a string.
    pub fn set_raw_expires_in(&self, v: Value) {
        self.lock().expires_in = v;
    }

    /// The success status of the offboard call: the docs say 201 in one
    /// place and 200 in another.
    pub fn set_offboard_status(&self, status: u16) {
        self.lock().offboard_status = status;
    }

    /// The `roles` claim of tokens issued from now on, as the tenant's
    /// admin consent grants them: leave `Machine.Offboard` out to see the
    /// function's permission check at start.
    pub fn set_token_roles(&self, roles: &[&str]) {
        self.lock().roles = roles.iter().map(|r| r.to_string()).collect();
    }

    /// The app is consented in `tenant_id` too: its tokens are issued
    /// there, and see that tenant's machines (`FakeMachine::in_tenant`).
    pub fn add_tenant(&self, tenant_id: &str) {
        self.lock().other_tenants.push(tenant_id.to_string());
    }

    /// The next call of `api` made with a token of `tenant_id` answers
    /// with `fault`; other tenants' calls are not touched.
    pub fn fault_for_tenant(&self, tenant_id: &str, api: Api, fault: Fault) {
        self.lock()
            .tenant_faults
            .push_back((tenant_id.to_string(), api, fault));
    }

    pub fn add_machine(&self, m: FakeMachine) {
        self.lock().add_machine(m);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn count(&self, api: Api) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| api == Api::AnyDefender && c.api.is_defender() || c.api == api)
            .count()
    }

    /// Offboard calls Defender accepted (200/201).
    pub fn accepted_offboards(&self) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.api == Api::Offboard && (200..300).contains(&c.status))
            .cloned()
            .collect()
    }

    pub fn pending_action(&self, machine_id: &str) -> Option<String> {
        self.lock().pending.get(machine_id).cloned()
    }

    pub fn set_action_status(&self, action_id: &str, status: &str) {
        let mut st = self.lock();
        let mid = st
            .actions
            .get(action_id)
            .and_then(|a| a["machineId"].as_str().map(str::to_string));
        if let Some(a) = st.actions.get_mut(action_id) {
            a["status"] = json!(status);
            a["lastUpdateDateTimeUtc"] = json!("2026-11-25T10:00:00.0000000Z");
        }
        if status != "Pending"
            && status != "InProgress"
            && let Some(mid) = mid
        {
            st.pending.remove(&mid);
        }
    }

    /// A pending machine action of another type (`Isolate`, say), as the
    /// SOC would start from the portal; answers its id.
    pub fn add_action(&self, machine_id: &str, action_type: &str) -> String {
        let mut st = self.lock();
        st.action_seq += 1;
        let id = format!("7c1ab9e2-1f0d-4e5b-8a3c-{:012x}", st.action_seq);
        let action = json!({
            "id": id, "type": action_type, "status": "Pending", "machineId": machine_id,
            "requestor": "soc@contoso.com", "requestorComment": "containment",
            "creationDateTimeUtc": "2026-11-25T09:00:00.0000000Z",
            "lastUpdateTimeUtc": "2026-11-25T09:00:00.0000000Z",
        });
        st.actions.insert(id.clone(), action);
        id
    }

    /// The action as `GET /api/machineactions/{id}` would answer it.
    pub fn action(&self, action_id: &str) -> Option<Value> {
        self.lock().actions.get(action_id).cloned()
    }

    /// The app trusts tokens from `sts` through `credential` (`None`: the
    /// app has no federated credential at all) and holds no client secret.
    pub fn trust(&self, sts: &crate::sts::FakeSts, credential: Option<FederatedCredential>) {
        self.lock().federation = Some((sts.clone(), credential));
    }

    /// Logins accepted on a federated client assertion.
    pub fn assertion_logins(&self) -> usize {
        self.lock().assertion_logins
    }

    pub fn reset_calls(&self) {
        self.lock().calls.clear();
    }

    /// Answers 429 (with `Retry-After`, whole seconds of the scaled clock
    /// rounded up) as Defender does over its limits: a call to an API that
    /// already let `per_minute` calls through in the last `minute`, or
    /// `per_hour` in the last 60 of them. Calls answered 429 do not count.
    pub fn limit(&self, per_minute: usize, per_hour: usize, minute: Duration) {
        self.lock().limits = Some(Limits {
            per_minute,
            per_hour,
            minute,
        });
    }

    /// Calls answered 429, scripted or over the limits.
    pub fn throttled(&self) -> usize {
        self.lock().calls.iter().filter(|c| c.status == 429).count()
    }

    /// The tenant publishes these keys from now on (a key rolled over,
    /// say); by default it publishes `TestKey::shared()`.
    pub fn publish_keys(&self, keys: &[crate::entra::TestKey]) {
        self.lock().signing_keys = Some(keys.to_vec());
    }
}

impl Api {
    /// A Defender API call, not Entra ID's.
    fn is_defender(self) -> bool {
        !matches!(self, Api::Login | Api::Keys)
    }
}

/// Entra ID's v2.0 keys endpoint for any tenant: the published keys, each
/// with the tenant's v2.0 issuer as Entra ID's v2.0 key sets carry it.
async fn signing_keys(
    State(st): State<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = new_call(Api::Keys, &method, &uri, &headers, b"");
    let call = match intercept(&st, call).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let issuer = format!("http://{host}/{tenant}/v2.0");
    let keys = st
        .lock()
        .expect("fake state")
        .signing_keys
        .clone()
        .unwrap_or_else(|| vec![crate::entra::TestKey::shared().clone()]);
    let jwks: Vec<Value> = keys.iter().map(|k| k.jwk(&issuer)).collect();
    record(&st, call, reply(200, json!({ "keys": jwks })))
}

type Shared = Arc<Mutex<Inner>>;

fn error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "target": "00000000-0000-0000-0000-000000000000"}})
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

/// Takes the first queued fault for this API, records the call and returns
/// the fault's answer when it replaces the normal one.
async fn intercept(st: &Shared, mut call: Call) -> Result<Call, Response> {
    let fault = {
        let mut inner = st.lock().expect("fake state");
        call.tenant = call
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| inner.token_tenants.get(t))
            .cloned();
        let api_matches =
            |a: &Api| *a == call.api || (*a == Api::AnyDefender && call.api.is_defender());
        let for_tenant = inner
            .tenant_faults
            .iter()
            .position(|(t, a, _)| call.tenant.as_deref() == Some(t.as_str()) && api_matches(a));
        match for_tenant {
            Some(p) => inner.tenant_faults.remove(p).map(|(_, _, f)| f),
            None => {
                let pos = inner.faults.iter().position(|(a, part, _)| {
                    api_matches(a) && part.as_deref().is_none_or(|p| call.path.contains(p))
                });
                pos.and_then(|p| inner.faults.remove(p)).map(|(_, _, f)| f)
            }
        }
    };
    let answer = match fault {
        None => None,
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        Some(Fault::Throttle { retry_after_secs }) => {
            let mut r = reply(
                429,
                error_body(
                    "TooManyRequests",
                    "Rate limit is exceeded. Try again later.",
                ),
            );
            r.headers_mut().insert(
                "retry-after",
                retry_after_secs.to_string().parse().expect("digits"),
            );
            Some((429, r))
        }
        Some(Fault::Status { status, code }) => {
            Some((status, reply(status, error_body(&code, "Scripted failure"))))
        }
        Some(Fault::Answer {
            status,
            headers,
            body,
        }) => {
            let mut r = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
                .into_response();
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(k.as_bytes()),
                    axum::http::HeaderValue::from_bytes(v.as_bytes()),
                ) {
                    r.headers_mut().insert(k, v);
                }
            }
            Some((status, r))
        }
    };
    if let Some((status, r)) = answer {
        call.status = status;
        st.lock().expect("fake state").calls.push(call);
        return Err(r);
    }
    Ok(call)
}

/// With `limit` set: how long until the call's API has room, when it has
/// none now; else the call is counted against its limits.
fn over_limits(st: &Shared, call: &Call) -> Option<Duration> {
    let mut inner = st.lock().expect("fake state");
    let limits = inner.limits?;
    let hour = limits.minute * 60;
    // Under the lock: the log stays in time order.
    let now = std::time::Instant::now();
    let log = inner.admitted.entry(call.api).or_default();
    while log.front().is_some_and(|t| now.duration_since(*t) >= hour) {
        log.pop_front();
    }
    let in_minute = log
        .iter()
        .rev()
        .take_while(|t| now.duration_since(**t) < limits.minute)
        .count();
    let mut wait = Duration::ZERO;
    if in_minute >= limits.per_minute {
        let oldest = log[log.len() - limits.per_minute];
        wait = wait.max((oldest + limits.minute).saturating_duration_since(now));
    }
    if log.len() >= limits.per_hour {
        let oldest = log[log.len() - limits.per_hour];
        wait = wait.max((oldest + hour).saturating_duration_since(now));
    }
    if !wait.is_zero() {
        return Some(wait);
    }
    log.push_back(now);
    None
}

fn record(st: &Shared, mut call: Call, r: Response) -> Response {
    call.status = r.status().as_u16();
    st.lock().expect("fake state").calls.push(call);
    r
}

fn new_call(api: Api, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Call {
    Call {
        api,
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        body: String::from_utf8_lossy(body).into_owned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        tenant: None,
        status: 0,
        at: std::time::Instant::now(),
    }
}

/// Every Defender route's first steps: a scripted fault, else the bearer
/// token check (401 like the real API), else the call goes on.
async fn admit(st: &Shared, call: Call) -> Result<Call, Response> {
    let call = intercept(st, call).await?;
    if let Some(wait) = over_limits(st, &call) {
        let mut r = reply(
            429,
            error_body(
                "TooManyRequests",
                "Rate limit is exceeded. Try again later.",
            ),
        );
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        r.headers_mut().insert(
            "retry-after",
            secs.max(1).to_string().parse().expect("digits"),
        );
        return Err(record(st, call, r));
    }
    if !authorized(st, &call) {
        return Err(record(st, call, unauthorized()));
    }
    // Reading machines and actions needs a read permission, as Defender
    // checks it after the token itself.
    let reads = matches!(
        call.api,
        Api::ListMachines | Api::GetMachine | Api::GetAction
    );
    if reads && !READ_ROLES.iter().any(|r| has_role(st, &call, r)) {
        let forbidden = reply(
            403,
            error_body(
                "Forbidden",
                "The application does not have any of the required application permissions (Machine.ReadWrite.All, Machine.Read.All) to access the resource.",
            ),
        );
        return Err(record(st, call, forbidden));
    }
    Ok(call)
}

const READ_ROLES: [&str; 2] = ["Machine.Read.All", "Machine.ReadWrite.All"];

/// Checks the bearer token like the real API: unknown or revoked is 401.
fn authorized(st: &Shared, call: &Call) -> bool {
    let inner = st.lock().expect("fake state");
    call.authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| inner.tokens.contains_key(t))
}

/// Whether the call's token was issued with `role`, as Defender checks a
/// permission after the token itself.
fn has_role(st: &Shared, call: &Call, role: &str) -> bool {
    let inner = st.lock().expect("fake state");
    call.authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .and_then(|t| inner.tokens.get(t))
        .is_some_and(|roles| roles.iter().any(|r| r == role))
}

fn unauthorized() -> Response {
    reply(
        401,
        error_body(
            "Unauthorized",
            "The access token is missing, invalid or expired.",
        ),
    )
}

async fn token(
    State(st): State<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut call = new_call(Api::Login, &method, &uri, &headers, &body);
    call.body = "<form with client secret, not recorded>".into();
    let call = match intercept(&st, call).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let form: HashMap<String, String> = serde_urlencoded_parse(&body);
    let bad = |status: u16, error: &str, code: u64, desc: &str| {
        reply(
            status,
            json!({
                "error": error,
                "error_description": format!("AADSTS{code}: {desc} Trace ID: 0 Correlation ID: 0 Timestamp: 2026-11-25 00:00:00Z"),
                "error_codes": [code],
            }),
        )
    };
    let known = tenant == TENANT_ID
        || st
            .lock()
            .expect("fake state")
            .other_tenants
            .contains(&tenant);
    let r = if !known {
        bad(400, "invalid_request", 90002, "Tenant not found.")
    } else if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        bad(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        )
    } else if form.get("client_id").map(String::as_str) == Some(crate::entra::CALLER_APPID) {
        caller_token(&st, &tenant, &form)
    } else if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        bad(
            400,
            "unauthorized_client",
            700016,
            "Application was not found in the directory.",
        )
    } else if let Some(refusal) = federated_refusal(&st, &form) {
        refusal
    } else if !federated(&st, &form)
        && form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        bad(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        )
    } else if form.get("scope").map(String::as_str) != Some(SCOPE) {
        bad(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid.",
        )
    } else {
        let mut inner = st.lock().expect("fake state");
        inner.token_seq += 1;
        if form.contains_key("client_assertion") {
            inner.assertion_logins += 1;
        }
        let t = access_token(inner.token_seq, &inner.roles);
        let roles = inner.roles.clone();
        inner.tokens.insert(t.clone(), roles);
        inner.token_tenants.insert(t.clone(), tenant.clone());
        let expires_in = inner.expires_in.clone();
        drop(inner);
        reply(
            200,
            json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": t}),
        )
    };
    record(&st, call, r)
}

/// The playbook's identity (`entra::CALLER_APPID`) asks for a token for
/// the function's webhook (`scope` `api://mde-offboard/.default` or the
/// app's client id): an RS256 v1.0 access token signed with the first key
/// the tenant publishes, as Entra ID issues it to a client-credentials
/// caller, audience the resource as asked.
fn caller_token(st: &Shared, tenant: &str, form: &HashMap<String, String>) -> Response {
    use crate::entra::{AUDIENCE_ID, AUDIENCE_URI, CALLER_SECRET, TestKey, v1_claims};
    if form.get("client_secret").map(String::as_str) != Some(CALLER_SECRET) {
        return reply(
            401,
            json!({"error": "invalid_client", "error_codes": [7000215],
                "error_description": "AADSTS7000215: Invalid client secret provided."}),
        );
    }
    let scope = form.get("scope").map(String::as_str).unwrap_or("");
    let Some(audience) = [AUDIENCE_URI, AUDIENCE_ID]
        .into_iter()
        .find(|a| scope == format!("{a}/.default"))
    else {
        return reply(
            400,
            json!({"error": "invalid_resource", "error_codes": [500011],
                "error_description": format!("AADSTS500011: The resource principal named {scope} was not found in the tenant.")}),
        );
    };
    let key = st
        .lock()
        .expect("fake state")
        .signing_keys
        .as_ref()
        .and_then(|k| k.first().cloned())
        .unwrap_or_else(|| TestKey::shared().clone());
    let token = key.token(&v1_claims(tenant, audience));
    reply(
        200,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
    )
}

/// The login is by a federated client assertion: the app trusts an STS and
/// the form carries one.
fn federated(st: &Shared, form: &HashMap<String, String>) -> bool {
    st.lock().expect("fake state").federation.is_some() && form.contains_key("client_assertion")
}

/// Entra ID's checks of a client assertion against the app's federated
/// identity credential, with its error codes; `None` when it passes or the
/// login is not federated.
fn federated_refusal(st: &Shared, form: &HashMap<String, String>) -> Option<Response> {
    let federation = st.lock().expect("fake state").federation.clone();
    let (sts, credential) = federation?;
    let assertion = form.get("client_assertion")?;
    let bad = |status: u16, error: &str, code: Option<u64>, desc: &str| {
        let codes: Vec<u64> = code.into_iter().collect();
        let prefix = code.map(|c| format!("AADSTS{c}: ")).unwrap_or_default();
        Some(reply(
            status,
            json!({
                "error": error,
                "error_description": format!("{prefix}{desc} Trace ID: 0 Correlation ID: 0 Timestamp: 2026-11-25 00:00:00Z"),
                "error_codes": codes,
            }),
        ))
    };
    if form.contains_key("client_secret") {
        return bad(
            400,
            "invalid_request",
            None,
            "Only one client authentication method may be sent: client_secret and client_assertion were both present.",
        );
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return bad(
            400,
            "invalid_request",
            None,
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
        );
    }
    let Some(claims) = crate::sts::jwt_claims(assertion) else {
        return bad(401, "invalid_client", Some(50027), "Invalid JWT token.");
    };
    let Some(cred) = credential else {
        return bad(
            401,
            "invalid_client",
            Some(70021),
            "No matching federated identity record found for presented assertion.",
        );
    };
    let aud_ok = match &claims["aud"] {
        Value::String(a) => *a == cred.audience,
        Value::Array(a) => a.iter().any(|v| v.as_str() == Some(cred.audience.as_str())),
        _ => false,
    };
    if claims["iss"].as_str() != Some(cred.issuer.as_str()) {
        return bad(
            401,
            "invalid_client",
            Some(700211),
            "No matching federated identity record found for presented assertion issuer.",
        );
    }
    if claims["sub"].as_str() != Some(cred.subject.as_str()) {
        return bad(
            401,
            "invalid_client",
            Some(700213),
            "No matching federated identity record found for presented assertion subject.",
        );
    }
    if !aud_ok {
        return bad(
            401,
            "invalid_client",
            Some(700212),
            "No matching federated identity record found for presented assertion audience.",
        );
    }
    // The issuer's signature: only what the fake STS issued verifies.
    if sts.claims_of(assertion).is_none() {
        return bad(
            401,
            "invalid_client",
            Some(50013),
            "Assertion failed signature validation.",
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now) {
        return bad(
            401,
            "invalid_client",
            Some(700024),
            "Client assertion is not within its valid time range.",
        );
    }
    None
}

/// `application/x-www-form-urlencoded` fields, as the fakes read them.
pub(crate) fn form_fields(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded_parse(body)
}

/// A JWT-shaped access token as Entra ID issues it for an application:
/// the payload carries `roles`; the signature part is a placeholder, since
/// nothing on the function's side checks it.
fn access_token(seq: u64, roles: &[String]) -> String {
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "fake"});
    let payload = json!({
        "aud": "https://api.securitycenter.microsoft.com",
        "iss": format!("https://sts.windows.net/{TENANT_ID}/"),
        "appid": CLIENT_ID,
        "tid": TENANT_ID,
        "roles": roles,
        "jti": format!("fake-token-{seq}"),
    });
    format!(
        "{}.{}.fake-signature-{seq}",
        base64url(header.to_string().as_bytes()),
        base64url(payload.to_string().as_bytes())
    )
}

/// Unpadded base64url, by hand to keep the fake's dependencies to axum.
fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// `application/x-www-form-urlencoded`, decoded by hand to keep the fake's
/// dependencies to axum.
fn serde_urlencoded_parse(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `computerDnsName eq '<name>' or startswith(computerDnsName,'<prefix>')`
/// (Defender's OData, as `NAME_MATCH=host` asks): the name and the prefix.
fn parse_host_filter(filter: &str) -> Option<(String, String)> {
    let (exact, starts) = filter
        .trim()
        .split_once(" or startswith(computerDnsName,")?;
    let name = parse_name_filter(exact)?;
    let prefix = parse_quoted(starts.strip_suffix(')')?)?;
    Some((name, prefix))
}

/// Parses `computerDnsName eq '<name>'` with OData's doubled quotes.
fn parse_name_filter(filter: &str) -> Option<String> {
    parse_quoted(filter.trim().strip_prefix("computerDnsName eq ")?)
}

/// An OData string literal: quoted, `'` doubled inside.
fn parse_quoted(rest: &str) -> Option<String> {
    let inner = rest.strip_prefix('\'')?.strip_suffix('\'')?;
    // A lone quote inside is a syntax error in OData.
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

async fn list_machines(
    State(st): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = match admit(
        &st,
        new_call(Api::ListMachines, &method, &uri, &headers, b""),
    )
    .await
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    let filter = q.get("$filter").map(|f| {
        parse_host_filter(f).or_else(|| parse_name_filter(f).map(|name| (name, String::new())))
    });
    let r = match filter {
        Some(Some((name, prefix))) => {
            let inner = st.lock().expect("fake state");
            let found: Vec<Value> = inner
                .machines
                .iter()
                .filter(|m| m.seen_by(call.tenant.as_deref()))
                .filter(|m| {
                    let dns = m.computer_dns_name.to_lowercase();
                    dns == name.to_lowercase()
                        || (!prefix.is_empty() && dns.starts_with(&prefix.to_lowercase()))
                })
                .map(FakeMachine::to_json)
                .collect();
            reply(
                200,
                json!({"@odata.context": "https://api.securitycenter.microsoft.com/api/$metadata#Machines", "value": found}),
            )
        }
        Some(None) => reply(
            400,
            error_body("InvalidRequestBody", "Invalid filter clause"),
        ),
        None => {
            let inner = st.lock().expect("fake state");
            // OData's `$top`, as the health check asks for one machine.
            let top = q
                .get("$top")
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            let all: Vec<Value> = inner
                .machines
                .iter()
                .filter(|m| m.seen_by(call.tenant.as_deref()))
                .take(top)
                .map(FakeMachine::to_json)
                .collect();
            reply(200, json!({"value": all}))
        }
    };
    record(&st, call, r)
}

/// `GET /api/machines/findbytag?tag=<tag>&useStartsWithFilter=<bool>`:
/// machines carrying the tag (any case), or a tag starting with it.
async fn find_by_tag(
    State(st): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = match admit(
        &st,
        new_call(Api::ListMachines, &method, &uri, &headers, b""),
    )
    .await
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    let starts = match q.get("useStartsWithFilter").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            let r = reply(
                400,
                error_body("InvalidRequestBody", "Invalid useStartsWithFilter"),
            );
            return record(&st, call, r);
        }
    };
    let r = match q.get("tag").filter(|t| !t.is_empty()) {
        None => reply(400, error_body("InvalidRequestBody", "tag is required")),
        Some(tag) => {
            let tag = tag.to_lowercase();
            let inner = st.lock().expect("fake state");
            let found: Vec<Value> = inner
                .machines
                .iter()
                .filter(|m| {
                    m.machine_tags.iter().any(|t| {
                        let t = t.to_lowercase();
                        t == tag || (starts && t.starts_with(&tag))
                    })
                })
                .map(FakeMachine::to_json)
                .collect();
            reply(
                200,
                json!({"@odata.context": "https://api.securitycenter.microsoft.com/api/$metadata#Machines", "value": found}),
            )
        }
    };
    record(&st, call, r)
}

async fn get_machine(
    State(st): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = match admit(&st, new_call(Api::GetMachine, &method, &uri, &headers, b"")).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let found = st
        .lock()
        .expect("fake state")
        .machine(&id)
        .filter(|m| m.seen_by(call.tenant.as_deref()))
        .cloned();
    let r = match found {
        Some(m) => reply(200, m.to_json()),
        None => reply(
            404,
            error_body("ResourceNotFound", &format!("Machine {id} was not found")),
        ),
    };
    record(&st, call, r)
}

async fn offboard(
    State(st): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match admit(&st, new_call(Api::Offboard, &method, &uri, &headers, &body)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !has_role(&st, &call, "Machine.Offboard") {
        return record(
            &st,
            call,
            reply(
                403,
                error_body(
                    "Forbidden",
                    "The application does not have any of the required application permissions (Machine.Offboard) to access the resource.",
                ),
            ),
        );
    }
    let comment = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("Comment").and_then(Value::as_str).map(str::to_string));
    let Some(comment) = comment else {
        return record(
            &st,
            call,
            reply(400, error_body("InvalidRequestBody", "Comment is required")),
        );
    };
    let mut inner = st.lock().expect("fake state");
    let Some(m) = inner
        .machine(&id)
        .filter(|m| m.seen_by(call.tenant.as_deref()))
        .cloned()
    else {
        drop(inner);
        return record(
            &st,
            call,
            reply(
                404,
                error_body("ResourceNotFound", &format!("Machine {id} was not found")),
            ),
        );
    };
    // Newer Defender docs offboard macOS and Linux too; mobile platforms
    // never.
    let r = if !(m.os_platform.starts_with("Windows")
        || m.os_platform == "Linux"
        || m.os_platform == "macOS")
    {
        reply(
            400,
            error_body(
                "OsPlatformNotSupported",
                &format!("Action is not supported for platform {}", m.os_platform),
            ),
        )
    } else if inner.pending.contains_key(&m.id) {
        reply(
            400,
            error_body(
                "ActiveRequestAlreadyExists",
                "Action is already in progress",
            ),
        )
    } else {
        inner.action_seq += 1;
        let action_id = format!("5382f7ea-7557-4ab7-9782-{:012x}", inner.action_seq);
        let action = json!({
            "id": action_id,
            "type": "Offboard",
            "scope": null,
            "requestor": "Analyst@contoso.com",
            "requestorComment": comment,
            "status": "Pending",
            "machineId": m.id,
            "computerDnsName": m.computer_dns_name,
            "creationDateTimeUtc": "2026-11-25T09:00:00.0000000Z",
            "lastUpdateTimeUtc": "2026-11-25T09:00:00.0000000Z",
            "relatedFileInfo": null,
        });
        inner.pending.insert(m.id.clone(), action_id.clone());
        inner.actions.insert(action_id, action.clone());
        let status = inner.offboard_status;
        reply(status, action)
    };
    drop(inner);
    record(&st, call, r)
}

async fn get_action(
    State(st): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = match admit(&st, new_call(Api::GetAction, &method, &uri, &headers, b"")).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let found = st.lock().expect("fake state").actions.get(&id).cloned();
    let r = match found {
        Some(a) => reply(200, a),
        None => reply(
            404,
            error_body(
                "ResourceNotFound",
                &format!("Machine action {id} was not found"),
            ),
        ),
    };
    record(&st, call, r)
}

/// `POST /api/machineactions/{id}/cancel` with `{"Comment"}`: an action not
/// yet final becomes `Cancelled` and the answer is the MachineAction (200,
/// as documented). Defender documents no error code for an action already
/// final; the fake answers 400 in Defender's error shape, so the function
/// must judge by the action's status rather than by a code.
async fn cancel_action(
    State(st): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match admit(&st, new_call(Api::Cancel, &method, &uri, &headers, &body)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let comment = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("Comment").and_then(Value::as_str).map(str::to_string));
    let Some(comment) = comment else {
        return record(
            &st,
            call,
            reply(400, error_body("InvalidRequestBody", "Comment is required")),
        );
    };
    let mut inner = st.lock().expect("fake state");
    let r = match inner.actions.get(&id).cloned() {
        None => reply(
            404,
            error_body(
                "ResourceNotFound",
                &format!("Machine action {id} was not found"),
            ),
        ),
        Some(a) if !matches!(a["status"].as_str(), Some("Pending" | "InProgress")) => reply(
            400,
            error_body(
                "InvalidRequest",
                &format!(
                    "Machine action {id} is in a final state ({}) and cannot be cancelled",
                    a["status"].as_str().unwrap_or("unknown")
                ),
            ),
        ),
        Some(mut a) => {
            a["status"] = json!("Cancelled");
            a["cancellationRequestor"] = json!("Analyst@contoso.com");
            a["cancellationComment"] = json!(comment);
            a["cancellationDateTimeUtc"] = json!("2026-11-25T09:30:00.0000000Z");
            a["lastUpdateDateTimeUtc"] = json!("2026-11-25T09:30:00.0000000Z");
            if let Some(mid) = a["machineId"].as_str() {
                inner.pending.remove(mid);
            }
            inner.actions.insert(id, a.clone());
            reply(200, a)
        }
    };
    drop(inner);
    record(&st, call, r)
}

async fn fallback() -> Response {
    reply(404, error_body("NotFound", "No such endpoint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parsing_undoes_odata_quoting() {
        assert_eq!(
            parse_name_filter("computerDnsName eq 'a.b'"),
            Some("a.b".into())
        );
        assert_eq!(
            parse_name_filter("computerDnsName eq 'o''brien'"),
            Some("o'brien".into())
        );
        assert_eq!(parse_name_filter("computerDnsName eq 'o'brien'"), None);
        assert_eq!(parse_name_filter("osPlatform eq 'x'"), None);
    }

    #[test]
    fn base64url_matches_the_rfc_vectors() {
        for (raw, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(raw.as_bytes()), want);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn form_decoding() {
        let f = serde_urlencoded_parse(b"a=b%2Fc&scope=https%3A%2F%2Fx%2F.default&s=a+b");
        assert_eq!(f["a"], "b/c");
        assert_eq!(f["scope"], "https://x/.default");
        assert_eq!(f["s"], "a b");
    }
}
