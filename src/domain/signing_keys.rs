//! Entra ID's published signing keys, for the `entra-jwt` scheme: which
//! tenant and issuers a token must name, the port the tenant's key set
//! (JWKS) comes through, and the cache that keeps it for a warm instance.
//!
//! The cache keeps a tenant's keys for `KEYS_TTL`; a token naming a key the
//! set lacks (Entra rolled its keys) refetches the set at most once per
//! `UNKNOWN_KID_REFETCH`; a fetch that fails is remembered for
//! `KEYS_FAILURE_TTL`, so a flood of requests while Entra ID is unreachable
//! is a trickle of fetches. While no key set can be had, nothing is
//! accepted: the caller answers 503, never an acceptance.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use thiserror::Error;
use tokio::time::Instant;

/// How long a fetched key set is used before it is fetched again. Entra ID
/// rolls keys with notice (a new kid is refetched at once, below); the TTL
/// bounds how long a key Microsoft withdrew (a compromised one) is still
/// trusted by a warm instance. One small GET per hour per instance.
pub const KEYS_TTL: Duration = Duration::from_secs(3600);

/// The contract's bound: an unknown `kid` refetches the keys at most once a
/// minute, so random kids cannot turn requests into fetches.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(60);

/// How long a failed fetch is answered from memory (503), like the secret's.
pub const KEYS_FAILURE_TTL: Duration = Duration::from_secs(3);

/// The longest one fetch of the keys may take.
pub const KEYS_FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest key set read: Entra's tenant-independent set, the largest
/// there is, is about 15 KiB.
pub const MAX_KEYS_BYTES: usize = 256 * 1024;

/// A tenant id as Entra ID writes it in tokens: a GUID, in lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantGuid(String);

impl TenantGuid {
    /// A GUID (`8-4-4-4-12` hex digits), kept in lowercase; anything else
    /// (a domain name, `common`) is `None`: tokens name their tenant by id,
    /// and the id goes into the keys URL.
    pub fn parse(s: &str) -> Option<Self> {
        is_guid(s.trim()).then(|| Self(s.trim().to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `8-4-4-4-12` hexadecimal digits.
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The Entra tenant a token must come from, on a login host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntraTenant {
    /// The login host's base (`MDE_LOGIN_URL`), without a trailing `/`.
    pub login_url: String,
    pub tenant: TenantGuid,
}

impl EntraTenant {
    pub fn new(login_url: &str, tenant: TenantGuid) -> Self {
        Self {
            login_url: login_url.trim_end_matches('/').to_string(),
            tenant,
        }
    }

    /// Where the tenant publishes its signing keys.
    pub fn keys_url(&self) -> String {
        format!(
            "{}/{}/discovery/v2.0/keys",
            self.login_url,
            self.tenant.as_str()
        )
    }

    /// The issuer of v1.0 access tokens (`ver` 1.0, the default for an app
    /// registration whose `accessTokenAcceptedVersion` is unset): the STS
    /// host, whatever the login host.
    pub fn v1_issuer(&self) -> String {
        format!("https://sts.windows.net/{}/", self.tenant.as_str())
    }

    /// The issuer of v2.0 access tokens: the login host, the tenant, `/v2.0`.
    pub fn v2_issuer(&self) -> String {
        format!("{}/{}/v2.0", self.login_url, self.tenant.as_str())
    }
}

/// One RSA signing key of the set.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    /// The JWK's `issuer`, where Entra ID writes one (its v2.0 keys
    /// endpoints do): `https://login.microsoftonline.com/{tenantid}/v2.0`,
    /// or a tenant's own issuer.
    pub issuer: Option<String>,
    pub key: DecodingKey,
}

/// A tenant's published signing keys: the RSA signature keys of its JWKS.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.kid))
            .finish()
    }
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<JwkDoc>,
}

#[derive(Deserialize)]
struct JwkDoc {
    kty: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    issuer: Option<String>,
}

impl KeySet {
    /// Reads a JWKS document: its RSA keys meant for signatures (`use`
    /// `sig` or unset) with a `kid`; others (encryption keys, EC keys) are
    /// left out. A document without one usable key is an error.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let doc: JwksDoc = serde_json::from_slice(text)
            .map_err(|_| "the key set is not a JWKS document (no 'keys' list)".to_string())?;
        let keys: Vec<SigningKey> = doc
            .keys
            .into_iter()
            .filter(|k| k.kty.as_deref() == Some("RSA"))
            .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
            .filter_map(|k| {
                let key =
                    DecodingKey::from_rsa_components(k.n.as_deref()?, k.e.as_deref()?).ok()?;
                Some(SigningKey {
                    kid: k.kid.filter(|kid| !kid.is_empty())?,
                    issuer: k.issuer,
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err("the key set holds no RSA signing key".into());
        }
        Ok(Self { keys })
    }

    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why no key set could be had. The reason is for the log only.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the tenant's signing keys could not be fetched: {0}")]
pub struct KeysUnavailable(pub String);

/// Port: where a tenant's JWKS document comes from (Entra ID's keys
/// endpoint, over HTTPS).
pub trait SigningKeySource: Send + Sync {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, KeysUnavailable>>;
}

#[derive(Default)]
struct Held {
    keys: Option<Arc<KeySet>>,
    /// When `keys` was fetched.
    fetched: Option<Instant>,
    /// When a fetch was last tried, and whether it failed.
    tried: Option<Instant>,
    failed: bool,
}

/// The key sets of the tenants this instance checks tokens for. One fetch
/// at a time: concurrent requests wait for it and share its result.
pub struct SigningKeyCache {
    source: Arc<dyn SigningKeySource>,
    held: tokio::sync::Mutex<HashMap<EntraTenant, Held>>,
}

impl SigningKeyCache {
    pub fn new(source: Arc<dyn SigningKeySource>) -> Self {
        Self {
            source,
            held: Default::default(),
        }
    }

    /// The tenant's key set, fetched when none is held or it is older than
    /// `KEYS_TTL`, or when it lacks `kid` and was not fetched within
    /// `UNKNOWN_KID_REFETCH`. A set that still lacks `kid` is returned as it
    /// is: the token is then refused for its unknown key.
    pub async fn keys_for(
        &self,
        tenant: &EntraTenant,
        kid: &str,
    ) -> Result<Arc<KeySet>, KeysUnavailable> {
        let mut map = self.held.lock().await;
        // Tenants come from the configuration, never from a request: the
        // map holds a handful of entries.
        let held = map.entry(tenant.clone()).or_default();
        let now = Instant::now();
        let within = |at: Option<Instant>, d: Duration| {
            at.is_some_and(|t| now.saturating_duration_since(t) < d)
        };
        if let Some(keys) = held.keys.clone().filter(|_| within(held.fetched, KEYS_TTL)) {
            if keys.get(kid).is_some() {
                return Ok(keys);
            }
            // An unknown kid: a refetch at most once a minute, failed or not.
            if within(held.tried, UNKNOWN_KID_REFETCH) {
                return if held.failed {
                    Err(KeysUnavailable("the last fetch failed".into()))
                } else {
                    Ok(keys)
                };
            }
        } else if held.failed && within(held.tried, KEYS_FAILURE_TTL) {
            return Err(KeysUnavailable("the last fetch failed moments ago".into()));
        }
        held.tried = Some(now);
        let url = tenant.keys_url();
        let fetched = self
            .source
            .fetch(&url, KEYS_FETCH_TIMEOUT)
            .await
            .and_then(|bytes| KeySet::parse(&bytes).map_err(KeysUnavailable));
        match fetched {
            Ok(set) => {
                tracing::info!(keys_url = %url, keys = set.len(), "Entra signing keys fetched");
                let set = Arc::new(set);
                held.keys = Some(set.clone());
                held.fetched = Some(now);
                held.failed = false;
                Ok(set)
            }
            Err(e) => {
                tracing::warn!(keys_url = %url, error = %e, "Entra signing keys not fetched; entra-jwt callers get 503 until they are");
                held.failed = true;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A public key of the right shape: any RSA modulus reads; these tests
    /// never verify a signature.
    const N: &str = "3I2c2shPwo4E7Y9Npyp7A5s4bkw9u3BV0sNsn4Ph2WAZFXduaTy8ZirXa8cQF2_Riwckxcqf2DYmdUKGDb1FCBESW34oV2V5PopqS2llIfwU6gwrbWycQuai7FUG-UZWfud64ZRqbk8oyyYD7gHfijUiZ-nOHd3ozzDS0NNnH6TKCHiwKu-ocqzT7pDUMr3ozu2Gv0Gb4txtQk4m2QbNn4uNmYrSjgKzNH3HYWQgBYAEEgCUkG-nH4Ui1IsBvPCEIig_UhHn-OtJ9ZHnGmQnRQo22VMRWa9WPXYBt4RCA3eljmDYXLfQNua8Z69e40cGoXrSza90KsuXqNLo-0xQ0w";

    fn jwks(kids: &[&str]) -> Vec<u8> {
        let keys: Vec<_> = kids
            .iter()
            .map(|k| serde_json::json!({"kty": "RSA", "use": "sig", "kid": k, "x5t": k, "n": N, "e": "AQAB",
                "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"}))
            .collect();
        serde_json::json!({ "keys": keys }).to_string().into_bytes()
    }

    /// Serves the scripted answers in turn (the last repeats), counting
    /// fetches.
    struct Scripted {
        answers: Mutex<Vec<Result<Vec<u8>, KeysUnavailable>>>,
        fetches: AtomicUsize,
        urls: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn new(answers: Vec<Result<Vec<u8>, KeysUnavailable>>) -> Arc<Self> {
            Arc::new(Self {
                answers: Mutex::new(answers),
                fetches: AtomicUsize::new(0),
                urls: Mutex::new(Vec::new()),
            })
        }
        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    impl SigningKeySource for Scripted {
        fn fetch<'a>(
            &'a self,
            url: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<Vec<u8>, KeysUnavailable>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            self.urls.lock().unwrap().push(url.to_string());
            let mut a = self.answers.lock().unwrap();
            let next = if a.len() > 1 {
                a.remove(0)
            } else {
                a[0].clone()
            };
            Box::pin(async move { next })
        }
    }

    fn down() -> Result<Vec<u8>, KeysUnavailable> {
        Err(KeysUnavailable("HTTP 503".into()))
    }

    fn tenant() -> EntraTenant {
        EntraTenant::new(
            "https://login.microsoftonline.com/",
            TenantGuid::parse("72F988BF-86F1-41AF-91AB-2D7CD011DB47").unwrap(),
        )
    }

    #[test]
    fn tenant_ids_are_guids_and_name_the_keys_url_and_issuers() {
        let t = tenant();
        assert_eq!(
            t.keys_url(),
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/discovery/v2.0/keys"
        );
        assert_eq!(
            t.v1_issuer(),
            "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/"
        );
        assert_eq!(
            t.v2_issuer(),
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
        );
        for bad in [
            "contoso.onmicrosoft.com",
            "common",
            "72f988bf-86f1-41af-91ab-2d7cd011db4",
            "72f988bf-86f1-41af-91ab-2d7cd011db47/../x",
            "",
        ] {
            assert_eq!(TenantGuid::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_jwks_keeps_rsa_signing_keys_only() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "use": "sig", "kid": "a", "n": N, "e": "AQAB"},
            {"kty": "RSA", "kid": "b", "n": N, "e": "AQAB", "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"},
            {"kty": "RSA", "use": "enc", "kid": "c", "n": N, "e": "AQAB"},
            {"kty": "EC", "use": "sig", "kid": "d", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "use": "sig", "n": N, "e": "AQAB"},
            {"kty": "RSA", "use": "sig", "kid": "f", "e": "AQAB"}
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(format!("{set:?}"), r#"["a", "b"]"#);
        assert_eq!(
            set.get("b").unwrap().issuer.as_deref(),
            Some("https://login.microsoftonline.com/{tenantid}/v2.0")
        );
        assert!(KeySet::parse(b"{\"keys\": []}").is_err());
        assert!(KeySet::parse(b"<html>").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_fetched_once_and_kept_for_the_ttl() {
        let src = Scripted::new(vec![Ok(jwks(&["k1"]))]);
        let cache = SigningKeyCache::new(src.clone());
        for _ in 0..10 {
            assert!(
                cache
                    .keys_for(&tenant(), "k1")
                    .await
                    .unwrap()
                    .get("k1")
                    .is_some()
            );
        }
        assert_eq!(src.fetches(), 1);
        assert_eq!(src.urls.lock().unwrap()[0], tenant().keys_url());
        tokio::time::advance(KEYS_TTL - Duration::from_secs(1)).await;
        cache.keys_for(&tenant(), "k1").await.unwrap();
        assert_eq!(src.fetches(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.keys_for(&tenant(), "k1").await.unwrap();
        assert_eq!(src.fetches(), 2, "fetched again after the TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_kid_refetches_at_most_once_a_minute() {
        let src = Scripted::new(vec![
            Ok(jwks(&["k1"])),
            Ok(jwks(&["k1"])),
            Ok(jwks(&["k1", "k2"])),
        ]);
        let cache = SigningKeyCache::new(src.clone());
        cache.keys_for(&tenant(), "k1").await.unwrap();
        // Within the minute of the first fetch: no refetch, the set as is.
        let set = cache.keys_for(&tenant(), "k2").await.unwrap();
        assert!(set.get("k2").is_none());
        assert_eq!(src.fetches(), 1);
        tokio::time::advance(UNKNOWN_KID_REFETCH).await;
        // One refetch; it still lacks k2; more tries in the minute fetch nothing.
        for _ in 0..5 {
            assert!(
                cache
                    .keys_for(&tenant(), "k2")
                    .await
                    .unwrap()
                    .get("k2")
                    .is_none()
            );
        }
        assert_eq!(src.fetches(), 2);
        tokio::time::advance(UNKNOWN_KID_REFETCH).await;
        assert!(
            cache
                .keys_for(&tenant(), "k2")
                .await
                .unwrap()
                .get("k2")
                .is_some()
        );
        assert_eq!(src.fetches(), 3, "the rolled key is found a minute later");
        cache.keys_for(&tenant(), "k1").await.unwrap();
        assert_eq!(src.fetches(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_endpoint_is_unavailable_and_asked_again_after_a_pause() {
        let src = Scripted::new(vec![down(), Ok(b"not json".to_vec()), Ok(jwks(&["k1"]))]);
        let cache = SigningKeyCache::new(src.clone());
        for _ in 0..5 {
            assert!(cache.keys_for(&tenant(), "k1").await.is_err());
        }
        assert_eq!(
            src.fetches(),
            1,
            "failures are remembered, not retried per request"
        );
        tokio::time::advance(KEYS_FAILURE_TTL).await;
        let e = cache.keys_for(&tenant(), "k1").await.unwrap_err();
        assert!(e.to_string().contains("not a JWKS"), "{e}");
        tokio::time::advance(KEYS_FAILURE_TTL).await;
        assert!(cache.keys_for(&tenant(), "k1").await.is_ok());
        assert_eq!(src.fetches(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_not_used_while_the_endpoint_fails() {
        let src = Scripted::new(vec![Ok(jwks(&["k1"])), down()]);
        let cache = SigningKeyCache::new(src.clone());
        cache.keys_for(&tenant(), "k1").await.unwrap();
        tokio::time::advance(KEYS_TTL).await;
        assert!(cache.keys_for(&tenant(), "k1").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refetch_for_an_unknown_kid_is_unavailable_for_that_minute() {
        let src = Scripted::new(vec![Ok(jwks(&["k1"])), down(), Ok(jwks(&["k1", "k2"]))]);
        let cache = SigningKeyCache::new(src.clone());
        cache.keys_for(&tenant(), "k1").await.unwrap();
        tokio::time::advance(UNKNOWN_KID_REFETCH).await;
        assert!(cache.keys_for(&tenant(), "k2").await.is_err());
        assert!(cache.keys_for(&tenant(), "k2").await.is_err());
        // Known keys still serve.
        assert!(cache.keys_for(&tenant(), "k1").await.is_ok());
        assert_eq!(src.fetches(), 2);
        tokio::time::advance(UNKNOWN_KID_REFETCH).await;
        assert!(
            cache
                .keys_for(&tenant(), "k2")
                .await
                .unwrap()
                .get("k2")
                .is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_tenant_has_its_own_set() {
        let src = Scripted::new(vec![Ok(jwks(&["k1"]))]);
        let cache = SigningKeyCache::new(src.clone());
        let other = EntraTenant::new(
            "https://login.microsoftonline.com",
            TenantGuid::parse("00000000-0000-0000-0000-000000000001").unwrap(),
        );
        cache.keys_for(&tenant(), "k1").await.unwrap();
        cache.keys_for(&other, "k1").await.unwrap();
        assert_eq!(src.fetches(), 2);
        assert!(src.urls.lock().unwrap()[1].contains("00000000-0000-0000-0000-000000000001"));
    }
}
