//! Adapter: Entra ID's client-credentials token, cached until shortly
//! before it expires and refreshed once on a 401. Never printed. The client
//! proves itself with the client secret, or (federated) with an STS web
//! identity token as the client assertion.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::domain::federation::IdentityTokenCache;
use crate::domain::limits::{Deadline, Expiring, seconds_f64};
use crate::domain::secret::{AppSecret, AssertionRefusal, CredentialError};
use crate::support::redacted::Redacted;

/// RFC 7523's client assertion type, which Entra ID expects with a
/// federated credential.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A bearer token; `Debug` and `Display` never show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken(Redacted<String>);

impl AccessToken {
    pub fn expose(&self) -> &str {
        &self.0.0
    }
}

/// Tokens are refreshed this long before they expire, so a token never runs
/// out in the middle of a request.
pub const TOKEN_EARLY_REFRESH: Duration = Duration::from_secs(300);

/// Client-credentials tokens from the v2.0 endpoint, cached until 5 minutes
/// before expiry.
pub struct TokenProvider {
    http: reqwest::Client,
    login_url: String,
    scope: String,
    /// Set in federated mode: the client assertion's source.
    assertions: Option<Arc<IdentityTokenCache>>,
    /// With the credentials it was made with: a rotated client secret or
    /// another tenant must not reuse it.
    cached: Expiring<((String, String), AccessToken)>,
    /// What the last fetched token lacked, so the warning is one line at
    /// start (and again only if consent changes), not one per refresh.
    last_missing: std::sync::Mutex<Vec<&'static str>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
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
            assertions: None,
            cached: Expiring::default(),
            last_missing: Default::default(),
        }
    }

    /// Federated mode: STS tokens from `assertions` replace the client
    /// secret.
    pub fn federated(mut self, assertions: Arc<IdentityTokenCache>) -> Self {
        self.assertions = Some(assertions);
        self
    }

    /// The login host's base URL (`MDE_LOGIN_URL`).
    pub fn login_url(&self) -> &str {
        &self.login_url
    }

    pub async fn get(
        &self,
        secret: &AppSecret,
        deadline: &Deadline,
    ) -> Result<AccessToken, CredentialError> {
        let key = (
            secret.tenant_id.clone(),
            secret.client_id.clone() + secret.client_secret.as_deref().unwrap_or(""),
        );
        let fetch = async {
            let (token, lifetime) = self.fetch(secret, deadline).await?;
            let keep = lifetime.saturating_sub(TOKEN_EARLY_REFRESH);
            Ok(((key.clone(), token), keep))
        };
        let usable = |(made_for, _): &(_, _)| *made_for == key;
        let (_, token) = self.cached.get(usable, fetch).await?;
        Ok(token)
    }

    /// A token fetched now, past the cache (the health check): whether
    /// Entra ID issues one today, not whether it did an hour ago.
    pub async fn fresh(
        &self,
        secret: &AppSecret,
        deadline: &Deadline,
    ) -> Result<AccessToken, CredentialError> {
        Ok(self.fetch(secret, deadline).await?.0)
    }

    /// Drops `token` after the API answered 401 with it; a newer token that
    /// another caller already fetched is kept.
    pub async fn invalidate(&self, token: &AccessToken) {
        self.cached.invalidate(|(_, t)| t == token).await
    }

    async fn fetch(
        &self,
        secret: &AppSecret,
        deadline: &Deadline,
    ) -> Result<(AccessToken, Duration), CredentialError> {
        let time_left = || {
            deadline.call_timeout().ok_or_else(|| {
                CredentialError::LoginUnavailable("no time left before the deadline".into())
            })
        };
        let assertion = match &self.assertions {
            Some(cache) => Some((cache, cache.get(time_left()?).await?)),
            None => None,
        };
        let timeout = time_left()?;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", secret.client_id.as_str()),
        ];
        match (&assertion, secret.client_secret.as_deref()) {
            (Some((_, jwt)), _) => {
                form.push(("client_assertion_type", JWT_BEARER));
                form.push(("client_assertion", jwt.expose()));
            }
            (None, Some(client_secret)) => form.push(("client_secret", client_secret)),
            (None, None) => {
                return Err(CredentialError::BadSecret(
                    "the secret has no key 'client_secret'".into(),
                ));
            }
        }
        form.push(("scope", self.scope.as_str()));
        let url = format!("{}/{}/oauth2/v2.0/token", self.login_url, secret.tenant_id);
        crate::ops::metrics::count(crate::ops::metrics::names::TOKEN_FETCHES);
        let resp = self
            .http
            .post(url)
            .timeout(timeout)
            .form(&form)
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
        // A token answer is a few KiB.
        let bytes = super::read_capped(resp, 64 * 1024)
            .await
            .map_err(CredentialError::LoginUnavailable)?;
        let answer = read_token_answer(status, &bytes);
        let stale = CredentialError::AssertionRefused(AssertionRefusal::OutsideValidity);
        if let Some((cache, jwt)) = &assertion
            && answer.as_ref().err() == Some(&stale)
        {
            // The next fetch must not present the same stale token.
            cache.invalidate(jwt).await;
        }
        let (token, lifetime) = answer?;
        tracing::debug!(expires_in_s = lifetime.as_secs(), "token fetched");
        self.check_permissions(&token);
        Ok((token, lifetime))
    }

    /// The application permissions the last token lacked (empty when it
    /// had them, or when its roles could not be read).
    pub fn missing(&self) -> Vec<&'static str> {
        self.last_missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Says once, in one line, which application permission the tenant's
    /// admin consent lacks: otherwise it shows up only as one 403 `failed`
    /// per device, long after deployment.
    fn check_permissions(&self, token: &AccessToken) {
        let Some(missing) = missing_permissions(token.expose()) else {
            tracing::debug!(
                "the access token's roles claim is not readable; permissions not checked"
            );
            return;
        };
        let mut last = self.last_missing.lock().unwrap_or_else(|e| e.into_inner());
        if *last == missing {
            return;
        }
        if !missing.is_empty() {
            tracing::warn!(
                missing_permissions = %missing.join(", "),
                "the Defender application lacks the {} application permission: grant it and admin consent in Entra ID (API permissions, WindowsDefenderATP); until then Defender refuses those calls with 403",
                missing.join(" and ")
            );
        }
        *last = missing;
    }
}

/// The application permission the offboard call needs.
pub const OFFBOARD_PERMISSION: &str = "Machine.Offboard";

/// Listing machines and reading actions needs one of these; the current
/// Defender docs list `Machine.ReadWrite.All`, older ones `Machine.Read.All`.
pub const READ_PERMISSIONS: [&str; 2] = ["Machine.ReadWrite.All", "Machine.Read.All"];

/// Named in the warning when neither read permission is granted.
const READ_PERMISSION_NAME: &str = "Machine.ReadWrite.All (or Machine.Read.All)";

#[derive(Deserialize)]
struct TokenClaims {
    #[serde(default)]
    roles: Vec<String>,
}

/// The permissions the access token's `roles` claim lacks, read from its
/// JWT payload without checking the signature: the token came straight
/// from Entra ID over TLS, and Defender checks it on every call anyway.
/// `None` when the token is not a JWT with a readable payload (some clouds
/// and proxies issue opaque tokens): nothing can be said then.
pub fn missing_permissions(token: &str) -> Option<Vec<&'static str>> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: TokenClaims = serde_json::from_slice(&bytes).ok()?;
    let has = |p: &str| claims.roles.iter().any(|r| r == p);
    let mut missing = Vec::new();
    if !has(OFFBOARD_PERMISSION) {
        missing.push(OFFBOARD_PERMISSION);
    }
    if !READ_PERMISSIONS.iter().any(|p| has(p)) {
        missing.push(READ_PERMISSION_NAME);
    }
    Some(missing)
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
            AccessToken(Redacted(t.access_token)),
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
    let codes = body.and_then(|b| b.error_codes).unwrap_or_default();
    // A refused federated assertion has a fix of its own to tell.
    if let Some(refusal) = codes.iter().find_map(|c| AssertionRefusal::from_aadsts(*c)) {
        return Err(CredentialError::AssertionRefused(refusal));
    }
    let aadsts: String = codes
        .iter()
        .take(8)
        .map(|n| format!(" AADSTS{n}"))
        .collect();
    Err(CredentialError::BadCredentials(format!("{code}{aadsts}")))
}

/// `expires_in` as Entra ID sends it (a number) or as some proxies do (a
/// string), read without panicking whatever it holds and capped at
/// `MAX_UPSTREAM_WAIT`. Negative means already expired: the token serves
/// this request and is not cached.
pub fn token_lifetime(expires_in: Option<&Value>) -> Duration {
    let secs = match expires_in {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match secs {
        Some(s) if s < 0.0 => Duration::ZERO,
        s => s.and_then(seconds_f64).unwrap_or(DEFAULT_TOKEN_LIFETIME),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::limits::{MAX_UPSTREAM_WAIT, later};
    use tokio::time::Instant;

    fn jwt(payload: &str) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b64.encode(r#"{"typ":"JWT","alg":"RS256"}"#),
            b64.encode(payload)
        )
    }

    #[test]
    fn missing_permissions_are_read_from_the_roles_claim() {
        let read = READ_PERMISSION_NAME;
        for (payload, want) in [
            (
                r#"{"roles":["Machine.Offboard","Machine.ReadWrite.All"]}"#,
                vec![],
            ),
            (
                r#"{"roles":["Machine.Offboard","Machine.Read.All"]}"#,
                vec![],
            ),
            (
                r#"{"roles":["Machine.ReadWrite.All"]}"#,
                vec![OFFBOARD_PERMISSION],
            ),
            (r#"{"roles":["Machine.Offboard"]}"#, vec![read]),
            (r#"{"roles":[]}"#, vec![OFFBOARD_PERMISSION, read]),
            // No roles claim at all: the app has no application permission.
            (r#"{"aud":"x"}"#, vec![OFFBOARD_PERMISSION, read]),
            (
                r#"{"roles":["machine.offboard","Machine.Read"]}"#,
                vec![OFFBOARD_PERMISSION, read],
            ),
        ] {
            assert_eq!(missing_permissions(&jwt(payload)), Some(want), "{payload}");
        }
    }

    #[test]
    fn an_unreadable_token_says_nothing() {
        for token in [
            "opaque-token".to_string(),
            "a.b".to_string(),
            "a.%%%.c".to_string(),
            format!("{}x", jwt("[1,2]")),
            jwt(r#"{"roles":"Machine.Offboard"}"#),
            jwt("not json"),
            "...".to_string(),
        ] {
            assert_eq!(missing_permissions(&token), None, "{token}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(
            format!("{:?}", AccessToken(Redacted("eyJ".into()))),
            "AccessToken(<redacted>)"
        );
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
        let e = read_token_answer(
            401,
            br#"{"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found for presented assertion subject 'arn:aws:iam::1:role/x'.","error_codes":[700213]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            CredentialError::AssertionRefused(AssertionRefusal::SubjectMismatch)
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
