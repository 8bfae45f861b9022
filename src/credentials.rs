//! Credentials: the Azure AD application's secret from Secrets Manager, and
//! the client-credentials token made with it. Both are cached across warm
//! invocations; neither is ever printed (their `Debug` is redacted).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::limits::{Deadline, MAX_UPSTREAM_WAIT, later, parse_seconds, seconds_f64};

/// The secret's JSON, validated. Webhook secrets are kept per source key,
/// each a list so a rotation can accept the new and the old one.
#[derive(Clone, PartialEq, Eq)]
pub struct AppSecret {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub webhook_secrets: BTreeMap<String, Vec<String>>,
    /// The queue's MAC key when the secret names none (`queue::derive_key`);
    /// kept instead of the SecretString itself.
    pub(crate) derived_queue_key: [u8; 32],
}

impl fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSecret")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field(
                "webhook_secrets",
                &self.webhook_secrets.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl AppSecret {
    /// Parses the SecretString. Errors name the key at fault and never
    /// quote a value.
    pub fn parse(text: &str) -> Result<Self, CredentialError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|_| CredentialError::BadSecret("the secret is not a JSON object".into()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| CredentialError::BadSecret("the secret is not a JSON object".into()))?;
        let req = |k: &str| -> Result<String, CredentialError> {
            match obj.get(k) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                Some(Value::String(_)) => Err(CredentialError::BadSecret(format!(
                    "the secret's key '{k}' is empty"
                ))),
                Some(_) => Err(CredentialError::BadSecret(format!(
                    "the secret's key '{k}' must be a string"
                ))),
                None => Err(CredentialError::BadSecret(format!(
                    "the secret has no key '{k}'"
                ))),
            }
        };
        let tenant_id = req("tenant_id")?;
        let client_id = req("client_id")?;
        let client_secret = req("client_secret")?;
        let mut webhook_secrets = BTreeMap::new();
        match obj.get("webhook_secrets") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (name, val) in m {
                    let bad = || {
                        CredentialError::BadSecret(format!(
                            "the secret's key 'webhook_secrets.{name}' must be a string or a list of strings"
                        ))
                    };
                    let list: Vec<String> = match val {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(items) => items
                            .iter()
                            .map(|i| i.as_str().map(str::to_string).ok_or_else(bad))
                            .collect::<Result<_, _>>()?,
                        _ => return Err(bad()),
                    };
                    // An empty secret would let an empty bearer token in.
                    let list: Vec<String> = list.into_iter().filter(|s| !s.is_empty()).collect();
                    webhook_secrets.insert(name.clone(), list);
                }
            }
            Some(_) => {
                return Err(CredentialError::BadSecret(
                    "the secret's key 'webhook_secrets' must be an object".into(),
                ));
            }
        }
        Ok(Self {
            tenant_id,
            client_id,
            client_secret,
            webhook_secrets,
            derived_queue_key: crate::queue::derive_key(text),
        })
    }

    /// The secrets for one source key; empty when the key is absent, which
    /// every verifier treats as "refuse".
    pub fn webhook_secrets(&self, key: &str) -> &[String] {
        self.webhook_secrets
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CredentialError {
    /// The operator stored a secret the function cannot use.
    #[error("{0}")]
    BadSecret(String),
    /// Secrets Manager answered with an error a retry will not cure.
    #[error("Secrets Manager refused the secret: {0}")]
    SecretRefused(String),
    /// Secrets Manager is unreachable, throttling or failing.
    #[error("Secrets Manager is unavailable: {0}")]
    SecretUnavailable(String),
    /// Entra ID refused the client credentials.
    #[error("the login endpoint refused the client credentials: {0}")]
    BadCredentials(String),
    /// The login endpoint is unreachable or failing.
    #[error("the login endpoint is unavailable: {0}")]
    LoginUnavailable(String),
    /// The login endpoint answered a redirect. It is never followed: the
    /// form holds the client secret, and a redirect would re-send it to
    /// wherever `Location` points.
    #[error(
        "the login endpoint answered HTTP {0}, a redirect, which is never followed; check MDE_LOGIN_URL"
    )]
    LoginRedirected(u16),
}

impl CredentialError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::SecretUnavailable(_) | Self::LoginUnavailable(_))
    }
}

/// Port: where the secret's text comes from.
pub trait SecretSource: Send + Sync {
    fn fetch(&self) -> BoxFuture<'_, Result<String, CredentialError>>;
}

/// Adapter: AWS Secrets Manager through the SDK.
pub struct SecretsManagerSource {
    /// Built on first use: loading the SDK's configuration takes longer
    /// than the rest of init together, and runs beside the runtime loop.
    client: tokio::sync::OnceCell<aws_sdk_secretsmanager::Client>,
    secret_id: String,
}

impl SecretsManagerSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String) -> Self {
        Self {
            client: tokio::sync::OnceCell::new_with(Some(client)),
            secret_id,
        }
    }

    /// The client comes from the environment (region, credentials,
    /// `AWS_ENDPOINT_URL_SECRETS_MANAGER`) when first needed.
    pub fn from_env(secret_id: String) -> Self {
        Self {
            client: tokio::sync::OnceCell::new(),
            secret_id,
        }
    }
}

impl SecretSource for SecretsManagerSource {
    fn fetch(&self) -> BoxFuture<'_, Result<String, CredentialError>> {
        use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
        Box::pin(async move {
            let client = self
                .client
                .get_or_init(|| async {
                    crate::runtime::secrets_client(aws_sdk_secretsmanager::config::Builder::from(
                        crate::runtime::sdk_config().await,
                    ))
                })
                .await;
            let out = client
                .get_secret_value()
                .secret_id(&self.secret_id)
                .send()
                .await
                .map_err(|e| {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    let code = e.code().unwrap_or("unknown").to_string();
                    match &e {
                        SdkError::ServiceError(_)
                            if status.is_some_and(|s| s < 500) && code != "ThrottlingException" =>
                        {
                            CredentialError::SecretRefused(code)
                        }
                        SdkError::ServiceError(_) => CredentialError::SecretUnavailable(code),
                        SdkError::TimeoutError(_) => {
                            CredentialError::SecretUnavailable("timed out".into())
                        }
                        _ => {
                            CredentialError::SecretUnavailable("could not reach the service".into())
                        }
                    }
                })?;
            out.secret_string.ok_or_else(|| {
                CredentialError::BadSecret(
                    "the secret has no SecretString (binary secrets are not supported)".into(),
                )
            })
        })
    }
}

/// Adapter: a fixed secret text (the local run; tests).
pub struct StaticSecret(pub String);

impl SecretSource for StaticSecret {
    fn fetch(&self) -> BoxFuture<'_, Result<String, CredentialError>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// How long a failed fetch is answered from memory. Short, so a fixed
/// secret or a recovered Secrets Manager is seen within seconds; long
/// enough that a flood of requests while it fails is a trickle of
/// GetSecretValue calls, not a flood of them.
pub const SECRET_FAILURE_TTL: Duration = Duration::from_secs(3);

/// The last fetch's outcome and when it was made.
enum Fetched {
    Secret(Instant, Arc<AppSecret>),
    Failed(Instant, CredentialError),
}

/// Caches the parsed secret for a max age, like Powertools' parameters
/// utility, and a failure for `SECRET_FAILURE_TTL`. One fetch at a time:
/// concurrent callers wait for it instead of each calling Secrets Manager.
pub struct SecretCache {
    source: Arc<dyn SecretSource>,
    ttl: Duration,
    cached: Mutex<Option<Fetched>>,
}

impl SecretCache {
    pub fn new(source: Arc<dyn SecretSource>, ttl: Duration) -> Self {
        Self {
            source,
            ttl,
            cached: Mutex::new(None),
        }
    }

    pub async fn get(&self) -> Result<Arc<AppSecret>, CredentialError> {
        let mut slot = self.cached.lock().await;
        match slot.as_ref() {
            Some(Fetched::Secret(at, secret)) if at.elapsed() < self.ttl => {
                return Ok(secret.clone());
            }
            Some(Fetched::Failed(at, e)) if at.elapsed() < SECRET_FAILURE_TTL => {
                return Err(e.clone());
            }
            _ => {}
        }
        crate::metrics::count(crate::metrics::names::SECRET_FETCHES);
        let fetched = match self.source.fetch().await {
            Ok(text) => AppSecret::parse(&text).map(Arc::new),
            Err(e) => Err(e),
        };
        match fetched {
            Ok(secret) => {
                tracing::debug!(tenant_id = %secret.tenant_id, client_id = %secret.client_id, "secret fetched");
                *slot = Some(Fetched::Secret(Instant::now(), secret.clone()));
                Ok(secret)
            }
            Err(e) => {
                *slot = Some(Fetched::Failed(Instant::now(), e.clone()));
                Err(e)
            }
        }
    }
}

/// A bearer token; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// Tokens are refreshed this long before they expire, so a token never runs
/// out in the middle of a request.
pub const TOKEN_EARLY_REFRESH: Duration = Duration::from_secs(300);

struct CachedToken {
    token: AccessToken,
    refresh_at: Instant,
    /// The credentials it was made with: a rotated client secret or another
    /// tenant must not reuse it.
    made_for: (String, String),
}

/// Client-credentials tokens from the v2.0 endpoint, cached until 5 minutes
/// before expiry.
pub struct TokenProvider {
    http: reqwest::Client,
    login_url: String,
    scope: String,
    cached: Mutex<Option<CachedToken>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<Value>,
}

#[derive(Deserialize)]
struct TokenErrorBody {
    error: Option<String>,
    error_codes: Option<Vec<u64>>,
}

impl TokenProvider {
    pub fn new(http: reqwest::Client, login_url: String, scope: String) -> Self {
        Self {
            http,
            login_url,
            scope,
            cached: Mutex::new(None),
        }
    }

    pub fn token_url(&self, tenant_id: &str) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.login_url, tenant_id)
    }

    pub async fn get(
        &self,
        secret: &AppSecret,
        deadline: &Deadline,
    ) -> Result<AccessToken, CredentialError> {
        let key = (
            secret.tenant_id.clone(),
            secret.client_id.clone() + &secret.client_secret,
        );
        let mut slot = self.cached.lock().await;
        if let Some(c) = slot.as_ref()
            && c.made_for == key
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.fetch(secret, deadline).await?;
        *slot = Some(CachedToken {
            token: token.clone(),
            refresh_at: later(lifetime.saturating_sub(TOKEN_EARLY_REFRESH)),
            made_for: key,
        });
        Ok(token)
    }

    /// Drops `token` after the API answered 401 with it; a newer token that
    /// another caller already fetched is kept.
    pub async fn invalidate(&self, token: &AccessToken) {
        let mut slot = self.cached.lock().await;
        if slot.as_ref().is_some_and(|c| &c.token == token) {
            *slot = None;
        }
    }

    async fn fetch(
        &self,
        secret: &AppSecret,
        deadline: &Deadline,
    ) -> Result<(AccessToken, Duration), CredentialError> {
        let timeout = deadline.call_timeout().ok_or_else(|| {
            CredentialError::LoginUnavailable("no time left before the deadline".into())
        })?;
        crate::metrics::count(crate::metrics::names::TOKEN_FETCHES);
        let resp = self
            .http
            .post(self.token_url(&secret.tenant_id))
            .timeout(timeout)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", secret.client_id.as_str()),
                ("client_secret", secret.client_secret.as_str()),
                ("scope", self.scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                CredentialError::LoginUnavailable(if e.is_timeout() {
                    "timed out".into()
                } else {
                    "could not connect".into()
                })
            })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|_| CredentialError::LoginUnavailable("the answer was cut off".into()))?;
        let (token, lifetime) = read_token_answer(status, &bytes)?;
        tracing::debug!(expires_in_s = lifetime.as_secs(), "token fetched");
        Ok((token, lifetime))
    }
}

/// Used when an answer has no usable `expires_in`: Entra ID's usual value.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3599);

/// What the token endpoint's answer means. Pure, so the fuzzer drives it
/// with any status and body.
pub fn read_token_answer(
    status: u16,
    body: &[u8],
) -> Result<(AccessToken, Duration), CredentialError> {
    if (200..300).contains(&status) {
        let t: TokenResponse = serde_json::from_slice(body).map_err(|_| {
            CredentialError::LoginUnavailable("the token answer is not the expected JSON".into())
        })?;
        // The token goes into an Authorization header: a value that cannot
        // be one would fail every Defender call as a "network error".
        if t.access_token.is_empty() || !t.access_token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CredentialError::LoginUnavailable(
                "the token answer holds no usable access_token".into(),
            ));
        }
        return Ok((
            AccessToken(t.access_token),
            token_lifetime(t.expires_in.as_ref()),
        ));
    }
    if (300..400).contains(&status) {
        return Err(CredentialError::LoginRedirected(status));
    }
    if status >= 500 || status == 429 {
        return Err(CredentialError::LoginUnavailable(format!("HTTP {status}")));
    }
    // Only the error code and AADSTS numbers: the description can echo
    // request details, and never holds anything a user needs beyond them.
    let body: Option<TokenErrorBody> = serde_json::from_slice(body).ok();
    let code = body
        .as_ref()
        .and_then(|b| b.error.as_deref())
        .filter(|c| !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let aadsts = body
        .and_then(|b| b.error_codes)
        .map(|c| {
            c.iter()
                .take(8)
                .map(|n| format!(" AADSTS{n}"))
                .collect::<String>()
        })
        .unwrap_or_default();
    Err(CredentialError::BadCredentials(format!("{code}{aadsts}")))
}

/// `expires_in` as Entra ID sends it (a number) or as some proxies do (a
/// string), read without panicking whatever it holds and capped at
/// `MAX_UPSTREAM_WAIT`. Negative means already expired: the token serves
/// this request and is not cached.
pub fn token_lifetime(expires_in: Option<&Value>) -> Duration {
    let from_f64 = |f: f64| {
        if f < 0.0 {
            Some(Duration::ZERO)
        } else {
            seconds_f64(f)
        }
    };
    let parsed = match expires_in {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(u) => Some(Duration::from_secs(u).min(MAX_UPSTREAM_WAIT)),
            None => n.as_f64().and_then(from_f64),
        },
        Some(Value::String(s)) => {
            let s = s.trim();
            parse_seconds(s).or_else(|| s.parse::<f64>().ok().and_then(from_f64))
        }
        _ => None,
    };
    parsed.unwrap_or(DEFAULT_TOKEN_LIFETIME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const GOOD: &str = r#"{"tenant_id":"t","client_id":"c","client_secret":"hunter2",
        "webhook_secrets":{"generic":"whsec_abc","pagerduty":["new","old"]}}"#;

    #[test]
    fn parses_the_contract_layout() {
        let s = AppSecret::parse(GOOD).unwrap();
        assert_eq!(s.webhook_secrets("generic"), ["whsec_abc"]);
        assert_eq!(s.webhook_secrets("pagerduty"), ["new", "old"]);
        assert!(s.webhook_secrets("jira").is_empty());
    }

    #[test]
    fn errors_name_the_key_never_the_value() {
        for (text, key) in [
            (r#"{"tenant_id":"t","client_id":"c"}"#, "client_secret"),
            (
                r#"{"client_id":"c","client_secret":"hunter2"}"#,
                "tenant_id",
            ),
            (
                r#"{"tenant_id":"t","client_id":5,"client_secret":"hunter2"}"#,
                "client_id",
            ),
            (
                r#"{"tenant_id":"t","client_id":"c","client_secret":"hunter2","webhook_secrets":{"jira":7}}"#,
                "webhook_secrets.jira",
            ),
        ] {
            let e = AppSecret::parse(text).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, CredentialError::BadSecret(_)));
            assert!(msg.contains(key), "{msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        assert!(
            AppSecret::parse("not json hunter2")
                .unwrap_err()
                .to_string()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn debug_is_redacted() {
        let s = AppSecret::parse(GOOD).unwrap();
        let d = format!("{s:?}");
        assert!(
            !d.contains("hunter2") && !d.contains("whsec_abc") && !d.contains("old"),
            "{d}"
        );
        assert_eq!(
            format!("{:?}", AccessToken("eyJ".into())),
            "AccessToken(<redacted>)"
        );
    }

    struct Counting(AtomicUsize);
    impl SecretSource for Counting {
        fn fetch(&self) -> BoxFuture<'_, Result<String, CredentialError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(GOOD.to_string()) })
        }
    }

    struct Failing(AtomicUsize);
    impl SecretSource for Failing {
        fn fetch(&self) -> BoxFuture<'_, Result<String, CredentialError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                // A slow failure, so concurrent callers really overlap.
                tokio::time::sleep(Duration::from_millis(500)).await;
                Err(CredentialError::SecretUnavailable(
                    "ThrottlingException".into(),
                ))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_secrets_manager_sees_one_call_per_failure_window_not_a_flood() {
        let src = Arc::new(Failing(AtomicUsize::new(0)));
        let cache = Arc::new(SecretCache::new(src.clone(), Duration::from_secs(300)));
        let flood: Vec<_> = (0..200)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get().await })
            })
            .collect();
        for r in futures_util::future::join_all(flood).await {
            assert!(matches!(
                r.unwrap(),
                Err(CredentialError::SecretUnavailable(_))
            ));
        }
        assert_eq!(src.0.load(Ordering::SeqCst), 1, "single flight");
        tokio::time::advance(SECRET_FAILURE_TTL - Duration::from_secs(1)).await;
        for _ in 0..50 {
            assert!(cache.get().await.is_err());
        }
        assert_eq!(src.0.load(Ordering::SeqCst), 1, "the failure is remembered");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(cache.get().await.is_err());
        assert_eq!(src.0.load(Ordering::SeqCst), 2, "and then retried");
    }

    struct Recovering(AtomicUsize);
    impl SecretSource for Recovering {
        fn fetch(&self) -> BoxFuture<'_, Result<String, CredentialError>> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n == 0 {
                    Err(CredentialError::SecretUnavailable("timed out".into()))
                } else {
                    Ok(GOOD.to_string())
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_secrets_manager_is_used_once_the_failure_window_ends() {
        let src = Arc::new(Recovering(AtomicUsize::new(0)));
        let cache = SecretCache::new(src.clone(), Duration::from_secs(300));
        assert!(cache.get().await.is_err());
        tokio::time::advance(SECRET_FAILURE_TTL).await;
        assert_eq!(cache.get().await.unwrap().tenant_id, "t");
        tokio::time::advance(Duration::from_secs(200)).await;
        cache.get().await.unwrap();
        assert_eq!(src.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn secret_is_reused_for_its_ttl_then_fetched_again() {
        let src = Arc::new(Counting(AtomicUsize::new(0)));
        let cache = SecretCache::new(src.clone(), Duration::from_secs(300));
        cache.get().await.unwrap();
        tokio::time::advance(Duration::from_secs(299)).await;
        cache.get().await.unwrap();
        assert_eq!(src.0.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.get().await.unwrap();
        assert_eq!(src.0.load(Ordering::SeqCst), 2);
    }
    #[test]
    fn expires_in_is_read_safely_whatever_it_holds() {
        use serde_json::json;
        let hour = MAX_UPSTREAM_WAIT;
        let secs = Duration::from_secs;
        for (v, want) in [
            (json!(3599), secs(3599)),
            (json!(86_400), hour),
            (json!(u64::MAX), hour),
            (json!(1e20), hour),
            (json!(1.7976931348623157e308), hour),
            (json!(-1), Duration::ZERO),
            (json!(i64::MIN), Duration::ZERO),
            (json!(-1e20), Duration::ZERO),
            (json!(59.5), Duration::from_millis(59_500)),
            (json!("3599"), secs(3599)),
            (json!(" 120 "), secs(120)),
            (json!("18446744073709551616"), hour),
            (json!("1e20"), hour),
            (json!("-5"), Duration::ZERO),
            (json!("NaN"), secs(3599)),
            (json!("inf"), secs(3599)),
            (json!("soon"), secs(3599)),
            (json!(""), secs(3599)),
            (json!(null), secs(3599)),
            (json!(true), secs(3599)),
            (json!([3599]), secs(3599)),
            (json!({"s": 1}), secs(3599)),
        ] {
            assert_eq!(token_lifetime(Some(&v)), want, "expires_in: {v}");
        }
        assert_eq!(token_lifetime(None), secs(3599));
    }

    #[test]
    fn token_answers_are_classified_without_echoing_details() {
        let ok =
            read_token_answer(200, br#"{"access_token":"eyJ.a.b","expires_in":"1e300"}"#).unwrap();
        assert_eq!((ok.0.expose(), ok.1), ("eyJ.a.b", MAX_UPSTREAM_WAIT));
        for status in [301, 302, 303, 307, 308] {
            assert_eq!(
                read_token_answer(status, b""),
                Err(CredentialError::LoginRedirected(status))
            );
        }
        for body in [
            &br#"{"access_token":""}"#[..],
            br#"{"access_token":"a b"}"#,
            br#"{"access_token":"a\nb"}"#,
            br#"{"access_token":5}"#,
            b"<html>",
        ] {
            assert!(
                matches!(
                    read_token_answer(200, body),
                    Err(CredentialError::LoginUnavailable(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(read_token_answer(503, b"").unwrap_err().is_retryable());
        assert!(read_token_answer(429, b"").unwrap_err().is_retryable());
        let e = read_token_answer(
            401,
            br#"{"error":"invalid_client","error_description":"secret hunter2","error_codes":[7000215]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            CredentialError::BadCredentials("invalid_client AADSTS7000215".into())
        );
        let e = read_token_answer(400, br#"{"error":"line\nbreak"}"#).unwrap_err();
        assert_eq!(e, CredentialError::BadCredentials("HTTP 400".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_expires_in_caches_for_at_most_an_hour() {
        // The real provider's caching arithmetic with a lifetime far past
        // what an Instant can hold.
        let refresh_at = later(
            token_lifetime(Some(&serde_json::json!(u64::MAX))).saturating_sub(TOKEN_EARLY_REFRESH),
        );
        assert_eq!(
            refresh_at - Instant::now(),
            MAX_UPSTREAM_WAIT - TOKEN_EARLY_REFRESH
        );
    }
}
