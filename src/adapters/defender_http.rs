//! Adapter: the Defender for Endpoint API over HTTPS, with retries, the
//! rate limiters and the token; it never follows a redirect.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::adapters::entra::{AccessToken, TokenProvider};
use crate::adapters::read_capped;
use crate::domain::defender::*;
use crate::domain::health::{self, ApiProbe, Step};
use crate::domain::limits::{
    ApiKind, Backoff, DEFAULT_TENANT, Deadline, LATENESS, Limiters, SharedLimits, Slot,
    parse_retry_after,
};
use crate::domain::model::{DeviceName, MachineId};
use crate::domain::secret::{AppSecret, CredentialError, SecretCache};
use crate::ops::metrics;

#[derive(Deserialize)]
struct MachineList {
    #[serde(default)]
    value: Vec<Machine>,
}

/// Adapter: the real API over HTTPS.
pub struct HttpDefender {
    http: reqwest::Client,
    api_url: String,
    secrets: Arc<SecretCache>,
    tokens: Arc<TokenProvider>,
    limiters: Arc<Limiters>,
    /// With the ledger: Defender's limits counted across every instance,
    /// after this instance's own limiter has let a call through.
    shared: Option<Arc<dyn SharedLimits>>,
    backoff: Backoff,
    /// Opened by the warm-up (`claim_warm_up`): a call that comes while
    /// it is opening waits for that handshake and reuses the connection,
    /// rather than paying for a second handshake of its own.
    api_gate: Gate,
    /// The same for the login host and the first token request.
    login_gate: Gate,
    /// The tenant whose credentials this adapter uses (the secret's
    /// `tenants`); `None`: the secret's top-level ones.
    tenant: Option<String>,
}

/// One host's connection, opened once for a warm-up. Once the warm-up is
/// claimed (before its task has run), the first of the warm-up and the
/// calls to reach the host opens it; the others wait for that and reuse it.
#[derive(Default)]
struct Gate {
    claimed: AtomicBool,
    opened: OnceCell<()>,
}

impl Gate {
    /// Returns once the host is open, when a warm-up is claimed.
    async fn pass(&self, open: impl Future<Output = ()>) {
        if self.claimed.load(Ordering::Acquire) {
            self.opened.get_or_init(|| open).await;
        }
    }
}

impl HttpDefender {
    pub fn new(
        http: reqwest::Client,
        api_url: String,
        secrets: Arc<SecretCache>,
        tokens: Arc<TokenProvider>,
        limiters: Arc<Limiters>,
    ) -> Self {
        Self {
            http,
            api_url,
            secrets,
            tokens,
            limiters,
            shared: None,
            backoff: Backoff::default(),
            api_gate: Gate::default(),
            login_gate: Gate::default(),
            tenant: None,
        }
    }

    /// This adapter acts in `tenant` (its credentials from the secret's
    /// `tenants`); it keeps its own token and limits.
    pub fn for_tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.to_string());
        self
    }

    /// The secret with this adapter's tenant's credentials.
    fn credentials(&self, secret: &AppSecret) -> Result<AppSecret, CredentialError> {
        secret.for_tenant(self.tenant.as_deref())
    }

    /// Counts Defender's limits across instances in `shared` too.
    pub fn with_shared_limits(mut self, shared: Arc<dyn SharedLimits>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// A slot from the shared limits, waited for; none before the deadline
    /// is `Throttled`, so the call is never sent to collect a 429.
    /// `Ok(false)`: the table could not be reached, and this instance's own
    /// limiter counts instead (dry runs and reads keep working; an offboard
    /// never gets here, since its delivery's claim fails first).
    async fn shared_slot(&self, kind: ApiKind, deadline: &Deadline) -> Result<bool, DefenderError> {
        let Some(shared) = &self.shared else {
            return Ok(true);
        };
        let pace = self.limiters.shared_pace();
        // A lookup is followed by the offboard it is for: it waits at most
        // half the time left, so the offboard has the other half rather
        // than the lookup's slot going to waste.
        // A slot missed by more than an interval (the instance was not
        // scheduled in time) is let go and another taken: a call that goes
        // out late bunches with the calls after it.
        for _ in 0..3 {
            let max_wait = match kind {
                ApiKind::ListMachines | ApiKind::GetMachine => deadline.usable() / 2,
                _ => deadline.usable(),
            };
            let asked_at = SystemTime::now();
            let slot = shared
                .reserve(
                    self.tenant.as_deref().unwrap_or(DEFAULT_TENANT),
                    kind,
                    pace,
                    max_wait,
                    asked_at,
                )
                .await;
            match slot {
                Ok(Slot::In(wait)) => {
                    // The slot is a point in time: the table's round trip
                    // is already part of the wait.
                    let at = asked_at + wait;
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    if !left.is_zero() {
                        tokio::time::sleep(left).await;
                    }
                    let late = SystemTime::now().duration_since(at).unwrap_or_default();
                    if late <= LATENESS / 2 {
                        return Ok(true);
                    }
                }
                Ok(Slot::Full { retry_after }) => {
                    return Err(DefenderError::Throttled { retry_after });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the shared Defender limits could not be read; this instance counts its own calls");
                    return Ok(false);
                }
            }
        }
        Err(DefenderError::Throttled {
            retry_after: pace.interval.max(Duration::from_secs(1)),
        })
    }

    async fn token(&self, deadline: &Deadline) -> Result<AccessToken, DefenderError> {
        let secret = self.credentials(&*self.secrets.get().await?)?;
        self.ready(&secret, deadline).await?;
        Ok(self.tokens.get(&secret, deadline).await?)
    }

    /// One logical call: rate limit, token, send, and the retry rules of
    /// the contract (401 once with a new token, 429 after Retry-After when
    /// it fits, 5xx and network errors with backoff, never past the
    /// deadline). With a comment it is a POST of `{"Comment": comment}`
    /// (the body of both of Defender's actions here), else a GET. Returns
    /// the body of a 2xx.
    async fn call(
        &self,
        kind: ApiKind,
        path_and_query: &str,
        comment: Option<&str>,
        deadline: &Deadline,
    ) -> Result<bytes::Bytes, DefenderError> {
        let url = format!("{}{}", self.api_url, path_and_query);
        let method = comment.map_or(Method::GET, |_| Method::POST);
        self.api_gate.pass(self.open(&self.api_url)).await;
        let mut refreshed = false;
        let mut retries = 0u32;
        let mut throttles = 0u32;
        let limiter = self.limiters.for_api(kind);
        loop {
            // With the shared limits the table counts every call; this
            // instance's limiter then only holds calls back after a 429.
            let gate = match self.shared {
                None => limiter.acquire(deadline).await,
                Some(_) => limiter.hold(deadline).await,
            };
            gate.map_err(|t| DefenderError::Throttled {
                retry_after: t.retry_after,
            })?;
            if !self.shared_slot(kind, deadline).await? {
                limiter
                    .acquire(deadline)
                    .await
                    .map_err(|t| DefenderError::Throttled {
                        retry_after: t.retry_after,
                    })?;
            }
            let token = self.token(deadline).await?;
            let timeout = deadline.call_timeout().ok_or(DefenderError::Deadline)?;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token.expose())
                .timeout(timeout);
            if let Some(comment) = comment {
                req = req.json(&json!({ "Comment": comment }));
            }
            let started = tokio::time::Instant::now();
            let result = req.send().await;
            metrics::defender_latency(started.elapsed());
            let transient = match result {
                Err(e) => {
                    metrics::count(metrics::names::DEFENDER_ERRORS);
                    let (error_kind, what) = match e.is_timeout() {
                        true => ("timeout", "timed out"),
                        false => ("network", "network error"),
                    };
                    tracing::warn!(method = %method, path = path_and_query, error_kind, "Defender call failed");
                    what.to_string()
                }
                Ok(resp) => {
                    let status = resp.status();
                    tracing::debug!(method = %method, path = path_and_query, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "Defender call");
                    if status.is_success() {
                        return read_capped(resp, MAX_ANSWER_BYTES)
                            .await
                            .map_err(DefenderError::Unavailable);
                    }
                    match status {
                        StatusCode::UNAUTHORIZED if !refreshed => {
                            // A token revoked or expired early: one refresh.
                            self.tokens.invalidate(&token).await;
                            refreshed = true;
                            continue;
                        }
                        StatusCode::UNAUTHORIZED => return Err(DefenderError::Unauthorized),
                        StatusCode::FORBIDDEN => {
                            // A permission or consent gone: the operator's
                            // to fix, whichever device saw it first.
                            metrics::count(metrics::names::CREDENTIAL_FAILURE);
                            return Err(DefenderError::Forbidden);
                        }
                        StatusCode::NOT_FOUND => return Err(DefenderError::NotFound),
                        StatusCode::TOO_MANY_REQUESTS => {
                            let retry_after = throttle_wait(
                                resp.headers()
                                    .get(reqwest::header::RETRY_AFTER)
                                    .map(|v| v.as_bytes()),
                                SystemTime::now(),
                            );
                            tracing::warn!(method = %method, path = path_and_query, retry_after_s = retry_after.as_secs_f64(), "Defender throttled");
                            metrics::count(metrics::names::DEFENDER_THROTTLED);
                            // Everyone in this instance waits, not just us.
                            limiter.block_for(retry_after).await;
                            throttles += 1;
                            if throttles > 3 || !deadline.fits(retry_after) {
                                return Err(DefenderError::Throttled { retry_after });
                            }
                            continue;
                        }
                        s if s.is_server_error() => {
                            metrics::count(metrics::names::DEFENDER_ERRORS);
                            format!("HTTP {}", s.as_u16())
                        }
                        s if s.is_redirection() => {
                            return Err(DefenderError::Redirected(s.as_u16()));
                        }
                        s => {
                            let bytes = read_capped(resp, MAX_ANSWER_BYTES)
                                .await
                                .unwrap_or_default();
                            return Err(DefenderError::Refused {
                                status: s.as_u16(),
                                code: refusal_code(&bytes).as_str().into(),
                            });
                        }
                    }
                }
            };
            match self.backoff.delay(retries, fastrand::f64()) {
                Some(wait) if deadline.fits(wait) => {
                    retries += 1;
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(DefenderError::Unavailable(transient)),
            }
        }
    }

    /// `call`, its answer read as `T`.
    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        kind: ApiKind,
        path_and_query: String,
        comment: Option<&str>,
        deadline: &Deadline,
    ) -> Result<T, DefenderError> {
        read_json(&self.call(kind, &path_and_query, comment, deadline).await?)
    }

    /// Opens a TLS connection so the first real call does not pay for the
    /// handshake: HEAD on a base URL, any answer will do, none is rate
    /// limited, and the connection is left in the pool.
    async fn open(&self, url: &str) {
        let _ = self
            .http
            .head(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        // hyper hands an HTTP/1 connection back to the pool from a task of
        // its own once the exchange is over; a few scheduler rounds let it
        // run before the caller opens the gate, so the call waiting on it
        // finds the connection idle rather than racing a second one open.
        for _ in 0..POOL_RETURN_ROUNDS {
            tokio::task::yield_now().await;
        }
    }
}

/// Scheduler rounds after a warm-up `HEAD` (see `open`); each costs
/// microseconds and waits on nothing.
const POOL_RETURN_ROUNDS: usize = 3;

/// Used when a 429 carries no usable `Retry-After`.
pub const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(5);

/// The most of an answer read from Defender: a machine lookup by name and a
/// machine action are a few KiB; a list of every machine is never asked for.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The wait a 429 asks for, from the raw `Retry-After` bytes: anything
/// unreadable is the default, anything huge at most an hour.
pub fn throttle_wait(retry_after: Option<&[u8]>, now: SystemTime) -> Duration {
    retry_after
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| parse_retry_after(v, now))
        .unwrap_or(DEFAULT_THROTTLE_WAIT)
}

/// Defender's `error.code` from a refusal's body. It ends up in answers and
/// logs, so only a short identifier is kept; anything else is `Unknown`.
pub fn refusal_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|b| Some(b.pointer("/error/code")?.as_str()?.to_string()))
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        })
        .unwrap_or_else(|| "Unknown".into())
}

/// A 2xx body as the type expected; anything else is a transient failure.
pub fn read_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DefenderError> {
    serde_json::from_slice(bytes).map_err(|_| {
        DefenderError::Unavailable("Defender's answer is not the expected JSON".into())
    })
}

/// The list answer of `GET /api/machines?$filter=...`.
pub fn read_machine_list(bytes: &[u8]) -> Result<Vec<Machine>, DefenderError> {
    read_json::<MachineList>(bytes).map(|l| l.value)
}

/// What a query value percent-encodes: all but RFC 3986's unreserved
/// characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a query value.
fn encode_query(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// A string as an OData literal: quoted, with `'` doubled.
pub fn odata_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The `$filter` query for a device name, OData-quoted and URL-encoded.
pub fn name_filter_query(name: &DeviceName) -> String {
    let filter = format!("computerDnsName eq {}", odata_quote(name.as_str()));
    format!("/api/machines?$filter={}", encode_query(&filter))
}

/// `computerDnsName eq '<name>' or startswith(computerDnsName,'<name>.')`:
/// `startswith` is in Defender's OData examples for machines.
pub fn host_filter_query(name: &DeviceName) -> String {
    let exact = odata_quote(name.as_str());
    let prefix = odata_quote(&format!("{}.", name.as_str()));
    let filter = format!("computerDnsName eq {exact} or startswith(computerDnsName,{prefix})");
    format!("/api/machines?$filter={}", encode_query(&filter))
}

/// `GET /api/machines/findbytag?tag=<tag>&useStartsWithFilter=false`.
pub fn tag_query(tag: &str) -> String {
    format!(
        "/api/machines/findbytag?tag={}&useStartsWithFilter=false",
        encode_query(tag)
    )
}

impl Defender for HttpDefender {
    fn find_by_tag<'a>(
        &'a self,
        tag: &'a str,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<Vec<Machine>, DefenderError>> {
        Box::pin(async move {
            // Counted with the machine lookups: findbytag has its own
            // published limit of the same size, so this never exceeds it.
            let path = tag_query(tag);
            let answer = self.call(ApiKind::ListMachines, &path, None, deadline);
            read_machine_list(&answer.await?)
        })
    }

    fn find_by_host<'a>(
        &'a self,
        name: &'a DeviceName,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<Vec<Machine>, DefenderError>> {
        Box::pin(async move {
            let path = host_filter_query(name);
            let answer = self.call(ApiKind::ListMachines, &path, None, deadline);
            read_machine_list(&answer.await?)
        })
    }

    fn find_by_name<'a>(
        &'a self,
        name: &'a DeviceName,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<Vec<Machine>, DefenderError>> {
        Box::pin(async move {
            let path = name_filter_query(name);
            let answer = self.call(ApiKind::ListMachines, &path, None, deadline);
            read_machine_list(&answer.await?)
        })
    }

    fn get_machine<'a>(
        &'a self,
        id: &'a MachineId,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<Machine, DefenderError>> {
        let path = format!("/api/machines/{id}");
        Box::pin(self.call_json(ApiKind::GetMachine, path, None, deadline))
    }

    fn offboard<'a>(
        &'a self,
        id: &'a MachineId,
        comment: &'a str,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>> {
        let path = format!("/api/machines/{id}/offboard");
        Box::pin(self.call_json(ApiKind::Offboard, path, Some(comment), deadline))
    }

    fn get_action<'a>(
        &'a self,
        action_id: &'a str,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>> {
        let path = format!("/api/machineactions/{}", encode_query(action_id));
        Box::pin(self.call_json(ApiKind::GetAction, path, None, deadline))
    }

    fn cancel_action<'a>(
        &'a self,
        action_id: &'a str,
        comment: &'a str,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>> {
        // Cancel has its own published limit (100/min, 1,500/h).
        let path = format!("/api/machineactions/{}/cancel", encode_query(action_id));
        Box::pin(self.call_json(ApiKind::CancelAction, path, Some(comment), deadline))
    }

    fn ready<'a>(
        &'a self,
        secret: &'a AppSecret,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<(), CredentialError>> {
        Box::pin(async move {
            // The first token request goes through the login host's gate,
            // as a call's does: while the warm-up opens that connection, it
            // waits and reuses it instead of opening a second one.
            self.login_gate
                .pass(self.open(self.tokens.login_url()))
                .await;
            let secret = self.credentials(secret)?;
            self.tokens.get(&secret, deadline).await.map(|_| ())
        })
    }

    fn missing_permissions(&self) -> Vec<&'static str> {
        self.tokens.missing()
    }

    fn probe<'a>(
        &'a self,
        secret: &'a AppSecret,
        dry_run: bool,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, ApiProbe> {
        Box::pin(async move {
            let fresh = match self.credentials(secret) {
                Ok(secret) => self.tokens.fresh(&secret, deadline).await,
                Err(e) => Err(e),
            };
            let token = match fresh {
                Ok(t) => t,
                Err(e) => {
                    return ApiProbe {
                        token: Step::Failed(e.to_string()),
                        permissions: None,
                        defender_api: None,
                    };
                }
            };
            let missing = crate::adapters::entra::missing_permissions(token.expose());
            ApiProbe {
                token: Step::Passed("Entra ID issued a token".into()),
                permissions: Some(health::permissions(
                    missing.as_deref(),
                    crate::adapters::entra::OFFBOARD_PERMISSION,
                    dry_run,
                )),
                defender_api: Some(self.list_one(&token, deadline).await),
            }
        })
    }
}

/// The health check's API call: one try, with the token just fetched, so
/// that what it reports is what Defender answers now.
impl HttpDefender {
    async fn list_one(&self, token: &AccessToken, deadline: &Deadline) -> Step {
        const PATH: &str = "/api/machines?$top=1";
        if let Err(t) = self
            .limiters
            .for_api(ApiKind::ListMachines)
            .acquire(deadline)
            .await
        {
            return Step::Failed(format!(
                "not called: this instance's limit for listing machines is spent for {}s",
                t.retry_after.as_secs()
            ));
        }
        let Some(timeout) = deadline.call_timeout() else {
            return Step::Failed("not called: no time left before the deadline".into());
        };
        let sent = self
            .http
            .get(format!("{}{PATH}", self.api_url))
            .bearer_auth(token.expose())
            .timeout(timeout)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Step::Failed(format!("GET {PATH} timed out")),
            Err(_) => return Step::Failed(format!("GET {PATH}: could not connect")),
        };
        let status = resp.status().as_u16();
        let body = read_capped(resp, MAX_ANSWER_BYTES)
            .await
            .unwrap_or_default();
        health::api_answer(PATH, status, &body, refusal_code)
    }
}

/// The warm-up (`init`): what the first call would otherwise pay for.
impl HttpDefender {
    /// Marks the warm-up's connections as being opened, before its task
    /// has run: a call that comes first opens them as the warm-up would
    /// (and the warm-up then finds them open), one handshake per host
    /// either way. Only for an instance whose warm-up is sure to run.
    pub fn claim_warm_up(&self) {
        self.api_gate.claimed.store(true, Ordering::Release);
        self.login_gate.claimed.store(true, Ordering::Release);
    }

    /// Opens the TLS connection to the API host. Best effort.
    pub async fn warm_up(&self) {
        self.api_gate.claimed.store(true, Ordering::Release);
        self.api_gate.pass(self.open(&self.api_url)).await
    }

    /// Opens the connection the first token request would pay for (to the
    /// login host), so that request, once the secret is in, finds it idle.
    /// Best effort.
    pub async fn warm_up_login(&self) {
        self.login_gate.claimed.store(true, Ordering::Release);
        self.login_gate
            .pass(self.open(self.tokens.login_url()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_filter_is_quoted_escaped_and_encoded() {
        let n = DeviceName::parse("o'brien-pc.contoso.com").unwrap();
        assert_eq!(
            name_filter_query(&n),
            "/api/machines?$filter=computerDnsName%20eq%20%27o%27%27brien-pc.contoso.com%27"
        );
    }

    #[test]
    fn odata_literal_doubles_single_quotes() {
        let n = DeviceName::parse("o'brien's-pc").unwrap();
        assert_eq!(odata_quote(n.as_str()), "'o''brien''s-pc'");
        assert_eq!(odata_quote("plain"), "'plain'");
        assert_eq!(odata_quote("''"), "''''''");
    }

    #[test]
    fn machine_action_reads_both_update_spellings_and_ignores_unknown_fields() {
        let a: MachineAction = serde_json::from_str(
            r#"{"id":"a1","type":"Offboard","status":"Pending","lastUpdateTimeUtc":"2026-01-01T00:00:00Z","newField":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(a.last_update(), Some("2026-01-01T00:00:00Z"));
        let b: MachineAction =
            serde_json::from_str(r#"{"id":"a2","lastUpdateDateTimeUtc":"2026-01-02T00:00:00Z"}"#)
                .unwrap();
        assert_eq!(b.last_update(), Some("2026-01-02T00:00:00Z"));
        let both: MachineAction = serde_json::from_str(
            r#"{"id":"a3","lastUpdateTimeUtc":"2026-01-01T00:00:00Z","lastUpdateDateTimeUtc":"2026-01-03T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(both.last_update(), Some("2026-01-03T00:00:00Z"));
    }

    #[test]
    fn machine_tolerates_null_tags_and_unknown_fields() {
        let m: Machine = serde_json::from_str(
            r#"{"id":"x","computerDnsName":"a","osPlatform":"Windows11","machineTags":null,"riskScore":"High"}"#,
        )
        .unwrap();
        assert!(m.machine_tags.is_empty());
    }

    #[test]
    fn only_curable_errors_ask_for_a_retry() {
        assert!(
            DefenderError::Throttled {
                retry_after: Duration::from_secs(3)
            }
            .retry_after()
            .is_some()
        );
        assert!(
            DefenderError::Unavailable("x".into())
                .retry_after()
                .is_some()
        );
        assert!(DefenderError::Deadline.retry_after().is_some());
        assert!(DefenderError::Forbidden.retry_after().is_none());
        assert!(DefenderError::NotFound.retry_after().is_none());
        assert!(
            DefenderError::Refused {
                status: 400,
                code: "BadRequest".into()
            }
            .retry_after()
            .is_none()
        );
    }
    #[test]
    fn a_429_wait_is_read_safely_from_any_header_bytes() {
        let now = SystemTime::now();
        let hour = crate::domain::limits::MAX_UPSTREAM_WAIT;
        for (v, want) in [
            (Some(&b"1e20"[..]), hour),
            (Some(b"18446744073709551615"), hour),
            (Some(b"-3"), DEFAULT_THROTTLE_WAIT),
            (Some(b"NaN"), DEFAULT_THROTTLE_WAIT),
            (Some(b"inf"), DEFAULT_THROTTLE_WAIT),
            (Some(b"\xff\xfe"), DEFAULT_THROTTLE_WAIT),
            (Some(b"2.5"), Duration::from_millis(2500)),
            (Some(b"7"), Duration::from_secs(7)),
            (None, DEFAULT_THROTTLE_WAIT),
        ] {
            assert_eq!(throttle_wait(v, now), want, "{v:?}");
        }
    }

    #[test]
    fn refusal_codes_are_short_identifiers_or_unknown() {
        assert_eq!(
            refusal_code(br#"{"error":{"code":"ActiveRequestAlreadyExists","message":"m"}}"#),
            "ActiveRequestAlreadyExists"
        );
        for body in [
            &br#"{"error":{"code":"line\nbreak"}}"#[..],
            br#"{"error":{"code":""}}"#,
            br#"{"error":{"code":7}}"#,
            br#"{"error":"x"}"#,
            b"<html>",
            b"",
        ] {
            assert_eq!(
                refusal_code(body),
                "Unknown",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!(r#"{{"error":{{"code":"{}"}}}}"#, "A".repeat(65));
        assert_eq!(refusal_code(long.as_bytes()), "Unknown");
    }

    #[test]
    fn refusal_codes_are_known_by_name_and_others_kept_as_written() {
        assert_eq!(
            RefusalCode::from("ActiveRequestAlreadyExists"),
            RefusalCode::ActiveRequestAlreadyExists
        );
        assert_eq!(
            RefusalCode::from("osPlatformNotSupported"),
            RefusalCode::Other("osPlatformNotSupported".into())
        );
        assert_eq!(
            RefusalCode::OsPlatformNotSupported.to_string(),
            "OsPlatformNotSupported"
        );
        assert_eq!(RefusalCode::Other("X.Y".into()).to_string(), "X.Y");
    }

    #[test]
    fn a_redirect_is_neither_retried_nor_a_refusal_code() {
        let e = DefenderError::Redirected(307);
        assert!(e.retry_after().is_none());
        assert!(e.to_string().contains("307") && e.to_string().contains("never followed"));
    }
}
