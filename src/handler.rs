//! The handler: routes a request, authenticates it, turns it into an
//! `OffboardRequest`, runs the domain and writes the answer. Everything it
//! needs is built once at init and shared by warm invocations.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_http::http::{HeaderMap, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::auth::{Admitted, AuthDef, Presented};
use crate::config::Config;
use crate::credentials::{AppSecret, CredentialError, SecretCache, SecretSource, TokenProvider};
use crate::defender::{Defender, DefenderError, HttpDefender};
use crate::error::ApiError;
use crate::input::{self, Mode, OffboardRequest};
use crate::limits::{DEFAULT_BUDGET, Deadline, Limiters, retry_after_secs};
use crate::metrics;
use crate::offboard::{DeviceResult, Offboarder, Status};
use crate::queue::{self, Queue, QueueKeys, QueueWriter, QueuedDevice};
use crate::replay::{self, DeliveryKey, ReplayCache};
use crate::sources::{Mapped, SourceDef};

/// Bodies above this are refused before any work (413).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The built-in source of the generic route and the action route.
pub(crate) const GENERIC: &str = crate::auth::GENERIC_KEY;

pub struct App {
    pub(crate) config: Config,
    pub(crate) secrets: Arc<SecretCache>,
    pub(crate) tokens: Arc<TokenProvider>,
    defender: Arc<dyn Defender>,
    http_defender: Option<Arc<HttpDefender>>,
    pub(crate) offboarder: Offboarder,
    queue: Option<QueueWriter>,
    replay: ReplayCache,
    pub(crate) cold: AtomicBool,
}

/// Who sent a request, for the audit trail.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub(crate) source: String,
    pub(crate) source_ip: Option<String>,
    pub(crate) webhook_id: Option<String>,
}

impl App {
    /// Wires the real adapters: Secrets Manager (or another secret source),
    /// Entra ID and the Defender API over one shared HTTP client.
    pub fn new(
        config: Config,
        secret_source: Arc<dyn SecretSource>,
        http: reqwest::Client,
    ) -> Self {
        let limiters = Limiters::new(config.rate_per_minute);
        Self::with_limiters(config, secret_source, http, limiters)
    }

    /// As `new`, with the rate limiters given (simulations scale time).
    pub fn with_limiters(
        config: Config,
        secret_source: Arc<dyn SecretSource>,
        http: reqwest::Client,
        limiters: Limiters,
    ) -> Self {
        let secrets = Arc::new(SecretCache::new(secret_source, config.secret_ttl));
        let tokens = Arc::new(TokenProvider::new(
            http.clone(),
            config.login_url.clone(),
            config.scope.clone(),
        ));
        let defender = Arc::new(HttpDefender::new(
            http,
            config.api_url.clone(),
            secrets.clone(),
            tokens.clone(),
            Arc::new(limiters),
        ));
        let offboarder = Offboarder::new(defender.clone(), config.protected_tags.clone());
        Self {
            config,
            secrets,
            tokens,
            defender: defender.clone(),
            http_defender: Some(defender),
            offboarder,
            queue: None,
            replay: ReplayCache::default(),
            cold: AtomicBool::new(true),
        }
    }

    /// Enables `"mode": "queue"` with this queue.
    pub fn with_queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Some(QueueWriter::new(queue));
        self
    }

    /// The HTTP client every adapter shares: rustls, pooled connections kept
    /// warm between invocations. It never follows a redirect: a 307 from the
    /// login host would re-send the form holding the client secret, and one
    /// from the API the bearer token, to wherever `Location` points.
    pub fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mde-offboard/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(240))
            .tcp_nodelay(true)
            .build()
            .expect("the TLS backend initialises")
    }

    /// Fetches the secret and a token and opens the TLS connection to the
    /// API host, so the first invocation pays for none of them twice.
    /// Failures are left for the first request to meet and report.
    pub async fn warm_up(&self) {
        let deadline = Deadline::after(Duration::from_secs(4));
        let creds = async {
            match self.secrets.get().await {
                Ok(secret) => {
                    if let Err(e) = self.tokens.get(&secret, &deadline).await {
                        tracing::warn!(error = %e, "warm-up: no token yet");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "warm-up: no secret yet"),
            }
        };
        let api = async {
            if let Some(d) = &self.http_defender {
                d.warm_up().await;
            }
        };
        let _ =
            tokio::time::timeout(Duration::from_secs(4), async { tokio::join!(creds, api) }).await;
    }

    /// One invocation: never fails, every error becomes a JSON answer.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let ctx = req.lambda_context_ref();
        let request_id = ctx.map(|c| c.request_id.clone()).unwrap_or_default();
        let trace_id = ctx.and_then(|c| c.xray_trace_id.clone());
        let deadline = ctx
            .filter(|c| c.deadline > 0)
            .map(|c| Deadline::from_epoch_millis(c.deadline))
            .unwrap_or_else(|| Deadline::after(DEFAULT_BUDGET));
        let cold_start = self.cold.swap(false, Ordering::Relaxed);
        let span = tracing::info_span!(
            "invocation",
            function_request_id = %request_id,
            cold_start,
            xray_trace_id = trace_id.as_deref().unwrap_or(""),
        );
        let path = route_path(&req);
        let source = match path.strip_prefix("/v1/webhooks/") {
            Some(name) if self.config.sources.get(name).is_some() => name.to_string(),
            _ => GENERIC.to_string(),
        };
        let work = async move {
            let method = req.method().clone();
            match self.route(&req, &path, &deadline).await {
                Ok(resp) => {
                    tracing::info!(http_method = %method, path = %path, status = resp.status().as_u16(), "request handled");
                    resp
                }
                Err(e) => {
                    if matches!(e, ApiError::Unauthorized(_)) {
                        metrics::count(metrics::names::AUTH_REJECTED);
                    }
                    let level_warn = e.status().is_server_error();
                    if level_warn {
                        tracing::warn!(http_method = %method, path = %path, status = e.status().as_u16(), code = e.code(), reason = %e, "request refused");
                    } else {
                        tracing::info!(http_method = %method, path = %path, status = e.status().as_u16(), code = e.code(), reason = %e, "request refused");
                    }
                    e.into_response()
                }
            }
        }
        .instrument(span);
        let (resp, collected) = metrics::scope(work).await;
        collected.emit(&self.config.metrics_namespace, &source, &request_id);
        resp
    }

    async fn route(
        &self,
        req: &Request,
        path: &str,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let allow = |allowed: &'static str| -> Result<(), ApiError> {
            if req.method().as_str() == allowed {
                Ok(())
            } else {
                Err(ApiError::MethodNotAllowed {
                    method: req.method().to_string(),
                    path: path.to_string(),
                    allowed,
                })
            }
        };
        match segments.as_slice() {
            ["v1", "offboard"] => {
                allow("POST")?;
                self.offboard_generic(req, deadline).await
            }
            ["v1", "webhooks", source] if !source.is_empty() => {
                allow("POST")?;
                self.webhook(req, source, deadline).await
            }
            ["v1", "actions", action_id] if !action_id.is_empty() => {
                allow("GET")?;
                self.action_status(req, action_id, deadline).await
            }
            _ => Err(ApiError::NoRoute(path.to_string())),
        }
    }

    async fn offboard_generic(
        &self,
        req: &Request,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let body = body_bytes(req)?;
        let (secret, admitted) = self.authenticate(req, body, self.generic_auth()).await?;
        let caller = Caller {
            source: GENERIC.into(),
            source_ip: source_ip(req),
            webhook_id: admitted.delivery_id,
        };
        // Standard Webhooks signs its webhook-id.
        let key = delivery_key(GENERIC, caller.webhook_id.as_deref(), body);
        self.once(&caller, &key, async {
            let value = input::strict_json(body).map_err(|e| match e {
                input::JsonError::Syntax(m) => ApiError::NotJson(m),
                input::JsonError::Field(f) => ApiError::Field(f),
            })?;
            let body = input::parse_generic_body(&value, &self.config.callback_hosts)?;
            self.execute(body.request, &secret, &caller, deadline).await
        })
        .await
    }

    /// Answers a delivery seen before from memory; remembers final answers.
    pub(crate) async fn once(
        &self,
        caller: &Caller,
        key: &DeliveryKey,
        work: impl Future<Output = Result<Response<Body>, ApiError>>,
    ) -> Result<Response<Body>, ApiError> {
        if let Some(a) = self.replay.get(key) {
            tracing::info!(source = %caller.source, delivery_key = %key, webhook_id = caller.webhook_id.as_deref().unwrap_or(""), "replayed delivery answered from memory; Defender not called");
            metrics::count(metrics::names::REPLAYED);
            let mut resp = json_text_response(
                StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
                a.body,
            );
            resp.headers_mut().insert(
                "x-mde-replay",
                lambda_http::http::HeaderValue::from_static("true"),
            );
            return Ok(resp);
        }
        let resp = work.await?;
        if let (200 | 202, Body::Text(text)) = (resp.status().as_u16(), resp.body()) {
            self.replay.put(
                key,
                replay::Answer {
                    status: resp.status().as_u16(),
                    body: text.clone(),
                },
            );
        }
        Ok(resp)
    }

    /// `POST /v1/webhooks/{source}`: the source's own authentication and
    /// mapping, then the same pipeline as the generic route. Once the
    /// sender is authenticated, nothing about its content is answered 4xx:
    /// the sender cannot fix it, and some (PagerDuty) disable a
    /// subscription after a few 4xx, silencing the offboards that follow.
    async fn webhook(
        &self,
        req: &Request,
        name: &str,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let def = self
            .config
            .sources
            .get(name)
            .ok_or_else(|| ApiError::UnknownSource(name.to_string()))?;
        let body = body_bytes(req)?;
        let (secret, admitted) = self.authenticate(req, body, &def.auth).await?;
        // Only an id the signature covers keys replay; an unsigned one
        // still names the delivery in the audit line.
        let signed_id = admitted.delivery_id.clone();
        let webhook_id = admitted.delivery_id.or_else(|| {
            def.id_header
                .as_deref()
                .and_then(|h| header(req.headers(), h))
                .map(str::to_string)
        });
        // A sender whose body is not JSON is misconfigured, not sending
        // content it could not fix: that stays a 400.
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::NotJson(e.to_string()))?;
        if let Some(f) = &def.freshness {
            f.check(&value, SystemTime::now())?;
        }
        let caller = Caller {
            source: name.to_string(),
            source_ip: source_ip(req),
            webhook_id,
        };
        let key = delivery_key(name, signed_id.as_deref(), body);
        self.once(&caller, &key, async {
            match self.admit(def, &value, &caller) {
                Intake::Act(request) => self.execute(request, &secret, &caller, deadline).await,
                Intake::Ignored(reason) => Ok(json_response(
                    StatusCode::ACCEPTED,
                    &json!({"status": "ignored", "reason": reason}),
                )),
            }
        })
        .await
    }

    /// What a webhook delivery becomes: a request to run, or a reason to
    /// ignore it, counted and logged here so every ignored path is seen.
    pub(crate) fn admit(&self, def: &SourceDef, doc: &Value, caller: &Caller) -> Intake {
        let webhook_id = caller.webhook_id.as_deref().unwrap_or("");
        let unmapped = |reason: String| {
            metrics::count(metrics::names::UNMAPPED);
            tracing::warn!(source = %def.name, webhook_id, reason = %reason, "delivery unmapped; nothing called");
            Intake::Ignored(reason)
        };
        let mut request = match def.map(doc) {
            Ok(Mapped::Act(r)) => r,
            Ok(Mapped::Ignored { reason }) => {
                metrics::count(metrics::names::IGNORED);
                tracing::info!(source = %def.name, webhook_id, reason = %reason, "event ignored");
                return Intake::Ignored(reason);
            }
            Err(e) => return unmapped(format!("unmapped: {e}")),
        };
        let given = request.devices.len();
        if given > self.config.max_devices {
            if self.queue.is_none() {
                return unmapped(format!(
                    "unmapped: {given} devices are more than MAX_DEVICES ({}) allows in one request, and no queue is configured (QUEUE_URL)",
                    self.config.max_devices
                ));
            }
            if given > self.config.max_queued_devices {
                return unmapped(format!(
                    "unmapped: {given} devices are more than MAX_QUEUED_DEVICES ({}) allows in one request",
                    self.config.max_queued_devices
                ));
            }
            request.mode = Mode::Queue;
        }
        Intake::Act(request)
    }

    /// The auth of the built-in source `generic`: the generic route, the
    /// action routes and the ticket route.
    fn generic_auth(&self) -> &AuthDef {
        self.config.sources.generic_auth()
    }

    /// Checks a request as `auth` says. A request without the headers its
    /// schemes read is refused before the secret is fetched, so unsigned
    /// floods cost no Secrets Manager call.
    async fn authenticate(
        &self,
        req: &Request,
        body: &[u8],
        auth: &AuthDef,
    ) -> Result<(Arc<AppSecret>, Admitted), ApiError> {
        let arn = caller_arn(req);
        let presented = Presented {
            headers: req.headers(),
            body,
            now: unix_now(),
            caller_arn: arn.as_deref(),
        };
        auth.precheck(&presented)?;
        let secret = self.secrets.get().await?;
        let admitted = auth.verify(&presented, &secret).inspect_err(|e| {
            if e.is_config_error() {
                tracing::warn!(reason = %e, "webhook secret configuration error");
            }
        })?;
        Ok((secret, admitted))
    }

    /// The shared pipeline every route ends in.
    pub(crate) async fn execute(
        &self,
        request: OffboardRequest,
        secret: &AppSecret,
        caller: &Caller,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let dry_run = self.config.dry_run || request.dry_run;
        if request.mode == Mode::Queue {
            return self
                .enqueue(request, secret, caller, dry_run, deadline)
                .await;
        }
        if request.devices.len() > self.config.max_devices {
            return Err(ApiError::TooManyDevices {
                given: request.devices.len(),
                max: self.config.max_devices,
                hint: " (use \"mode\": \"queue\" for more)",
            });
        }
        // A token problem is the operator's, not a device's: surface it
        // once for the whole request.
        self.tokens.get(secret, deadline).await?;
        let results = self
            .offboarder
            .run(
                &request.devices,
                &request.defender_comment(),
                dry_run,
                deadline,
            )
            .await;
        for r in &results {
            audit(r, &request, caller, dry_run);
            metrics::count(r.status.as_str());
        }
        let retry_after = results
            .iter()
            .filter(|r| r.status == Status::Failed)
            .filter_map(|r| r.retry_after)
            .max();
        let body = json!({
            "ticket": request.ticket.as_str(),
            "dry_run": dry_run,
            "results": results,
        });
        let mut resp = Response::builder()
            .status(if retry_after.is_some() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            })
            .header("content-type", "application/json");
        if let Some(ra) = retry_after {
            resp = resp.header("retry-after", retry_after_secs(ra).to_string());
        }
        Ok(resp
            .body(Body::Text(body.to_string()))
            .expect("static headers are valid"))
    }

    /// `"mode": "queue"`: one sealed message per distinct device for the
    /// worker, 202 with what was queued. Messages this instance put on the
    /// queue lately are not sent again, so a retry of a partly queued
    /// request adds only what is missing.
    async fn enqueue(
        &self,
        request: OffboardRequest,
        secret: &AppSecret,
        caller: &Caller,
        dry_run: bool,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let writer = self.queue.as_ref().ok_or(ApiError::QueueNotConfigured)?;
        let mut seen = std::collections::HashSet::new();
        let devices: Vec<&input::Device> = request
            .devices
            .iter()
            .filter(|d| seen.insert(d.target.key()))
            .collect();
        if devices.len() > self.config.max_queued_devices {
            return Err(ApiError::TooManyDevices {
                given: devices.len(),
                max: self.config.max_queued_devices,
                hint: " in queue mode",
            });
        }
        let keys = QueueKeys::from_secret(secret)
            .map_err(|e| CredentialError::BadSecret(e.to_string()))?;
        let enqueued_at = unix_now();
        let outgoing: Vec<(queue::WorkHash, String)> = devices
            .iter()
            .map(|d| {
                let item = QueuedDevice {
                    source: caller.source.clone(),
                    ticket: request.ticket.as_str().to_string(),
                    comment: request.comment.as_str().to_string(),
                    device: d.given.clone(),
                    dry_run,
                    webhook_id: caller.webhook_id.clone(),
                    enqueued_at,
                };
                (item.work_hash(&d.target.key()), item)
            })
            .filter(|(hash, _)| !writer.recent.contains(hash))
            .map(|(hash, item)| (hash, keys.seal(&item)))
            .collect();
        let already = devices.len() - outgoing.len();
        let sent = writer.send(&outgoing, deadline).await;
        metrics::add(
            metrics::names::QUEUED,
            sent.as_ref().map_or_else(|(n, _)| *n, |n| *n) as f64,
        );
        if let Err((n, shortfall)) = sent {
            tracing::warn!(
                source = %caller.source,
                ticket = request.ticket.as_str(),
                queued = n + already,
                of = devices.len(),
                reason = %shortfall,
                "not every device was queued; a retry queues the rest"
            );
            return Err(ApiError::QueueUnavailable(shortfall));
        }
        tracing::info!(
            target: "audit",
            event = "devices_queued",
            source = %caller.source,
            ticket = request.ticket.as_str(),
            count = devices.len(),
            already_queued = already,
            webhook_id = caller.webhook_id.as_deref().unwrap_or(""),
            "devices queued"
        );
        let queued: Vec<Value> = devices.iter().map(|d| json!({"device": d.given})).collect();
        Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({
                "ticket": request.ticket.as_str(),
                "dry_run": dry_run,
                "mode": "queue",
                "queued": queued,
            }),
        ))
    }

    async fn action_status(
        &self,
        req: &Request,
        action_id: &str,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let body = body_bytes(req)?;
        let (secret, _) = self.authenticate(req, body, self.generic_auth()).await?;
        // MachineAction ids are GUIDs; anything else cannot exist.
        if action_id.len() > 64
            || !action_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ApiError::ActionNotFound(action_id.to_string()));
        }
        self.tokens.get(&secret, deadline).await?;
        match self.defender.get_action(action_id, deadline).await {
            Ok(a) => Ok(json_response(
                StatusCode::OK,
                &json!({
                    "action_id": a.id,
                    "machine_id": a.machine_id,
                    "type": a.action_type,
                    "status": a.status,
                    "last_update": a.last_update(),
                }),
            )),
            Err(DefenderError::NotFound) => Err(ApiError::ActionNotFound(action_id.to_string())),
            Err(e) => Err(ApiError::Defender(e.to_string(), e.retry_after())),
        }
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    json_text_response(status, v.to_string())
}

fn json_text_response(status: StatusCode, text: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(text))
        .expect("static headers are valid")
}

/// One audit line per device outcome, the same keys every time.
fn audit(r: &DeviceResult, request: &OffboardRequest, caller: &Caller, dry_run: bool) {
    audit_line(r, request.ticket.as_str(), caller, dry_run);
}

pub(crate) fn audit_line(r: &DeviceResult, ticket: &str, caller: &Caller, dry_run: bool) {
    tracing::info!(
        target: "audit",
        event = "device_outcome",
        source = %caller.source,
        ticket,
        device = %r.device,
        machine_id = r.machine_id.as_ref().map(|m| m.as_str()).unwrap_or(""),
        computer_dns_name = r.computer_dns_name.as_deref().unwrap_or(""),
        status = r.status.as_str(),
        action_id = r.action_id.as_deref().unwrap_or(""),
        detail = r.detail.as_deref().unwrap_or(""),
        dry_run,
        source_ip = caller.source_ip.as_deref().unwrap_or(""),
        webhook_id = caller.webhook_id.as_deref().unwrap_or(""),
        "device outcome"
    );
}

/// A webhook delivery, once its content is judged.
pub(crate) enum Intake {
    Act(OffboardRequest),
    Ignored(String),
}

/// The replay key of a delivery (contract, "Replays"): the sender's id
/// where the signature covers it, else the body's hash.
fn delivery_key(source: &str, signed_id: Option<&str>, body: &[u8]) -> DeliveryKey {
    match signed_id.filter(|id| !id.is_empty()) {
        Some(id) => DeliveryKey::signed_id(source, id),
        None => DeliveryKey::body_hash(source, body),
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn body_bytes(req: &Request) -> Result<&[u8], ApiError> {
    let body: &[u8] = req.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::TooLarge);
    }
    Ok(body)
}

/// The path without an API Gateway stage prefix: REST APIs and named HTTP
/// API stages put `/{stage}` in front of the route.
fn route_path(req: &Request) -> String {
    let path = req.uri().path();
    let stage = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(c)) => c.stage.clone(),
        Some(RequestContext::ApiGatewayV2(c)) => c.stage.clone(),
        _ => None,
    };
    if let Some(stage) = stage.filter(|s| !s.is_empty() && s != "$default") {
        let prefix = format!("/{stage}/");
        if path.starts_with(&prefix) && !path.starts_with("/v1/") {
            return path[prefix.len() - 1..].to_string();
        }
    }
    path.to_string()
}

/// The IAM caller's ARN, where AWS authorised the call: an HTTP API or a
/// Function URL with `AWS_IAM` (`requestContext.authorizer.iam`), or a
/// REST API with IAM authorisation (`requestContext.identity.userArn`).
fn caller_arn(req: &Request) -> Option<String> {
    match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => c
            .authorizer
            .as_ref()
            .and_then(|a| a.iam.as_ref())
            .and_then(|iam| iam.user_arn.clone()),
        Some(RequestContext::ApiGatewayV1(c)) => c.identity.user_arn.clone(),
        _ => None,
    }
    .filter(|arn| !arn.is_empty())
}

/// The caller's address for the audit line. API Gateway (HTTP API, REST
/// API) and Function URLs put the connection's address in the request
/// context; any header is the caller's own writing there. An ALB has no
/// context address, so it is the last `X-Forwarded-For` entry: the one the
/// ALB appended, after whatever the caller sent.
fn source_ip(req: &Request) -> Option<String> {
    let ip = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => c.http.source_ip.clone(),
        Some(RequestContext::ApiGatewayV1(c)) => c.identity.source_ip.clone(),
        Some(RequestContext::Alb(_)) => req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::to_string),
        _ => None,
    }?;
    // Only an address is written to the audit log, never free text.
    ip.trim()
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: Value) -> Request {
        lambda_http::request::from_str(&v.to_string()).expect("a valid event")
    }

    const SPOOF: &str = "198.51.100.66, 192.0.2.99";

    #[test]
    fn http_api_source_ip_is_the_context_never_a_header() {
        let req = event(json!({
            "version": "2.0", "routeKey": "$default", "rawPath": "/v1/offboard",
            "rawQueryString": "",
            "headers": {"x-forwarded-for": SPOOF, "x-real-ip": "198.51.100.67"},
            "requestContext": {"accountId": "1", "apiId": "a", "domainName": "d",
                "domainPrefix": "d", "requestId": "r", "routeKey": "$default",
                "stage": "$default", "time": "t", "timeEpoch": 0,
                "http": {"method": "POST", "path": "/v1/offboard", "protocol": "HTTP/1.1",
                    "sourceIp": "203.0.113.10", "userAgent": "u"}},
            "body": "{}", "isBase64Encoded": false
        }));
        assert_eq!(source_ip(&req).as_deref(), Some("203.0.113.10"));
    }

    #[test]
    fn rest_api_source_ip_is_the_identity_never_a_header() {
        let req = event(json!({
            "resource": "/v1/offboard", "path": "/v1/offboard", "httpMethod": "POST",
            "headers": {"X-Forwarded-For": SPOOF},
            "multiValueHeaders": {"X-Forwarded-For": [SPOOF]},
            "queryStringParameters": null, "multiValueQueryStringParameters": null,
            "pathParameters": null, "stageVariables": null,
            "requestContext": {"accountId": "1", "apiId": "a", "stage": "prod",
                "requestId": "r", "resourcePath": "/v1/offboard", "httpMethod": "POST",
                "path": "/prod/v1/offboard",
                "identity": {"sourceIp": "203.0.113.11", "userAgent": "u"}},
            "body": "{}", "isBase64Encoded": false
        }));
        assert_eq!(source_ip(&req).as_deref(), Some("203.0.113.11"));
    }

    fn alb(headers: Value, multi: Option<Value>) -> Request {
        let mut v = json!({
            "requestContext": {"elb": {"targetGroupArn":
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/mde/abc"}},
            "httpMethod": "POST", "path": "/v1/offboard", "queryStringParameters": {},
            "headers": headers, "body": "{}", "isBase64Encoded": false
        });
        if let Some(m) = multi {
            v.as_object_mut().unwrap().remove("headers");
            v["multiValueHeaders"] = m;
            v["multiValueQueryStringParameters"] = json!({});
            v.as_object_mut().unwrap().remove("queryStringParameters");
        }
        event(v)
    }

    #[test]
    fn alb_source_ip_is_the_last_forwarded_for_entry() {
        // The caller wrote the first two entries; the ALB appended the last.
        let req = alb(
            json!({"x-forwarded-for": "198.51.100.66, 192.0.2.99, 203.0.113.12"}),
            None,
        );
        assert_eq!(source_ip(&req).as_deref(), Some("203.0.113.12"));
        let req = alb(json!({"x-forwarded-for": "203.0.113.13"}), None);
        assert_eq!(source_ip(&req).as_deref(), Some("203.0.113.13"));
        let req = alb(
            json!({}),
            Some(json!({"x-forwarded-for": ["198.51.100.66", "2001:db8::7"]})),
        );
        assert_eq!(source_ip(&req).as_deref(), Some("2001:db8::7"));
        // Not an address: nothing rather than text from the request.
        let req = alb(
            json!({"x-forwarded-for": "203.0.113.1, evil<script>"}),
            None,
        );
        assert_eq!(source_ip(&req), None);
        assert_eq!(source_ip(&alb(json!({}), None)), None);
    }

    #[test]
    fn without_a_request_context_no_header_is_believed() {
        let mut req = Request::new(Body::Empty);
        req.headers_mut()
            .insert("x-forwarded-for", "198.51.100.66".parse().unwrap());
        assert_eq!(source_ip(&req), None);
    }
}

#[cfg(test)]
mod intake_tests {
    use super::*;
    use crate::credentials::StaticSecret;
    use crate::sources::Sources;

    fn app() -> App {
        let env = [
            ("SECRET_ID", "unused"),
            ("MDE_API_URL", "http://127.0.0.1:9"),
            ("MDE_LOGIN_URL", "http://127.0.0.1:9"),
        ];
        let config = Config::from_lookup(|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        App::new(
            config,
            Arc::new(StaticSecret("{}".into())),
            reqwest::Client::new(),
        )
    }

    /// `Unmapped` is the only signal an operator gets of a mapping that
    /// no longer matches what the sender sends, since the answer is 202.
    #[tokio::test]
    async fn unmapped_content_is_counted_apart_from_ignored_events() {
        let app = app();
        let sources = Sources::default();
        let jira = sources.get("jira").unwrap();
        let caller = Caller::default();
        let done = json!({"webhookEvent": "jira:issue_updated",
            "changelog": {"items": [{"field": "status"}]},
            "issue": {"key": "IT-1", "fields": {"status": {"statusCategory": {"key": "done"}}}}});
        let mut no_device = done.clone();
        no_device["issue"]["fields"]["customfield_10071"] = json!(null);
        let (admitted, m) = metrics::scope(async { app.admit(jira, &no_device, &caller) }).await;
        let Intake::Ignored(reason) = admitted else {
            panic!("acted")
        };
        assert!(
            reason.contains("/issue/fields/customfield_10071"),
            "{reason}"
        );
        assert_eq!(
            (
                m.get(metrics::names::UNMAPPED),
                m.get(metrics::names::IGNORED)
            ),
            (1.0, 0.0)
        );

        let mut in_progress = done.clone();
        in_progress["issue"]["fields"]["status"]["statusCategory"]["key"] = json!("indeterminate");
        let (_, m) = metrics::scope(async { app.admit(jira, &in_progress, &caller) }).await;
        assert_eq!(
            (
                m.get(metrics::names::UNMAPPED),
                m.get(metrics::names::IGNORED)
            ),
            (0.0, 1.0)
        );

        let mut too_many = done;
        let names: Vec<String> = (0..26).map(|i| format!("pc-{i}")).collect();
        too_many["issue"]["fields"]["customfield_10071"] = json!(names);
        let (admitted, m) = metrics::scope(async { app.admit(jira, &too_many, &caller) }).await;
        let Intake::Ignored(reason) = admitted else {
            panic!("acted without a queue")
        };
        assert!(reason.contains("MAX_DEVICES (25)"), "{reason}");
        assert_eq!(m.get(metrics::names::UNMAPPED), 1.0);
    }
}
