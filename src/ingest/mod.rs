//! Ingest: every way a request arrives ends here. The HTTP routes
//! (`http`), EventBridge events and direct invocations (`direct`) and the
//! queue worker (`worker`) each bring their source, authenticate it their
//! own way, and then share one path: replay check → map → validate → the
//! domain (`App::execute`) → one answer, remembered for replays.
//!
//! Everything `App` needs is built once per instance (by the warm-up, just
//! after init; see `init::LazyApp`) and shared by warm invocations.

pub mod auth;
pub mod direct;
pub mod http;
pub mod input;
pub mod replay;
pub mod sources;
pub mod tracking;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use lambda_http::http::{HeaderMap, StatusCode};
use lambda_http::{Body, Response};
use serde_json::{Value, json};

use crate::adapters::defender_http::HttpDefender;
use crate::adapters::entra::TokenProvider;
use crate::config::Config;
use crate::domain::defender::Defender;
use crate::domain::federation::{IdentityTokenCache, IdentityTokenSource};
use crate::domain::ledger::{
    ANSWER_KEPT_FOR, ActionStatus, Begin, DeviceRecord, IdempotencyKey, Ledger, LedgerError,
    RecordedOutcome,
};
use crate::domain::limits::{Deadline, Limiters, retry_after_secs};
use crate::domain::offboard::{Budget, DeviceResult, Offboarder, Status};
use crate::domain::queue::{self, Queue, QueueKeys, QueueWriter, QueuedDevice};
use crate::domain::secret::{
    AppSecret, CredentialError, CredentialMode, SecretCache, SecretSource,
};
use crate::error::ApiError;
use crate::ingest::input::{Mode, OffboardRequest};
use crate::ingest::sources::{Mapped, SourceDef};
use crate::ops::audit::audit;
use crate::ops::metrics;
use crate::support::time::unix_now;
use replay::{DeliveryKey, ReplayCache};

/// The built-in source of the generic route and the action route.
pub(crate) const GENERIC: &str = auth::GENERIC_KEY;

pub struct App {
    pub(crate) config: Config,
    pub(crate) secrets: Arc<SecretCache>,
    defender: Arc<dyn Defender>,
    pub(crate) offboarder: Offboarder,
    queue: Option<QueueWriter>,
    pub(crate) ledger: Option<Arc<dyn Ledger>>,
    replay: ReplayCache,
    pub(crate) cold: AtomicBool,
    pub(crate) tracker: tracking::Tracker,
}

/// Who sent a request, for the audit trail.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub(crate) source: String,
    pub(crate) source_ip: Option<String>,
    pub(crate) webhook_id: Option<String>,
    /// Set when the ledger could not be reached for this delivery: then
    /// only a dry run may go on (fail closed).
    pub(crate) ledger_down: Arc<AtomicBool>,
    /// The request's `callback_url`, validated: where the final outcome
    /// of each tracked device goes.
    pub(crate) callback_url: Option<String>,
    /// The ticket to write the final outcome back to (a source's `notify`).
    pub(crate) notify: Option<crate::domain::notify::NotifyTarget>,
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
        // Federated: STS through the SDK, its client made on first use from
        // the environment (`AWS_ENDPOINT_URL_STS` included).
        let identity = (config.credentials == CredentialMode::Federated).then(|| {
            Arc::new(crate::adapters::sts::StsIdentityTokens::from_env())
                as Arc<dyn IdentityTokenSource>
        });
        Self::wired(config, secret_source, http, limiters, identity)
    }

    /// As `new`, with the web identity tokens of federated mode from
    /// `identity` (an STS client pointed where a test says).
    pub fn with_identity_tokens(
        config: Config,
        secret_source: Arc<dyn SecretSource>,
        http: reqwest::Client,
        identity: Arc<dyn IdentityTokenSource>,
    ) -> Self {
        let limiters = Limiters::new(config.rate_per_minute);
        Self::wired(config, secret_source, http, limiters, Some(identity))
    }

    fn wired(
        config: Config,
        secret_source: Arc<dyn SecretSource>,
        http: reqwest::Client,
        limiters: Limiters,
        identity: Option<Arc<dyn IdentityTokenSource>>,
    ) -> Self {
        let secrets = Arc::new(
            SecretCache::new(secret_source, config.secret_ttl).for_mode(config.credentials),
        );
        let mut tokens =
            TokenProvider::new(http.clone(), config.login_url.clone(), config.scope.clone());
        if config.credentials == CredentialMode::Federated
            && let Some(identity) = identity
        {
            tokens = tokens.federated(Arc::new(IdentityTokenCache::new(identity)));
        }
        let tokens = Arc::new(tokens);
        let http_for_callbacks = http.clone();
        let defender = Arc::new(HttpDefender::new(
            http,
            config.api_url.clone(),
            secrets.clone(),
            tokens,
            Arc::new(limiters),
        ));
        Self::assemble(config, secrets, defender, http_for_callbacks)
    }

    /// The app over any Defender and secret source: the domain and the
    /// ingest path tested in memory, with no network.
    pub fn from_ports(
        config: Config,
        secret_source: Arc<dyn SecretSource>,
        defender: Arc<dyn Defender>,
    ) -> Self {
        let secrets = Arc::new(
            SecretCache::new(secret_source, config.secret_ttl).for_mode(config.credentials),
        );
        Self::assemble(config, secrets, defender, Self::http_client())
    }

    fn assemble(
        config: Config,
        secrets: Arc<SecretCache>,
        defender: Arc<dyn Defender>,
        http: reqwest::Client,
    ) -> Self {
        let tracker = tracking::Tracker::new(config.rate_per_minute, http);
        let offboarder = Offboarder::new(defender.clone(), config.protected_tags.clone())
            .with_platforms(config.supported_platforms);
        Self {
            config,
            secrets,
            defender,
            offboarder,
            queue: None,
            ledger: None,
            replay: ReplayCache::default(),
            cold: AtomicBool::new(true),
            tracker,
        }
    }

    /// Enables `"mode": "queue"` with this queue.
    pub fn with_queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Some(QueueWriter::new(queue));
        self
    }

    /// Enables the durable ledger: idempotency across instances, device
    /// records, and the hourly budget when `MAX_OFFBOARDS_PER_HOUR` is set.
    pub fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        let budget = self.config.max_offboards_per_hour.map(|per_hour| Budget {
            ledger: ledger.clone(),
            per_hour,
        });
        self.offboarder =
            Offboarder::new(self.defender.clone(), self.config.protected_tags.clone())
                .with_platforms(self.config.supported_platforms)
                .with_budget(budget);
        self.ledger = Some(ledger);
        self
    }

    /// The HTTP client every adapter shares (`adapters::http_client`).
    pub fn http_client() -> reqwest::Client {
        crate::adapters::http_client(Duration::from_secs(3))
    }

    /// Claims the warm-up's connections now (see `Defender::claim_warm_up`);
    /// `warm_up` must follow.
    pub fn claim_warm_up(&self) {
        self.defender.claim_warm_up();
    }

    /// Fetches the secret and a token and opens the TLS connections to the
    /// API and login hosts, all at once, so the first invocation waits for
    /// no handshake that could have been made before it arrived. Failures
    /// are left for the first request to meet and report.
    pub async fn warm_up(&self) {
        let deadline = Deadline::after(Duration::from_secs(4));
        let creds = async {
            // The login host's handshake runs beside the secret fetch, and
            // the token request waits for it rather than racing it with a
            // second connection.
            let (secret, ()) = tokio::join!(self.secrets.get(), self.defender.warm_up_login());
            match secret {
                Ok(secret) => {
                    if let Err(e) = self.defender.ready(&secret, &deadline).await {
                        tracing::warn!(error = %e, "warm-up: no token yet");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "warm-up: no secret yet"),
            }
        };
        let api = self.defender.warm_up();
        // The source presets are parsed once the calls above are on their
        // way (they are CPU only, and this is one thread).
        let presets = async {
            tokio::task::yield_now().await;
            self.config.sources.prepare();
        };
        let _ = tokio::time::timeout(Duration::from_secs(4), async {
            tokio::join!(creds, api, presets)
        })
        .await;
    }

    /// Answers a delivery seen before (from memory, else from the ledger,
    /// which any instance shares); claims a new one in the ledger while it
    /// runs, so a duplicate elsewhere is 409 `in_progress`; remembers final
    /// answers. A 503 (or any refusal) is not kept: a retry runs again.
    pub(crate) async fn once(
        &self,
        caller: &Caller,
        key: &DeliveryKey,
        deadline: &Deadline,
        work: impl Future<Output = Result<Response<Body>, ApiError>>,
    ) -> Result<Response<Body>, ApiError> {
        if let Some(a) = self.replay.get(key) {
            tracing::info!(source = %caller.source, delivery_key = %key, webhook_id = caller.webhook_id.as_deref().unwrap_or(""), "replayed delivery answered from memory; Defender not called");
            return Ok(replayed(a));
        }
        let claim = match &self.ledger {
            None => None,
            Some(ledger) => {
                let id = IdempotencyKey::from(key.digest());
                match ledger
                    .begin(&id, SystemTime::now(), deadline.wall_clock())
                    .await
                {
                    Ok(Begin::Started) => Some((ledger, id)),
                    Ok(Begin::InProgress { retry_after }) => {
                        tracing::info!(source = %caller.source, delivery_key = %key, "delivery already in progress elsewhere");
                        return Err(ApiError::InProgress(retry_after));
                    }
                    Ok(Begin::Done(answer)) => {
                        tracing::info!(source = %caller.source, delivery_key = %key, "replayed delivery answered from the ledger; Defender not called");
                        self.replay.put(key, answer.clone());
                        return Ok(replayed(answer));
                    }
                    Err(e) => {
                        tracing::warn!(source = %caller.source, error = %e, "ledger unreachable: only a dry run may go on");
                        caller.ledger_down.store(true, Ordering::Relaxed);
                        None
                    }
                }
            }
        };
        let result = work.await;
        let kept = match &result {
            Ok(resp) => match (resp.status().as_u16(), resp.body()) {
                (status @ (200 | 202), Body::Text(text)) => Some(replay::Answer {
                    status,
                    body: text.clone(),
                }),
                _ => None,
            },
            Err(_) => None,
        };
        if let Some((ledger, id)) = claim {
            let done = match &kept {
                Some(answer) => {
                    ledger
                        .complete(&id, answer, SystemTime::now() + ANSWER_KEPT_FOR)
                        .await
                }
                None => ledger.abandon(&id).await,
            };
            if let Err(e) = done {
                // The claim expires at the deadline by itself.
                tracing::warn!(source = %caller.source, error = %e, "the ledger did not take the delivery's end");
            }
        }
        if let Some(answer) = kept {
            self.replay.put(key, answer);
        }
        result
    }

    /// Writes the outcomes that started (or found) an offboard action, so
    /// `GET /v1/tickets/{ticket}` can list them. A write that fails is
    /// logged: the offboard itself has happened and is audited.
    pub(crate) async fn record_outcomes(
        &self,
        results: &[DeviceResult],
        ticket: &str,
        source: &str,
    ) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let now = SystemTime::now();
        let records: Vec<DeviceRecord> = results
            .iter()
            .filter_map(|r| {
                let status = match r.status {
                    Status::OffboardRequested => RecordedOutcome::OffboardRequested,
                    Status::AlreadyPending => RecordedOutcome::AlreadyPending,
                    _ => return None,
                };
                Some(DeviceRecord {
                    ticket: ticket.to_string(),
                    machine_id: r.machine_id.as_ref()?.as_str().to_string(),
                    device: r.device.clone(),
                    status,
                    action_id: r.action_id.clone().unwrap_or_default(),
                    action_status: ActionStatus::Pending,
                    requested_at: now,
                    updated_at: now,
                    source: source.to_string(),
                })
            })
            .collect();
        let writes = records.iter().map(|rec| ledger.record_device(rec));
        for (rec, outcome) in records
            .iter()
            .zip(futures_util::future::join_all(writes).await)
        {
            if let Err(e) = outcome {
                tracing::warn!(ticket, machine_id = %rec.machine_id, error = %e, "device record not written");
            }
        }
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

    /// The shared pipeline every route ends in.
    pub(crate) async fn execute(
        &self,
        request: OffboardRequest,
        secret: &AppSecret,
        caller: &Caller,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let dry_run = self.config.dry_run || request.dry_run;
        if !dry_run && caller.ledger_down.load(Ordering::Relaxed) {
            return Err(ApiError::Ledger(LedgerError::Unavailable(
                "the delivery could not be claimed".into(),
            )));
        }
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
        self.defender.ready(secret, deadline).await?;
        // So is a missing admin consent: one clear refusal, not one 403
        // per device. A dry run needs no offboard permission and goes on.
        let missing = self.defender.missing_permissions();
        if !dry_run && !missing.is_empty() {
            return Err(ApiError::MissingPermission(missing));
        }
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
            if r.status == Status::BudgetExceeded {
                metrics::count(metrics::names::BUDGET_EXCEEDED);
            }
        }
        self.record_outcomes(&results, request.ticket.as_str(), &caller.source)
            .await;
        self.track_requested(
            &results,
            request.ticket.as_str(),
            &caller.source,
            caller.callback_url.as_deref(),
            caller.notify.as_ref(),
            secret,
        )
        .await;
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
                    callback_url: caller.callback_url.clone(),
                    notify: caller.notify.clone(),
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

/// A stored answer, sent again and marked as such.
fn replayed(a: replay::Answer) -> Response<Body> {
    metrics::count(metrics::names::REPLAYED);
    let mut resp = json_text_response(
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
        a.body,
    );
    resp.headers_mut().insert(
        "x-mde-replay",
        lambda_http::http::HeaderValue::from_static("true"),
    );
    resp
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

#[cfg(test)]
mod intake_tests {
    use super::*;
    use crate::domain::secret::StaticSecret;
    use crate::ingest::sources::Sources;

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
