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

use crate::limits::Deadline;

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

/// Caches the parsed secret for a max age, like Powertools' parameters
/// utility. One fetch at a time: concurrent callers wait for it instead of
/// each calling Secrets Manager.
pub struct SecretCache {
    source: Arc<dyn SecretSource>,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Arc<AppSecret>)>>,
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
        if let Some((at, secret)) = slot.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(secret.clone());
        }
        crate::metrics::count(crate::metrics::names::SECRET_FETCHES);
        let text = self.source.fetch().await?;
        let secret = Arc::new(AppSecret::parse(&text)?);
        tracing::debug!(tenant_id = %secret.tenant_id, client_id = %secret.client_id, "secret fetched");
        *slot = Some((Instant::now(), secret.clone()));
        Ok(secret)
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
            refresh_at: Instant::now() + lifetime.saturating_sub(TOKEN_EARLY_REFRESH),
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
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|_| CredentialError::LoginUnavailable("the answer was cut off".into()))?;
        if status.is_success() {
            let t: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| {
                CredentialError::LoginUnavailable(
                    "the token answer is not the expected JSON".into(),
                )
            })?;
            // Entra ID sends expires_in as a number; some proxies as a string.
            let secs = match t.expires_in {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            }
            .unwrap_or(3599);
            tracing::debug!(expires_in = secs, "token fetched");
            return Ok((AccessToken(t.access_token), Duration::from_secs(secs)));
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(CredentialError::LoginUnavailable(format!(
                "HTTP {}",
                status.as_u16()
            )));
        }
        // Only the error code and AADSTS numbers: the description can echo
        // request details, and never holds anything a user needs beyond them.
        let body: Option<TokenErrorBody> = serde_json::from_slice(&bytes).ok();
        let code = body
            .as_ref()
            .and_then(|b| b.error.clone())
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        let aadsts = body
            .and_then(|b| b.error_codes)
            .map(|c| c.iter().map(|n| format!(" AADSTS{n}")).collect::<String>())
            .unwrap_or_default();
        Err(CredentialError::BadCredentials(format!("{code}{aadsts}")))
    }
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
}
