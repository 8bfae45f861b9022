//! Credentials without a client secret: the port an AWS-signed web identity
//! token comes through, and the cache that keeps it until shortly before it
//! expires, so a warm instance asks STS once per token lifetime.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use crate::domain::limits::{Expiring, MAX_UPSTREAM_WAIT};
use crate::domain::secret::CredentialError;

/// The audience Entra ID expects of an external workload's token.
pub const ENTRA_AUDIENCE: &str = "api://AzureADTokenExchange";

/// The lifetime asked of STS: its default and the template's cap. The token
/// is only read once per access-token fetch, so longer buys nothing but a
/// longer window for a leaked one.
pub const IDENTITY_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// A token is replaced this long before it expires, so it is still valid
/// when Entra ID reads it after the round trip.
pub const IDENTITY_TOKEN_EARLY_REFRESH: Duration = Duration::from_secs(60);

/// A signed JWT from STS; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityToken {
    jwt: String,
    pub expires_at: SystemTime,
}

impl IdentityToken {
    pub fn new(jwt: String, expires_at: SystemTime) -> Self {
        Self { jwt, expires_at }
    }

    pub fn expose(&self) -> &str {
        &self.jwt
    }
}

impl fmt::Debug for IdentityToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityToken(<redacted>)")
    }
}

/// Port: where web identity tokens come from (STS's `GetWebIdentityToken`).
pub trait IdentityTokenSource: Send + Sync {
    fn fetch<'a>(
        &'a self,
        audience: &'a str,
        lifetime: Duration,
    ) -> BoxFuture<'a, Result<IdentityToken, CredentialError>>;
}

/// Keeps the token until `IDENTITY_TOKEN_EARLY_REFRESH` before it expires.
/// One fetch at a time: concurrent callers wait for it.
pub struct IdentityTokenCache {
    source: Arc<dyn IdentityTokenSource>,
    cached: Expiring<IdentityToken>,
}

impl IdentityTokenCache {
    pub fn new(source: Arc<dyn IdentityTokenSource>) -> Self {
        Self {
            source,
            cached: Expiring::default(),
        }
    }

    /// A token for Entra ID, fetched within `timeout`.
    pub async fn get(&self, timeout: Duration) -> Result<IdentityToken, CredentialError> {
        let fetch = async {
            let token = tokio::time::timeout(
                timeout,
                self.source.fetch(ENTRA_AUDIENCE, IDENTITY_TOKEN_LIFETIME),
            )
            .await
            .map_err(|_| CredentialError::IdentityTokenUnavailable("timed out".into()))??;
            // The expiry is wall-clock time from STS; the cache runs on the
            // monotonic clock, so it keeps what is left of the lifetime now.
            let left = token
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .min(MAX_UPSTREAM_WAIT);
            tracing::debug!(lifetime_s = left.as_secs(), "identity token fetched");
            Ok((token, left.saturating_sub(IDENTITY_TOKEN_EARLY_REFRESH)))
        };
        self.cached.get(|_| true, fetch).await
    }

    /// Drops `token` after Entra ID found it outside its validity.
    pub async fn invalidate(&self, token: &IdentityToken) {
        self.cached.invalidate(|t| t == token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Issues tokens valid for `lifetime` from the moment of the call. The
    /// cache turns that into a point on tokio's clock right away, so the
    /// paused clock then decides when it is replaced.
    struct Counting {
        calls: AtomicUsize,
        lifetime: Duration,
    }

    impl Counting {
        fn new(lifetime: Duration) -> Self {
            Self {
                calls: AtomicUsize::new(0),
                lifetime,
            }
        }
    }

    impl IdentityTokenSource for Counting {
        fn fetch<'a>(
            &'a self,
            audience: &'a str,
            lifetime: Duration,
        ) -> BoxFuture<'a, Result<IdentityToken, CredentialError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(audience, ENTRA_AUDIENCE);
            assert_eq!(lifetime, IDENTITY_TOKEN_LIFETIME);
            let expires = SystemTime::now() + self.lifetime;
            Box::pin(async move { Ok(IdentityToken::new(format!("jwt-{n}"), expires)) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_sts_call_per_token_lifetime_and_none_while_warm() {
        let src = Arc::new(Counting::new(Duration::from_secs(300)));
        let cache = IdentityTokenCache::new(src.clone());
        let t = Duration::from_secs(5);
        let first = cache.get(t).await.unwrap();
        for _ in 0..20 {
            assert_eq!(cache.get(t).await.unwrap(), first);
        }
        tokio::time::advance(Duration::from_secs(239)).await;
        assert_eq!(cache.get(t).await.unwrap(), first);
        assert_eq!(src.calls.load(Ordering::SeqCst), 1, "warm calls make none");
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = cache.get(t).await.unwrap();
        assert_ne!(second, first, "replaced a minute before it expires");
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_too_short_lived_to_reuse_is_not_cached() {
        let src = Arc::new(Counting::new(Duration::from_secs(30)));
        let cache = IdentityTokenCache::new(src.clone());
        cache.get(Duration::from_secs(5)).await.unwrap();
        cache.get(Duration::from_secs(5)).await.unwrap();
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalidated_token_is_fetched_again() {
        let src = Arc::new(Counting::new(Duration::from_secs(300)));
        let cache = IdentityTokenCache::new(src.clone());
        let first = cache.get(Duration::from_secs(5)).await.unwrap();
        cache.invalidate(&first).await;
        assert_ne!(cache.get(Duration::from_secs(5)).await.unwrap(), first);
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    }

    struct Hanging;
    impl IdentityTokenSource for Hanging {
        fn fetch<'a>(
            &'a self,
            _: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<IdentityToken, CredentialError>> {
            Box::pin(futures_util::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_sts_is_unavailable_within_the_timeout() {
        let cache = IdentityTokenCache::new(Arc::new(Hanging));
        let e = cache.get(Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(e, CredentialError::IdentityTokenUnavailable(_)));
        assert!(e.is_retryable());
    }

    #[test]
    fn debug_is_redacted() {
        let t = IdentityToken::new("eyJhbGciOi.secret.sig".into(), SystemTime::now());
        assert_eq!(format!("{t:?}"), "IdentityToken(<redacted>)");
    }
}
