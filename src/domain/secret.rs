//! The Azure AD application's secret: its layout, the port it is read
//! through, and the cache that keeps it for a warm instance (with a short
//! memory of failures, so a flood while Secrets Manager fails stays a
//! trickle of fetches). Never printed: its `Debug` is redacted.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::domain::limits::Expiring;

/// The secret's JSON, validated. Webhook secrets are kept per source key,
/// each a list so a rotation can accept the new and the old one.
#[derive(Clone, PartialEq, Eq)]
pub struct AppSecret {
    pub tenant_id: String,
    pub client_id: String,
    /// `None` with `MDE_CREDENTIALS=federated`: then the function holds no
    /// client secret at all, even when the secret still carries one.
    pub client_secret: Option<String>,
    pub webhook_secrets: BTreeMap<String, Vec<String>>,
    /// `jira_api`, `servicenow_api`, `pagerduty_api` as written: the
    /// write-back adapter reads its credentials there when it needs them.
    pub write_back: serde_json::Map<String, Value>,
    /// The secret's `tenants`, where it serves several (see `tenant`).
    pub tenants: Option<crate::domain::tenant::TenantMap>,
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
    /// Parses the SecretString for the default mode (a client secret).
    pub fn parse(text: &str) -> Result<Self, CredentialError> {
        Self::parse_for(text, CredentialMode::Secret)
    }

    /// Parses the SecretString for `mode`: federated needs no
    /// `client_secret`. Errors name the key at fault and never quote a value.
    pub fn parse_for(text: &str, mode: CredentialMode) -> Result<Self, CredentialError> {
        Self::read(text, mode).map_err(CredentialError::BadSecret)
    }

    fn read(text: &str, mode: CredentialMode) -> Result<Self, String> {
        let obj: Map<String, Value> =
            serde_json::from_str(text).map_err(|_| "the secret is not a JSON object")?;
        let req = |k: &str| match obj.get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(Value::String(_)) => Err(format!("the secret's key '{k}' is empty")),
            Some(_) => Err(format!("the secret's key '{k}' must be a string")),
            None => Err(format!("the secret has no key '{k}'")),
        };
        let tenant_id = req("tenant_id")?;
        let client_id = req("client_id")?;
        let client_secret = match mode {
            CredentialMode::Secret => Some(req("client_secret")?),
            CredentialMode::Federated => None,
        };
        let webhook_secrets = match obj.get("webhook_secrets") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(name, val)| {
                    let list = match val {
                        Value::String(s) => vec![s.clone()],
                        list => Vec::<String>::deserialize(list).map_err(|_| format!(
                            "the secret's key 'webhook_secrets.{name}' must be a string or a list of strings"
                        ))?,
                    };
                    // An empty secret would let an empty bearer token in.
                    let list = list.into_iter().filter(|s| !s.is_empty()).collect();
                    Ok((name.clone(), list))
                })
                .collect::<Result<_, String>>()?,
            Some(_) => return Err("the secret's key 'webhook_secrets' must be an object".into()),
        };
        let tenants = match obj.get("tenants") {
            None | Some(Value::Null) => None,
            Some(v) => Some(crate::domain::tenant::read_tenants(v)?),
        };
        Ok(Self {
            tenants,
            tenant_id,
            client_id,
            client_secret,
            webhook_secrets,
            write_back: obj
                .iter()
                .filter(|(k, _)| k.ends_with("_api"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// The credentials of `tenant` (the top-level ones for `None`): its
    /// `tenant_id`, and its `client_id` and `client_secret` where it has
    /// its own. A malformed entry is that tenant's `bad_secret` only.
    pub fn for_tenant(&self, tenant: Option<&str>) -> Result<AppSecret, CredentialError> {
        let Some(name) = tenant else {
            return Ok(self.clone());
        };
        let creds = self
            .tenants
            .as_ref()
            .and_then(|m| m.get(name))
            .ok_or_else(|| {
                CredentialError::BadSecret(format!("the secret has no key 'tenants.{name}'"))
            })?
            .as_ref()
            .map_err(|e| CredentialError::BadSecret(e.clone()))?;
        let mut s = self.clone();
        s.tenant_id = creds.tenant_id.clone();
        if let Some(c) = &creds.client_id {
            s.client_id = c.clone();
        }
        if s.client_secret.is_some()
            && let Some(c) = &creds.client_secret
        {
            s.client_secret = Some(c.clone());
        }
        Ok(s)
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

/// How the function proves itself to Entra ID (`MDE_CREDENTIALS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CredentialMode {
    /// The client secret from the secret.
    #[default]
    Secret,
    /// No client secret: an STS web identity token is the client assertion.
    Federated,
}

impl CredentialMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "secret" => Some(Self::Secret),
            "federated" => Some(Self::Federated),
            _ => None,
        }
    }
}

/// Entra ID's refusals of a federated client assertion, by AADSTS code,
/// each with the fix the operator needs.
/// Each variant's value is its AADSTS code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionRefusal {
    /// No federated identity credential matches at all.
    NoMatchingCredential = 70021,
    /// The token's issuer is not the credential's.
    IssuerMismatch = 700211,
    /// The token's audience is not the credential's.
    AudienceMismatch = 700212,
    /// The token's subject is not the credential's.
    SubjectMismatch = 700213,
    /// The token is expired or not yet valid.
    OutsideValidity = 700024,
}

impl AssertionRefusal {
    pub fn from_aadsts(code: u64) -> Option<Self> {
        match code {
            70021 => Some(Self::NoMatchingCredential),
            700211 => Some(Self::IssuerMismatch),
            700212 => Some(Self::AudienceMismatch),
            700213 => Some(Self::SubjectMismatch),
            700024 => Some(Self::OutsideValidity),
            _ => None,
        }
    }

    pub fn aadsts(self) -> u64 {
        self as u64
    }

    /// The error code the caller reads.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoMatchingCredential => "no_federated_credential",
            Self::IssuerMismatch => "federated_issuer_mismatch",
            Self::AudienceMismatch => "federated_audience_mismatch",
            Self::SubjectMismatch => "federated_subject_mismatch",
            Self::OutsideValidity => "assertion_expired",
        }
    }
}

impl fmt::Display for AssertionRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Self::NoMatchingCredential => {
                "no federated identity credential on the app registration matches the AWS token; add one with issuer = the account's issuer URL (aws iam get-outbound-web-identity-federation-info), subject = the function role's ARN, audience = api://AzureADTokenExchange"
            }
            Self::IssuerMismatch => {
                "the federated identity credential's issuer is not this AWS account's; set it to the IssuerIdentifier that aws iam get-outbound-web-identity-federation-info prints, character for character"
            }
            Self::AudienceMismatch => {
                "the federated identity credential's audience is not api://AzureADTokenExchange; set it to exactly that"
            }
            Self::SubjectMismatch => {
                "the federated identity credential's subject is not the function role's ARN; set it to the role ARN (arn:aws:iam::<account>:role/<name>), not an assumed-role session ARN"
            }
            Self::OutsideValidity => {
                "the AWS token was expired or not yet valid when Entra ID read it; check the clock and that the role policy allows sts:DurationSeconds of 300"
            }
        };
        write!(
            f,
            "Entra ID refused the AWS identity token (AADSTS{}): {what}",
            self.aadsts()
        )
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
    /// STS refused `GetWebIdentityToken` because the account has not turned
    /// outbound identity federation on.
    #[error(
        "AWS STS refused GetWebIdentityToken: outbound identity federation is not enabled in this AWS account; enable it once with IAM EnableOutboundWebIdentityFederation (aws iam enable-outbound-web-identity-federation)"
    )]
    FederationDisabled,
    /// STS refused `GetWebIdentityToken` for another reason a retry will not
    /// cure (mostly the role policy).
    #[error(
        "AWS STS refused GetWebIdentityToken ({0}); the function's role needs sts:GetWebIdentityToken for audience api://AzureADTokenExchange with sts:DurationSeconds of at least 300"
    )]
    IdentityTokenRefused(String),
    /// STS is unreachable, throttling or failing.
    #[error("AWS STS is unavailable for GetWebIdentityToken: {0}")]
    IdentityTokenUnavailable(String),
    /// Entra ID refused the federated client assertion.
    #[error("{0}")]
    AssertionRefused(AssertionRefusal),
}

impl CredentialError {
    /// The same kind of error, with what Secrets Manager said left for the
    /// log: for a caller not yet authenticated. (A malformed secret's
    /// reason names the key at fault, never a value, and stays: it is what
    /// the operator reading the 500 needs.)
    pub fn for_an_unknown_caller(self) -> Self {
        let why = || "the function's log says why".to_string();
        match self {
            Self::SecretRefused(_) => Self::SecretRefused(why()),
            Self::SecretUnavailable(_) => Self::SecretUnavailable(why()),
            other => other,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::SecretUnavailable(_)
                | Self::LoginUnavailable(_)
                | Self::IdentityTokenUnavailable(_)
        )
    }
}

/// Port: where the secret's text comes from.
pub trait SecretSource: Send + Sync {
    fn fetch(&self) -> BoxFuture<'_, Result<String, CredentialError>>;
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

/// Caches the parsed secret for a max age, like Powertools' parameters
/// utility, and a failure for `SECRET_FAILURE_TTL`. One fetch at a time:
/// concurrent callers wait for it instead of each calling Secrets Manager.
pub struct SecretCache {
    source: Arc<dyn SecretSource>,
    ttl: Duration,
    mode: CredentialMode,
    cached: Expiring<Result<Arc<AppSecret>, CredentialError>>,
}

impl SecretCache {
    pub fn new(source: Arc<dyn SecretSource>, ttl: Duration) -> Self {
        Self {
            source,
            ttl,
            mode: CredentialMode::Secret,
            cached: Expiring::default(),
        }
    }

    /// The secret is read for `mode` (federated needs no client secret).
    pub fn for_mode(mut self, mode: CredentialMode) -> Self {
        self.mode = mode;
        self
    }

    /// The secret read afresh, past the cache (the health check): what
    /// Secrets Manager holds now, not what an instance read minutes ago.
    pub async fn fresh(&self) -> Result<Arc<AppSecret>, CredentialError> {
        crate::ops::metrics::count(crate::ops::metrics::names::SECRET_FETCHES);
        let text = self.source.fetch().await?;
        AppSecret::parse_for(&text, self.mode).map(Arc::new)
    }

    pub async fn get(&self) -> Result<Arc<AppSecret>, CredentialError> {
        let fetch = async {
            let fetched = self.fresh().await;
            match &fetched {
                Ok(secret) => {
                    tracing::debug!(tenant_id = %secret.tenant_id, client_id = %secret.client_id, "secret fetched");
                    Ok::<_, Infallible>((fetched, self.ttl))
                }
                Err(_) => Ok((fetched, SECRET_FAILURE_TTL)),
            }
        };
        let Ok(fetched) = self.cached.get(|_| true, fetch).await;
        fetched
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
    fn federated_mode_needs_no_client_secret_and_keeps_none() {
        let without =
            r#"{"tenant_id":"t","client_id":"c","webhook_secrets":{"generic":"whsec_abc"}}"#;
        assert!(AppSecret::parse(without).is_err());
        let s = AppSecret::parse_for(without, CredentialMode::Federated).unwrap();
        assert_eq!((s.tenant_id.as_str(), s.client_secret), ("t", None));
        // One left in the secret is not held, so it cannot be sent.
        let s = AppSecret::parse_for(GOOD, CredentialMode::Federated).unwrap();
        assert_eq!(s.client_secret, None);
        let e =
            AppSecret::parse_for(r#"{"client_id":"c"}"#, CredentialMode::Federated).unwrap_err();
        assert!(e.to_string().contains("tenant_id"), "{e}");
    }

    #[test]
    fn assertion_refusals_are_read_from_their_aadsts_codes() {
        for code in [70021, 700211, 700212, 700213, 700024] {
            let r = AssertionRefusal::from_aadsts(code).unwrap();
            assert_eq!(r.aadsts(), code);
            assert!(r.to_string().contains(&format!("AADSTS{code}")));
        }
        assert_eq!(AssertionRefusal::from_aadsts(7000215), None);
    }

    #[test]
    fn debug_is_redacted() {
        let s = AppSecret::parse(GOOD).unwrap();
        let d = format!("{s:?}");
        assert!(
            !d.contains("hunter2") && !d.contains("whsec_abc") && !d.contains("old"),
            "{d}"
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
}
