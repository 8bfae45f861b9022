//! Webhook authentication: who is calling.
//!
//! `AuthDef` owns a source's schemes: it parses their definition, refuses a
//! request that lacks every header its schemes read (before any secret is
//! fetched), enforces the key rules on the secrets it is given, and says
//! which delivery id, if any, the signature covers. The verifiers below it
//! are pure functions over headers, raw body bytes, keys and the current
//! time. Every comparison of a secret-derived value is constant-time and
//! leaks no length, and the reasons returned never contain a signature or
//! a secret.

use base64::Engine as _;
use lambda_http::http::HeaderMap;
use serde::{Deserialize, Deserializer, de};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::domain::secret::AppSecret;
use crate::domain::signing_keys::{EntraTenant, KeySet, TenantGuid, is_guid};
use crate::support::webhook_sig::{
    KeyError, LENIENT_B64, MIN_KEY_LEN, SigError, StandardHeaders, StandardWebhooks, any_matches,
    hmac_sha256, secret_key, strong_key,
};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// A header missing or malformed, or no signature or credential that
    /// matches: the same reasons whichever scheme refused.
    #[error(transparent)]
    Signature(#[from] SigError),
    #[error("the request context holds no IAM caller")]
    NoIamIdentity,
    #[error("the IAM caller is not one of the source's principals")]
    PrincipalNotAllowed,
    #[error("no webhook secret is configured at webhook_secrets.{0}")]
    NoSecret(String),
    /// A configuration error: the key is named, its value never.
    #[error("webhook_secrets.{key} {problem}; the source refuses every call until it is fixed")]
    WeakKey { key: String, problem: KeyProblem },
    /// An `entra-jwt` token failed a check; what it named is in the log,
    /// never in the answer.
    #[error("the Entra ID token {0}")]
    Token(TokenProblem),
    /// The tenant's signing keys could not be had: the caller is answered
    /// 503, never let in.
    #[error("the Entra ID signing keys could not be fetched, so no token can be checked")]
    KeysUnavailable,
    /// A configuration error: no tenant id to check tokens against.
    #[error(
        "entra-jwt needs the Entra tenant's id (a GUID) in the scheme's 'tenant_id' or the secret's 'tenant_id'; the source refuses every call until it is fixed"
    )]
    NoEntraTenant,
}

impl AuthError {
    /// The operator's mistake, not the caller's: worth a warning in the log.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            Self::NoSecret(_) | Self::WeakKey { .. } | Self::NoEntraTenant
        )
    }
}

/// Why an Entra ID access token was refused. The values shown are the
/// token's own claims (never the token, nor its signature), quoted and cut
/// short, for the log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenProblem {
    #[error("is not a JWT: {0}")]
    Malformed(&'static str),
    #[error("is signed with {0}; only RS256 is accepted")]
    Algorithm(String),
    #[error("names key {0}, which the tenant does not publish")]
    UnknownKey(String),
    #[error("has a signature that does not verify with the tenant's key {0}")]
    BadSignature(String),
    #[error("was issued by {0}, not by the tenant's v1 or v2 issuer")]
    Issuer(String),
    #[error("names tenant {0}, not the source's")]
    Tenant(String),
    #[error("is signed with a key Entra ID gives to issuer {0}, not to the tenant")]
    KeyIssuer(String),
    #[error("is for audience {0}, not one of the source's audiences")]
    Audience(String),
    #[error("has no usable '{0}' claim")]
    MissingClaim(&'static str),
    #[error("expired at {0} (unix seconds; 300 s of leeway)")]
    Expired(i64),
    #[error("is not valid before {0} (unix seconds; 300 s of leeway)")]
    NotYetValid(i64),
    #[error("was issued to caller {0}, which is not one of the source's principals")]
    CallerNotAllowed(String),
}

impl From<TokenProblem> for AuthError {
    fn from(p: TokenProblem) -> Self {
        Self::Token(p)
    }
}

/// A claim's value for the log: quoted, escaped, at most 100 characters.
fn shown(value: &str) -> String {
    let cut: String = value.chars().take(100).collect();
    format!("{cut:?}")
}

/// How far `exp` and `nbf` may be off: the contract's 300 s.
pub const TOKEN_LEEWAY_SECS: i64 = 300;

/// Why a webhook secret's value cannot be used as a key: the key rule
/// every MAC key follows, or a `basic` secret that is no pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyProblem {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("is not 'user:password'")]
    NotUserPassword,
}

/// Checks one secret value against the key rules for `scheme`: at least
/// `MIN_KEY_LEN` bytes after decoding a `whsec_` value, characters
/// otherwise (the password part for `basic`).
fn check_key(scheme: &Scheme, value: &str) -> Result<(), KeyProblem> {
    if value.starts_with("whsec_") {
        strong_key(value)?;
        return Ok(());
    }
    let material = match scheme {
        Scheme::Basic { .. } => value.split_once(':').ok_or(KeyProblem::NotUserPassword)?.1,
        _ => value,
    };
    if material.chars().count() < MIN_KEY_LEN {
        return Err(KeyError::TooShort.into());
    }
    Ok(())
}

/// HMAC-SHA256 of the raw body, lowercase hex, after `prefix` in a
/// header's `value`; it may hold several comma-separated values (PagerDuty
/// sends one per active secret). An empty secret never matches.
pub fn verify_hmac_hex(
    value: &str,
    prefix: &str,
    body: &[u8],
    secrets: &[String],
) -> Result<(), AuthError> {
    let candidates: Vec<Vec<u8>> = value
        .split(',')
        .map(str::trim)
        .filter_map(|v| v.strip_prefix(prefix))
        // Hex digits only, in pairs, either case.
        .filter_map(|h| hex::decode(h).ok())
        .collect();
    let macs = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| hmac_sha256(s.as_bytes(), &[body]));
    matched(any_matches(macs, &candidates))
}

/// Whether `given` equals one of `secrets`, in time that depends on
/// neither value's length nor on which secret matched: both sides are
/// hashed to 32 bytes first, and every secret is compared.
fn matches_any(given: &[u8], secrets: &[String]) -> bool {
    let given = Sha256::digest(given);
    let mut matched = subtle::Choice::from(0);
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        matched |= given
            .as_slice()
            .ct_eq(Sha256::digest(secret.as_bytes()).as_slice());
    }
    bool::from(matched)
}

fn matched(ok: bool) -> Result<(), AuthError> {
    ok.then_some(()).ok_or(SigError::NoMatch.into())
}

/// The credentials of `Authorization: <scheme> <credentials>`.
fn credentials<'a>(authorization: &'a str, scheme: &str) -> Result<&'a str, AuthError> {
    match authorization.trim().split_once(' ') {
        Some((given, rest)) if given.eq_ignore_ascii_case(scheme) => Ok(rest.trim()),
        _ => Err(SigError::Malformed("authorization").into()),
    }
}

/// `Authorization: Bearer <secret>`, compared in constant time without
/// leaking the token's length.
pub fn verify_bearer(authorization: &str, secrets: &[String]) -> Result<(), AuthError> {
    let token = credentials(authorization, "bearer")?;
    matched(matches_any(token.as_bytes(), secrets))
}

/// An ARN pattern from `principals`: `*` matches any run of characters,
/// everything else itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrincipalPattern(#[serde(deserialize_with = "filled")] String);

impl PrincipalPattern {
    pub fn matches(&self, arn: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = arn.strip_prefix(first) else {
            return false;
        };
        let tail: Vec<&str> = parts.collect();
        let Some((last, middle)) = tail.split_last() else {
            // No `*`: the whole ARN must be the pattern.
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// One way a source lets a caller in. `secret` names a key of
/// `webhook_secrets`; header names are kept in lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "scheme", rename_all = "kebab-case", deny_unknown_fields)]
#[serde(expecting = "a scheme object")]
pub enum Scheme {
    StandardWebhooks {
        #[serde(deserialize_with = "filled")]
        secret: String,
    },
    HmacSha256Hex {
        #[serde(deserialize_with = "header_name")]
        header: String,
        #[serde(default)]
        prefix: String,
        #[serde(deserialize_with = "filled")]
        secret: String,
    },
    Bearer {
        #[serde(deserialize_with = "filled")]
        secret: String,
    },
    Basic {
        #[serde(deserialize_with = "filled")]
        secret: String,
    },
    ApiKey {
        #[serde(deserialize_with = "header_name")]
        header: String,
        #[serde(deserialize_with = "filled")]
        secret: String,
    },
    /// Authorised by AWS IAM before the request reached the function.
    Iam {
        #[serde(deserialize_with = "crate::support::config_de::non_empty_list")]
        principals: Vec<PrincipalPattern>,
    },
    /// An access token Entra ID issued to the caller (a managed identity,
    /// a service principal): `Authorization: Bearer <JWT>`.
    EntraJwt {
        /// The token's `aud` must be one of these (an Application ID URI
        /// for v1.0 tokens, the app's client id for v2.0 tokens).
        #[serde(deserialize_with = "filled_list")]
        audiences: Vec<String>,
        /// Object ids (`oid`) or, for a token without one, application ids
        /// (`azp`, `appid`) of the callers let in; lowercase.
        #[serde(deserialize_with = "guid_list")]
        principals: Vec<String>,
        /// The tenant whose tokens are accepted; the secret's `tenant_id`
        /// when unset.
        #[serde(default, deserialize_with = "some_guid")]
        tenant_id: Option<String>,
    },
}

/// A list of non-empty strings, at least one. Inside a tagged enum serde
/// loses the path to a custom error, so the message names `field`.
fn strings(v: Vec<String>, field: &str) -> Result<Vec<String>, String> {
    if v.is_empty() || v.iter().any(|s| s.trim().is_empty()) {
        return Err(format!(
            "'{field}' must be a non-empty list of non-empty strings"
        ));
    }
    Ok(v)
}

fn filled_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    strings(Vec::deserialize(d)?, "audiences").map_err(de::Error::custom)
}

fn guid_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = strings(Vec::deserialize(d)?, "principals").map_err(de::Error::custom)?;
    if let Some(bad) = list.iter().find(|s| !is_guid(s.trim())) {
        return Err(de::Error::custom(format!(
            "'principals' holds {bad:?}, which is not an object or application id (a GUID)"
        )));
    }
    Ok(list.iter().map(|s| s.trim().to_ascii_lowercase()).collect())
}

fn some_guid<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    TenantGuid::parse(&s)
        .map(|t| Some(t.as_str().to_string()))
        .ok_or_else(|| de::Error::custom("'tenant_id' is not a tenant id (a GUID)"))
}

/// A secret's key, a header name or an ARN pattern: never empty.
fn filled<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Some(String::deserialize(d)?)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| de::Error::custom("has an empty 'secret', 'header' or principal"))
}

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    filled(d).map(|h| h.to_ascii_lowercase())
}

impl Scheme {
    /// The headers a sender of this scheme writes for `body`, with `key`
    /// (the secret's value): what the local run and the tests send, written
    /// beside `verify` so a new scheme is one place.
    pub fn sign(
        &self,
        key: &str,
        id: &str,
        now: i64,
        body: &[u8],
    ) -> Result<Vec<(String, String)>, String> {
        let one = |name: &str, value: String| Ok(vec![(name.to_string(), value)]);
        match self {
            Self::StandardWebhooks { .. } => {
                let signer = StandardWebhooks::from_secret(key).map_err(|e| e.to_string())?;
                Ok(vec![
                    ("webhook-id".into(), id.into()),
                    ("webhook-timestamp".into(), now.to_string()),
                    ("webhook-signature".into(), signer.sign(id, now, body)),
                ])
            }
            Self::HmacSha256Hex { header, prefix, .. } => {
                let mac = hmac::Mac::finalize(hmac_sha256(key.as_bytes(), &[body])).into_bytes();
                one(header, format!("{prefix}{}", hex::encode(mac)))
            }
            Self::Bearer { .. } => one("authorization", format!("Bearer {key}")),
            Self::Basic { .. } => one(
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(key)
                ),
            ),
            Self::ApiKey { header, .. } => one(header, key.to_string()),
            Self::Iam { .. } => Err("an iam source is signed by AWS SigV4, not with a key".into()),
            Self::EntraJwt { .. } => Err(
                "an entra-jwt source takes an access token Entra ID issues to the caller, not a key"
                    .into(),
            ),
        }
    }

    /// The key of `webhook_secrets` this scheme reads; `iam` reads none.
    pub fn secret_key(&self) -> Option<&str> {
        match self {
            Self::StandardWebhooks { secret }
            | Self::HmacSha256Hex { secret, .. }
            | Self::Bearer { secret }
            | Self::Basic { secret }
            | Self::ApiKey { secret, .. } => Some(secret),
            Self::Iam { .. } | Self::EntraJwt { .. } => None,
        }
    }

    /// The tenant an `entra-jwt` scheme accepts tokens from: its own
    /// `tenant_id`, else the secret's (when that is a GUID).
    fn entra_tenant(&self, secret: &AppSecret) -> Option<TenantGuid> {
        match self {
            Self::EntraJwt { tenant_id, .. } => {
                TenantGuid::parse(tenant_id.as_deref().unwrap_or(&secret.tenant_id))
            }
            _ => None,
        }
    }

    /// What the request carries for this scheme: the header it reads (the
    /// id, for Standard Webhooks), or the IAM caller. Cheap, and asked
    /// before any secret is fetched.
    fn presented<'a>(&self, req: &Presented<'a>) -> Result<&'a str, AuthError> {
        let read = |name: &str, missing: &'static str| {
            header(req.headers, name).ok_or(SigError::MissingHeader(missing).into())
        };
        match self {
            Self::StandardWebhooks { .. } => {
                Ok(StandardHeaders::from_headers(req.headers).require()?.0)
            }
            // Header names in a definition are free text; a name that is
            // not a valid header is simply never present.
            Self::HmacSha256Hex { header: name, .. } => read(name, "signature header"),
            Self::Bearer { .. } | Self::Basic { .. } | Self::EntraJwt { .. } => {
                read("authorization", "authorization")
            }
            Self::ApiKey { header: name, .. } => read(name, "api key header"),
            Self::Iam { .. } => req.caller_arn.ok_or(AuthError::NoIamIdentity),
        }
    }

    /// This scheme's secrets, each checked against the key rules.
    fn keys<'s>(&self, secret: &'s AppSecret) -> Result<&'s [String], AuthError> {
        let Some(key) = self.secret_key() else {
            return Ok(&[]);
        };
        let values = secret.webhook_secrets(key);
        if values.is_empty() {
            return Err(AuthError::NoSecret(key.to_string()));
        }
        for v in values {
            check_key(self, v).map_err(|problem| AuthError::WeakKey {
                key: key.to_string(),
                problem,
            })?;
        }
        Ok(values)
    }

    /// Verifies `value`, what `presented` found, with this scheme's keys
    /// (an `entra-jwt` scheme: with its tenant's signing keys in `ring`).
    fn verify(
        &self,
        req: &Presented<'_>,
        value: &str,
        keys: &[String],
        secret: &AppSecret,
        ring: &KeyRing,
    ) -> Result<Admitted, AuthError> {
        match self {
            Self::StandardWebhooks { .. } => {
                // A secret that is not a key (see `secret_key`) never matches.
                let keys: Vec<StandardWebhooks> = keys
                    .iter()
                    .filter_map(|s| secret_key(s).ok())
                    .map(StandardWebhooks::from_bytes)
                    .collect();
                let h = StandardHeaders::from_headers(req.headers);
                StandardWebhooks::verify_any(&keys, &h, req.body, req.now)?;
                // The id is part of the signed content: a delivery id the
                // replay cache may trust.
                return Ok(Admitted {
                    delivery_id: Some(value.to_string()),
                });
            }
            Self::HmacSha256Hex { prefix, .. } => verify_hmac_hex(value, prefix, req.body, keys)?,
            Self::Bearer { .. } => verify_bearer(value, keys)?,
            // `Basic base64(user:password)` against secrets holding
            // `user:password`, compared by digest like a bearer token.
            Self::Basic { .. } => {
                let pair = LENIENT_B64
                    .decode(credentials(value, "basic")?)
                    .map_err(|_| SigError::Malformed("authorization"))?;
                matched(matches_any(&pair, keys))?
            }
            // A header whose whole value is the secret (EventBridge
            // connections, SOAR HTTP actions).
            Self::ApiKey { .. } => matched(matches_any(value.trim().as_bytes(), keys))?,
            Self::Iam { principals } => {
                if !principals.iter().any(|p| p.matches(value)) {
                    return Err(AuthError::PrincipalNotAllowed);
                }
            }
            Self::EntraJwt {
                audiences,
                principals,
                ..
            } => {
                let tenant = self.entra_tenant(secret).ok_or(AuthError::NoEntraTenant)?;
                let token = credentials(value, "bearer")?;
                // A token that could never pass is refused as it is.
                acceptable_kid(token)?;
                let (tenant, keys) = ring.get(&tenant).ok_or(AuthError::KeysUnavailable)?;
                verify_entra_token(token, tenant, keys, audiences, principals, req.now)?;
            }
        }
        Ok(Admitted { delivery_id: None })
    }
}

/// The signing keys fetched for one request's `entra-jwt` schemes, by
/// tenant. A tenant missing here is one whose keys could not be fetched.
#[derive(Debug, Default, Clone)]
pub struct KeyRing {
    sets: Vec<(EntraTenant, std::sync::Arc<KeySet>)>,
}

impl KeyRing {
    pub fn insert(&mut self, tenant: EntraTenant, keys: std::sync::Arc<KeySet>) {
        self.sets.push((tenant, keys));
    }

    fn get(&self, tenant: &TenantGuid) -> Option<(&EntraTenant, &KeySet)> {
        self.sets
            .iter()
            .find(|(t, _)| t.tenant == *tenant)
            .map(|(t, k)| (t, k.as_ref()))
    }
}

/// A JWT's header, read before any key is fetched: its `alg` and `kid`.
fn jwt_header(token: &str) -> Result<(String, Option<String>), TokenProblem> {
    #[derive(Deserialize)]
    struct Header {
        alg: Option<String>,
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenProblem::Malformed("not three dot-separated parts"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| TokenProblem::Malformed("the header is not base64url"))?;
    let h: Header = serde_json::from_slice(&bytes)
        .map_err(|_| TokenProblem::Malformed("the header is not a JSON object"))?;
    Ok((h.alg.unwrap_or_default(), h.kid))
}

/// The header's `kid` when the token is one an `entra-jwt` scheme could
/// accept (RS256 with a kid): the key to look up or fetch. Anything else is
/// refused as it is, without a fetch.
fn acceptable_kid(token: &str) -> Result<String, TokenProblem> {
    let (alg, kid) = jwt_header(token)?;
    if alg != "RS256" {
        return Err(TokenProblem::Algorithm(shown(&alg)));
    }
    kid.filter(|k| !k.is_empty())
        .ok_or(TokenProblem::Malformed("the header has no kid"))
}

/// The claims an Entra ID access token is checked on.
#[derive(Deserialize)]
struct EntraClaims {
    iss: Option<Value>,
    aud: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    tid: Option<Value>,
    oid: Option<Value>,
    azp: Option<Value>,
    appid: Option<Value>,
}

fn text(v: &Option<Value>) -> Option<&str> {
    v.as_ref().and_then(Value::as_str)
}

/// Whole seconds from a NumericDate (an integer, or a number with a
/// fraction, as RFC 7519 allows).
fn seconds(v: &Option<Value>, name: &'static str) -> Result<i64, TokenProblem> {
    let v = v.as_ref().ok_or(TokenProblem::MissingClaim(name))?;
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        .ok_or(TokenProblem::MissingClaim(name))
}

/// Checks an access token Entra ID issued, as Microsoft's validators do:
/// RS256 only, the signature with the tenant's key named by `kid`, the
/// issuer (the tenant's v1.0 or v2.0 one) and `tid`, the key's own issuer
/// where the key set names one, the audience, `exp` and `nbf` within
/// `TOKEN_LEEWAY_SECS`, and the caller: `oid`, or where there is none the
/// client's id (`azp` in v2.0 tokens, `appid` in v1.0 ones).
pub fn verify_entra_token(
    token: &str,
    tenant: &EntraTenant,
    keys: &KeySet,
    audiences: &[String],
    principals: &[String],
    now: i64,
) -> Result<(), TokenProblem> {
    let kid = acceptable_kid(token)?;
    let alg = "RS256";
    let key = keys
        .get(&kid)
        .ok_or_else(|| TokenProblem::UnknownKey(shown(&kid)))?;
    // The crate checks the algorithm again and the signature; the claims
    // are checked below, against the request's own clock.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<EntraClaims>(token, &key.key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                TokenProblem::BadSignature(shown(&kid))
            }
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                TokenProblem::Algorithm(shown(alg))
            }
            _ => TokenProblem::Malformed("the payload is not a JSON object of claims"),
        })?
        .claims;

    let iss = text(&claims.iss).ok_or(TokenProblem::MissingClaim("iss"))?;
    let (v1, v2) = (tenant.v1_issuer(), tenant.v2_issuer());
    let version_2 = iss == v2;
    if !version_2 && iss != v1 {
        return Err(TokenProblem::Issuer(shown(iss)));
    }
    if let Some(tid) = claims.tid.as_ref() {
        let tid = tid.as_str().unwrap_or("");
        if !tid.eq_ignore_ascii_case(tenant.tenant.as_str()) {
            return Err(TokenProblem::Tenant(shown(tid)));
        }
    }
    // Microsoft's signing-key issuer check: a key Entra ID gives to one
    // issuer (a `{tenantid}` template, or one tenant) signs for it only.
    if let Some(key_issuer) = key.issuer.as_deref() {
        let effective = replace_tenant_template(key_issuer, tenant.tenant.as_str());
        if effective != v2 && effective != iss {
            return Err(TokenProblem::KeyIssuer(shown(key_issuer)));
        }
    }
    let aud_ok = match claims.aud.as_ref() {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|x| x == a)),
        _ => return Err(TokenProblem::MissingClaim("aud")),
    };
    if !aud_ok {
        return Err(TokenProblem::Audience(match claims.aud.as_ref() {
            Some(Value::String(a)) => shown(a),
            other => shown(&other.map(Value::to_string).unwrap_or_default()),
        }));
    }
    let exp = seconds(&claims.exp, "exp")?;
    if now > exp.saturating_add(TOKEN_LEEWAY_SECS) {
        return Err(TokenProblem::Expired(exp));
    }
    let nbf = seconds(&claims.nbf, "nbf")?;
    if now < nbf.saturating_sub(TOKEN_LEEWAY_SECS) {
        return Err(TokenProblem::NotYetValid(nbf));
    }
    let client = if version_2 {
        &claims.azp
    } else {
        &claims.appid
    };
    let caller = text(&claims.oid)
        .or_else(|| text(client))
        .ok_or(TokenProblem::MissingClaim("oid"))?;
    if !principals.iter().any(|p| p.eq_ignore_ascii_case(caller)) {
        return Err(TokenProblem::CallerNotAllowed(shown(caller)));
    }
    Ok(())
}

/// `{tenantid}` (any case) replaced with `tenant`.
fn replace_tenant_template(issuer: &str, tenant: &str) -> String {
    const TEMPLATE: &str = "{tenantid}";
    match issuer.to_ascii_lowercase().find(TEMPLATE) {
        Some(at) => format!(
            "{}{tenant}{}",
            &issuer[..at],
            &issuer[at + TEMPLATE.len()..]
        ),
        None => issuer.to_string(),
    }
}

/// What a request presents to be authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub headers: &'a HeaderMap,
    /// The raw body, as signed.
    pub body: &'a [u8],
    /// Unix seconds when it arrived.
    pub now: i64,
    /// The IAM caller's ARN from the request context (set by AWS, never by
    /// a header).
    pub caller_arn: Option<&'a str>,
}

/// A request one of the schemes admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The sender's delivery id, only where the signature covers it
    /// (Standard Webhooks' `webhook-id`); anything else in a header could
    /// be changed by whoever replays the request.
    pub delivery_id: Option<String>,
}

/// The built-in source of `/v1/offboard` and the action and ticket routes,
/// and its default key of `webhook_secrets`.
pub const GENERIC_KEY: &str = "generic";

/// A source's authentication: one scheme or several, any one of which
/// admits the call (so a sender can move to another scheme without
/// downtime).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AuthDef {
    #[serde(deserialize_with = "crate::support::config_de::one_or_many")]
    schemes: Vec<Scheme>,
}

impl AuthDef {
    /// Standard Webhooks with `webhook_secrets.<key>`: the generic route's
    /// default.
    pub fn standard(key: &str) -> Self {
        Self {
            schemes: vec![Scheme::StandardWebhooks {
                secret: key.to_string(),
            }],
        }
    }

    /// No scheme at all: every HTTP call is refused. For sources that only
    /// EventBridge reaches, where IAM admitted the event before it arrived.
    pub fn none() -> Self {
        Self {
            schemes: Vec::new(),
        }
    }

    pub fn schemes(&self) -> &[Scheme] {
        &self.schemes
    }

    /// The built-in source `generic`'s definition in `SOURCES`: only its
    /// `auth` may change, since its mapping is the generic body.
    pub fn parse_generic(def: &Value) -> Result<Self, (String, String)> {
        Ok(Self::parse_builtin(def)?.unwrap_or_else(|| Self::standard(GENERIC_KEY)))
    }

    /// A built-in source's definition in `SOURCES` (`generic`, `reader`):
    /// an `auth` and nothing else.
    pub fn parse_builtin(def: &Value) -> Result<Option<Self>, (String, String)> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct BuiltIn {
            auth: Option<AuthDef>,
        }
        let b: BuiltIn = crate::support::config_de::from_value("", def)?;
        Ok(b.auth)
    }

    /// Either definition admits the call: the schemes of both.
    pub fn or(&self, other: &Self) -> Self {
        Self {
            schemes: self.schemes.iter().chain(&other.schemes).cloned().collect(),
        }
    }

    /// Refuses a request that carries nothing any scheme reads: no secret
    /// is fetched for it, so a flood of bare requests costs nothing.
    pub fn precheck(&self, req: &Presented<'_>) -> Result<(), AuthError> {
        let presented: Vec<_> = self.schemes.iter().map(|s| s.presented(req)).collect();
        // Any scheme the request presents, else the first one's reason.
        match presented.iter().find(|p| p.is_ok()).or(presented.first()) {
            Some(first) => first.clone().map(|_| ()),
            None => Err(SigError::NoMatch.into()),
        }
    }

    /// Verifies a request with the secrets in `secret`, no Entra ID keys
    /// at hand (an `entra-jwt` scheme then refuses: keys unavailable).
    pub fn verify(&self, req: &Presented<'_>, secret: &AppSecret) -> Result<Admitted, AuthError> {
        self.verify_with(req, secret, &KeyRing::default())
    }

    /// The Entra ID key sets this request needs: for each `entra-jwt`
    /// scheme whose token could be accepted (RS256, with a `kid`), its
    /// tenant on `login_url` and the kid. A token of any other shape needs
    /// no fetch: it is refused as it is.
    pub fn keys_wanted(
        &self,
        req: &Presented<'_>,
        secret: &AppSecret,
        login_url: &str,
    ) -> Vec<(EntraTenant, String)> {
        let mut wanted: Vec<(EntraTenant, String)> = Vec::new();
        for scheme in &self.schemes {
            let Some(tenant) = scheme.entra_tenant(secret) else {
                continue;
            };
            let kid = scheme
                .presented(req)
                .ok()
                .and_then(|v| credentials(v, "bearer").ok())
                .and_then(|t| acceptable_kid(t).ok());
            if let Some(kid) = kid {
                let want = (EntraTenant::new(login_url, tenant), kid);
                if !wanted.contains(&want) {
                    wanted.push(want);
                }
            }
        }
        wanted
    }

    /// Verifies a request with the secrets in `secret` and the Entra ID
    /// keys in `ring`. Every scheme's keys must pass the key rules, or the
    /// source refuses every call: a broken key is fixed by the operator,
    /// not worked around by another scheme.
    pub fn verify_with(
        &self,
        req: &Presented<'_>,
        secret: &AppSecret,
        ring: &KeyRing,
    ) -> Result<Admitted, AuthError> {
        // A broken key closes the source. In a list, a scheme whose key is
        // simply absent is one the operator has not set up (a preset that
        // offers bearer or Basic, say): it is skipped, as long as another
        // scheme is set up.
        let mut keyed: Vec<(&Scheme, &[String])> = Vec::new();
        let mut absent = None;
        for s in &self.schemes {
            match s.keys(secret) {
                Ok(k) => keyed.push((s, k)),
                Err(e @ AuthError::NoSecret(_)) if self.schemes.len() > 1 => {
                    absent.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if keyed.is_empty()
            && let Some(e) = absent
        {
            return Err(e);
        }
        // A scheme whose credentials were there says more about the
        // refusal than one whose credentials were missing.
        let (mut missing, mut failed, mut unavailable) = (None, None, None);
        for (scheme, keys) in keyed {
            match scheme
                .presented(req)
                .map(|v| scheme.verify(req, v, keys, secret, ring))
            {
                Ok(Ok(admitted)) => return Ok(admitted),
                // No scheme admitted it and one could not look: the caller
                // may be genuine, and is told to come back (503).
                Ok(Err(AuthError::KeysUnavailable)) => {
                    unavailable = Some(AuthError::KeysUnavailable);
                }
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    missing.get_or_insert(e);
                }
            }
        }
        Err(unavailable
            .or(failed)
            .or(missing)
            .unwrap_or(SigError::NoMatch.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::config_de::from_value;
    use base64::engine::general_purpose::STANDARD as B64;
    use mde_testkit::hmac_hex;

    // The published test vector of the Standard Webhooks specification
    // (standard-webhooks/standard-webhooks, libraries' shared tests).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(sig: &'a str, ts: &'a str) -> StandardHeaders<'a> {
        StandardHeaders {
            id: Some(SPEC_ID),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    /// Signs as a sender holding `secret` would; an undecodable secret
    /// signs with an empty key, which no source accepts.
    fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
        StandardWebhooks::from_bytes(secret_key(secret).unwrap_or_default())
            .sign(id, timestamp, body)
    }

    /// A Standard Webhooks request verified against any of `secrets`.
    fn verify_standard(
        h: StandardHeaders<'_>,
        body: &[u8],
        secrets: &[String],
        now: i64,
    ) -> Result<(), AuthError> {
        let keys: Vec<StandardWebhooks> = secrets
            .iter()
            .filter_map(|s| secret_key(s).ok())
            .map(StandardWebhooks::from_bytes)
            .collect();
        Ok(StandardWebhooks::verify_any(&keys, &h, body, now)?)
    }

    fn secrets(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn signs_the_spec_test_vector() {
        assert_eq!(sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
    }

    #[test]
    fn verifies_the_spec_test_vector() {
        let ts = SPEC_TS.to_string();
        verify_standard(
            headers(SPEC_SIG, &ts),
            SPEC_BODY,
            &secrets(&[SPEC_SECRET]),
            SPEC_TS,
        )
        .unwrap();
    }

    #[test]
    fn one_byte_changed_in_the_body_fails() {
        let ts = SPEC_TS.to_string();
        let body = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify_standard(
                headers(SPEC_SIG, &ts),
                body,
                &secrets(&[SPEC_SECRET]),
                SPEC_TS
            ),
            Err(AuthError::Signature(SigError::NoMatch))
        );
    }

    #[test]
    fn timestamp_tolerance_is_300_seconds_both_ways() {
        let ts = SPEC_TS.to_string();
        let s = secrets(&[SPEC_SECRET]);
        for skew in [-300, 300] {
            assert!(verify_standard(headers(SPEC_SIG, &ts), SPEC_BODY, &s, SPEC_TS + skew).is_ok());
        }
        for skew in [-301, 301] {
            assert_eq!(
                verify_standard(headers(SPEC_SIG, &ts), SPEC_BODY, &s, SPEC_TS + skew),
                Err(AuthError::Signature(SigError::StaleTimestamp))
            );
        }
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        let s = secrets(&[SPEC_SECRET]);
        for ts in [i64::MIN, i64::MAX, -1] {
            let ts_text = ts.to_string();
            let sig = sign(SPEC_SECRET, SPEC_ID, ts, SPEC_BODY);
            assert_eq!(
                verify_standard(headers(&sig, &ts_text), SPEC_BODY, &s, SPEC_TS),
                Err(AuthError::Signature(SigError::StaleTimestamp)),
                "{ts}"
            );
        }
    }

    #[test]
    fn any_of_several_signatures_and_secrets_matches() {
        let ts = SPEC_TS.to_string();
        let multi = format!("v2,abc v1,Zm9v {SPEC_SIG}");
        let s = secrets(&["whsec_bmV3c2VjcmV0", SPEC_SECRET]);
        assert!(verify_standard(headers(&multi, &ts), SPEC_BODY, &s, SPEC_TS).is_ok());
        assert_eq!(
            verify_standard(
                headers(&multi, &ts),
                SPEC_BODY,
                &secrets(&["whsec_bmV3c2VjcmV0"]),
                SPEC_TS
            ),
            Err(AuthError::Signature(SigError::NoMatch))
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_refused() {
        let ts = SPEC_TS.to_string();
        let s = secrets(&[SPEC_SECRET]);
        let mut h = headers(SPEC_SIG, &ts);
        h.id = None;
        assert_eq!(
            verify_standard(h, SPEC_BODY, &s, SPEC_TS),
            Err(AuthError::Signature(SigError::MissingHeader("webhook-id")))
        );
        assert_eq!(
            verify_standard(headers(SPEC_SIG, "soon"), SPEC_BODY, &s, SPEC_TS),
            Err(AuthError::Signature(SigError::Malformed(
                "webhook-timestamp"
            )))
        );
        assert_eq!(
            verify_standard(headers("v1,", &ts), SPEC_BODY, &s, SPEC_TS),
            Err(AuthError::Signature(SigError::NoMatch))
        );
        assert_eq!(
            verify_standard(headers(SPEC_SIG, &ts), SPEC_BODY, &[], SPEC_TS),
            Err(AuthError::Signature(SigError::NoMatch))
        );
    }

    #[test]
    fn a_secret_without_prefix_is_raw_bytes() {
        assert_eq!(secret_key("plain").unwrap(), b"plain");
        let sig = sign("plain", "id", 10, b"{}");
        let h = StandardHeaders {
            id: Some("id"),
            timestamp: Some("10"),
            signature: Some(&sig),
        };
        assert!(verify_standard(h, b"{}", &secrets(&["plain"]), 10).is_ok());
    }

    #[test]
    fn hmac_hex_with_prefix_and_several_values() {
        let body = b"{\"event\":1}";
        let good = hmac_hex("s3cret", body);
        assert_eq!(good.len(), 64);
        let header = format!("v1=deadbeef,v1={good}");
        assert!(verify_hmac_hex(&header, "v1=", body, &secrets(&["s3cret"])).is_ok());
        assert_eq!(
            verify_hmac_hex(&header, "v1=", body, &secrets(&["other"])),
            Err(AuthError::Signature(SigError::NoMatch))
        );
        assert_eq!(
            verify_hmac_hex(&good, "sha256=", body, &secrets(&["s3cret"])),
            Err(AuthError::Signature(SigError::NoMatch))
        );
        // Without its header the scheme refuses, naming it generically.
        let d = def(serde_json::json!(
            {"scheme": "hmac-sha256-hex", "header": "x-hub-signature", "prefix": "sha256=", "secret": "jira"}
        ));
        let s = app_secret(serde_json::json!({"jira": "s3cret-of-16-chars"}));
        assert_eq!(
            d.verify(&presented(&HeaderMap::new(), body), &s),
            Err(AuthError::Signature(SigError::MissingHeader(
                "signature header"
            )))
        );
    }

    #[test]
    fn hex_is_canonical_digits_only() {
        assert_eq!(hex::decode("0aff").ok(), Some(vec![0x0a, 0xff]));
        assert_eq!(hex::decode("+a").ok(), None);
        assert_eq!(hex::decode("0g").ok(), None);
        assert_eq!(hex::decode("abc").ok(), None);
    }

    #[test]
    fn bearer_matches_exactly() {
        let s = secrets(&["tok-new", "tok-old"]);
        assert!(verify_bearer("Bearer tok-old", &s).is_ok());
        assert!(verify_bearer("bearer tok-new", &s).is_ok());
        assert_eq!(
            verify_bearer("Bearer tok", &s),
            Err(AuthError::Signature(SigError::NoMatch))
        );
        assert_eq!(
            verify_bearer("Basic tok-new", &s),
            Err(AuthError::Signature(SigError::Malformed("authorization")))
        );
        let d = def(serde_json::json!({"scheme": "bearer", "secret": "t"}));
        let t = app_secret(serde_json::json!({"t": "tok-new-of-16-chars"}));
        assert_eq!(
            d.verify(&presented(&HeaderMap::new(), b"{}"), &t),
            Err(AuthError::Signature(SigError::MissingHeader(
                "authorization"
            )))
        );
        assert_eq!(
            verify_bearer("Bearer ", &s),
            Err(AuthError::Signature(SigError::Malformed("authorization")))
        );
        assert_eq!(
            verify_bearer("Bearer tok-new", &[]),
            Err(AuthError::Signature(SigError::NoMatch))
        );
    }

    // The spec vector's key, unpadded (as the Python library's docs show
    // secrets) and padded.
    const KEY_UNPADDED: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    const BEARER: Scheme = Scheme::Bearer {
        secret: String::new(),
    };

    fn app_secret(webhook_secrets: Value) -> AppSecret {
        AppSecret::parse(
            &serde_json::json!({"tenant_id": "t", "client_id": "c", "client_secret": "s",
                "webhook_secrets": webhook_secrets})
            .to_string(),
        )
        .unwrap()
    }

    fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                lambda_http::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn presented<'a>(h: &'a HeaderMap, body: &'a [u8]) -> Presented<'a> {
        Presented {
            headers: h,
            body,
            now: SPEC_TS,
            caller_arn: None,
        }
    }

    #[test]
    fn whsec_keys_decode_padded_or_not_and_never_fall_back_to_raw_bytes() {
        // 17 bytes: base64 text whose padding matters.
        let padded = "whsec_bmV3LXNlY3JldC0xMjM0NTY=";
        let unpadded = "whsec_bmV3LXNlY3JldC0xMjM0NTY";
        assert_eq!(secret_key(padded).unwrap(), b"new-secret-123456");
        assert_eq!(secret_key(unpadded).unwrap(), b"new-secret-123456");
        assert_eq!(secret_key("whsec_not*base64"), Err(KeyError::NotBase64));
        assert_eq!(secret_key("whsec_").unwrap(), b"");
        assert_eq!(
            check_key(&BEARER, "whsec_"),
            Err(KeyProblem::Key(KeyError::TooShort))
        );
        assert_eq!(
            check_key(&BEARER, "whsec_bmV3c2VjcmV0"),
            Err(KeyProblem::Key(KeyError::TooShort))
        );
        assert_eq!(
            check_key(&BEARER, "whsec_not*base64"),
            Err(KeyProblem::Key(KeyError::NotBase64))
        );
        assert_eq!(
            check_key(&BEARER, "fifteen-chars-x"),
            Err(KeyProblem::Key(KeyError::TooShort))
        );
        assert_eq!(check_key(&BEARER, "sixteen-chars-xx"), Ok(()));
        assert_eq!(check_key(&BEARER, KEY_UNPADDED), Ok(()));
        assert_eq!(check_key(&BEARER, unpadded), Ok(()));
    }

    #[test]
    fn a_signature_with_an_empty_or_undecodable_key_never_verifies() {
        let ts = SPEC_TS.to_string();
        for weak in ["whsec_", "whsec_not*base64"] {
            let sig = sign(weak, SPEC_ID, SPEC_TS, SPEC_BODY);
            assert_eq!(
                verify_standard(headers(&sig, &ts), SPEC_BODY, &secrets(&[weak]), SPEC_TS),
                Err(AuthError::Signature(SigError::NoMatch)),
                "{weak}"
            );
        }
    }

    #[test]
    fn a_weak_or_missing_key_refuses_every_call_and_names_the_key() {
        let ts = SPEC_TS.to_string();
        let good_sig = sign("whsec_", SPEC_ID, SPEC_TS, SPEC_BODY);
        let h = header_map(&[
            ("webhook-id", SPEC_ID),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &good_sig),
        ]);
        let def = AuthDef::standard("generic");
        for (value, problem) in [
            (
                serde_json::json!("whsec_"),
                KeyProblem::Key(KeyError::TooShort),
            ),
            (
                serde_json::json!("whsec_%%%%"),
                KeyProblem::Key(KeyError::NotBase64),
            ),
            (
                serde_json::json!("short"),
                KeyProblem::Key(KeyError::TooShort),
            ),
            // One weak value in a rotation list is enough to refuse.
            (
                serde_json::json!([SPEC_SECRET, "whsec_"]),
                KeyProblem::Key(KeyError::TooShort),
            ),
        ] {
            let s = app_secret(serde_json::json!({ "generic": value }));
            let e = def.verify(&presented(&h, SPEC_BODY), &s).unwrap_err();
            assert_eq!(
                e,
                AuthError::WeakKey {
                    key: "generic".into(),
                    problem
                }
            );
            assert!(e.is_config_error());
            let msg = e.to_string();
            assert!(msg.contains("webhook_secrets.generic"), "{msg}");
            assert!(
                !msg.contains("whsec_%") && !msg.contains("short\""),
                "{msg}"
            );
        }
        let e = def
            .verify(
                &presented(&h, SPEC_BODY),
                &app_secret(serde_json::json!({})),
            )
            .unwrap_err();
        assert_eq!(e, AuthError::NoSecret("generic".into()));
        assert!(e.to_string().contains("webhook_secrets.generic"));
    }

    #[test]
    fn the_signed_webhook_id_is_the_delivery_id_and_svix_headers_are_read() {
        let ts = SPEC_TS.to_string();
        let s = app_secret(serde_json::json!({ "generic": SPEC_SECRET }));
        let def = AuthDef::standard("generic");
        for prefix in ["webhook", "svix"] {
            let h = header_map(&[
                (&format!("{prefix}-id"), SPEC_ID),
                (&format!("{prefix}-timestamp"), &ts),
                (&format!("{prefix}-signature"), SPEC_SIG),
            ]);
            assert_eq!(
                def.verify(&presented(&h, SPEC_BODY), &s),
                Ok(Admitted {
                    delivery_id: Some(SPEC_ID.into())
                }),
                "{prefix}"
            );
        }
        // With webhook-* present, svix-* is not read: no mixing of sets.
        let h = header_map(&[
            ("webhook-id", SPEC_ID),
            ("svix-timestamp", &ts),
            ("svix-signature", SPEC_SIG),
        ]);
        assert_eq!(
            def.precheck(&presented(&h, SPEC_BODY)),
            Err(AuthError::Signature(SigError::MissingHeader(
                "webhook-timestamp"
            )))
        );
    }

    #[test]
    fn an_unsigned_id_header_is_never_a_delivery_id() {
        let s = app_secret(serde_json::json!({ "sn": "snow-bearer-token-never-log" }));
        let def = from_value::<AuthDef>(
            "auth",
            &serde_json::json!({"scheme": "bearer", "secret": "sn"}),
        )
        .unwrap();
        let h = header_map(&[
            ("authorization", "Bearer snow-bearer-token-never-log"),
            ("webhook-id", "msg_chosen_by_anyone"),
        ]);
        assert_eq!(
            def.verify(&presented(&h, b"{}"), &s),
            Ok(Admitted { delivery_id: None })
        );
    }

    #[test]
    fn precheck_refuses_a_request_without_the_schemes_header() {
        let def = from_value::<AuthDef>("auth", &serde_json::json!(
            {"scheme": "hmac-sha256-hex", "header": "X-Hub-Signature", "prefix": "sha256=", "secret": "jira"}
        ))
        .unwrap();
        let bare = HeaderMap::new();
        assert_eq!(
            def.precheck(&presented(&bare, b"{}")),
            Err(AuthError::Signature(SigError::MissingHeader(
                "signature header"
            )))
        );
        let h = header_map(&[("x-hub-signature", "sha256=00")]);
        assert_eq!(def.precheck(&presented(&h, b"{}")), Ok(()));
        assert_eq!(
            AuthDef::standard("generic").precheck(&presented(&bare, b"{}")),
            Err(AuthError::Signature(SigError::MissingHeader("webhook-id")))
        );
    }

    #[test]
    fn bearer_tokens_of_any_length_compare_by_digest() {
        let s = secrets(&["a-token-of-sixteen+", "x"]);
        assert!(matches_any(b"a-token-of-sixteen+", &s));
        assert!(matches_any(b"x", &s));
        assert!(!matches_any(b"a-token-of-sixteen", &s));
        assert!(!matches_any(b"a-token-of-sixteen++", &s));
        assert!(!matches_any(b"", &secrets(&[""])));
    }

    fn def(v: Value) -> AuthDef {
        from_value::<AuthDef>("auth", &v).unwrap()
    }

    fn with_arn<'a>(h: &'a HeaderMap, arn: Option<&'a str>) -> Presented<'a> {
        Presented {
            caller_arn: arn,
            ..presented(h, b"{}")
        }
    }

    #[test]
    fn principal_patterns_match_any_run_at_a_star() {
        let p = |s: &str| PrincipalPattern(s.to_string());
        let arn = "arn:aws:sts::123456789012:assumed-role/soar-playbook/run-42";
        assert!(p(arn).matches(arn));
        assert!(p("*").matches(arn));
        assert!(p("arn:aws:sts::123456789012:assumed-role/soar-*/*").matches(arn));
        assert!(p("arn:aws:sts::*:assumed-role/*/run-42").matches(arn));
        assert!(!p("arn:aws:sts::123456789012:assumed-role/soar-playbook").matches(arn));
        assert!(!p("arn:aws:sts::123456789012:assumed-role/soar-*/run-4").matches(arn));
        assert!(!p("arn:aws:sts::210987654321:*").matches(arn));
        assert!(!p("a*a").matches("a"));
        assert!(p("a*a").matches("aa"));
    }

    #[test]
    fn basic_accepts_the_pair_refuses_others_and_rotates() {
        let s = app_secret(serde_json::json!({
            "sn": ["mde-offboard:new-password-0123456", "mde-offboard:old-password-0123456"]}));
        let d = def(serde_json::json!({"scheme": "basic", "secret": "sn"}));
        let basic = |pair: &str| format!("Basic {}", B64.encode(pair));
        for good in [
            "mde-offboard:new-password-0123456",
            "mde-offboard:old-password-0123456",
        ] {
            let h = header_map(&[("authorization", &basic(good))]);
            assert!(d.verify(&presented(&h, b"{}"), &s).is_ok(), "{good}");
        }
        for (value, want) in [
            (
                basic("mde-offboard:new-password-012345"),
                AuthError::Signature(SigError::NoMatch),
            ),
            (
                basic("other:new-password-0123456"),
                AuthError::Signature(SigError::NoMatch),
            ),
            (
                "Basic %%%".to_string(),
                AuthError::Signature(SigError::Malformed("authorization")),
            ),
            (
                "Bearer mde-offboard:new-password-0123456".to_string(),
                AuthError::Signature(SigError::Malformed("authorization")),
            ),
        ] {
            let h = header_map(&[("authorization", &value)]);
            assert_eq!(d.verify(&presented(&h, b"{}"), &s), Err(want), "{value}");
        }
        let bare = HeaderMap::new();
        assert_eq!(
            d.precheck(&presented(&bare, b"{}")),
            Err(AuthError::Signature(SigError::MissingHeader(
                "authorization"
            )))
        );
        // The key rules read the password part.
        for (weak, problem) in [
            ("mde-offboard:short", KeyProblem::Key(KeyError::TooShort)),
            ("no-colon-but-long-enough", KeyProblem::NotUserPassword),
        ] {
            let s = app_secret(serde_json::json!({ "sn": weak }));
            let h = header_map(&[("authorization", &basic(weak))]);
            assert_eq!(
                d.verify(&presented(&h, b"{}"), &s),
                Err(AuthError::WeakKey {
                    key: "sn".into(),
                    problem
                })
            );
        }
    }

    #[test]
    fn api_key_compares_the_whole_header_value() {
        let s = app_secret(
            serde_json::json!({"eb": ["eventbridge-key-new-0001", "eventbridge-key-old-0001"]}),
        );
        let d =
            def(serde_json::json!({"scheme": "api-key", "header": "X-API-Key", "secret": "eb"}));
        for (value, ok) in [
            ("eventbridge-key-new-0001", true),
            ("eventbridge-key-old-0001", true),
            ("eventbridge-key-new-000", false),
            ("eventbridge-key-new-00011", false),
            ("Bearer eventbridge-key-new-0001", false),
        ] {
            let h = header_map(&[("x-api-key", value)]);
            assert_eq!(d.verify(&presented(&h, b"{}"), &s).is_ok(), ok, "{value}");
        }
        let h = header_map(&[("authorization", "eventbridge-key-new-0001")]);
        assert_eq!(
            d.precheck(&presented(&h, b"{}")),
            Err(AuthError::Signature(SigError::MissingHeader(
                "api key header"
            )))
        );
    }

    #[test]
    fn iam_matches_the_context_caller_and_needs_no_secret() {
        let d = def(serde_json::json!({"scheme": "iam",
            "principals": ["arn:aws:iam::123456789012:user/xsoar", "arn:aws:sts::123456789012:assumed-role/soar-*/*"]}));
        let no_secrets = app_secret(serde_json::json!({}));
        let h = HeaderMap::new();
        for (arn, want) in [
            (Some("arn:aws:iam::123456789012:user/xsoar"), Ok(())),
            (
                Some("arn:aws:sts::123456789012:assumed-role/soar-pb/run-1"),
                Ok(()),
            ),
            (
                Some("arn:aws:iam::123456789012:user/xsoar2"),
                Err(AuthError::PrincipalNotAllowed),
            ),
            (None, Err(AuthError::NoIamIdentity)),
        ] {
            assert_eq!(
                d.verify(&with_arn(&h, arn), &no_secrets).map(|_| ()),
                want,
                "{arn:?}"
            );
        }
        assert_eq!(
            d.precheck(&with_arn(&h, None)),
            Err(AuthError::NoIamIdentity)
        );
        // A header cannot stand in for the context.
        let forged = header_map(&[("x-amz-user-arn", "arn:aws:iam::123456789012:user/xsoar")]);
        assert_eq!(
            d.precheck(&with_arn(&forged, None)),
            Err(AuthError::NoIamIdentity)
        );
    }

    #[test]
    fn a_list_admits_by_any_scheme() {
        let d = def(serde_json::json!([
            {"scheme": "iam", "principals": ["arn:aws:iam::123456789012:user/xsoar"]},
            {"scheme": "api-key", "header": "x-api-key", "secret": "soar"}
        ]));
        let s = app_secret(serde_json::json!({"soar": "soar-api-key-000000001"}));
        let key = header_map(&[("x-api-key", "soar-api-key-000000001")]);
        let wrong = header_map(&[("x-api-key", "soar-api-key-000000002")]);
        let none = HeaderMap::new();
        assert!(d.verify(&with_arn(&key, None), &s).is_ok());
        assert!(
            d.verify(
                &with_arn(&none, Some("arn:aws:iam::123456789012:user/xsoar")),
                &s
            )
            .is_ok()
        );
        assert_eq!(
            d.verify(&with_arn(&wrong, None), &s),
            Err(AuthError::Signature(SigError::NoMatch))
        );
        assert!(d.precheck(&with_arn(&none, None)).is_err());
        // A broken key anywhere in the list closes the source.
        let weak = app_secret(serde_json::json!({"soar": "short"}));
        assert!(matches!(
            d.verify(
                &with_arn(&none, Some("arn:aws:iam::123456789012:user/xsoar")),
                &weak
            ),
            Err(AuthError::WeakKey { .. })
        ));
    }

    #[test]
    fn definitions_name_the_field_at_fault() {
        for (v, field) in [
            (serde_json::json!({"scheme": "iam"}), "auth.principals"),
            (
                serde_json::json!({"scheme": "iam", "principals": ["*"], "secret": "x"}),
                "auth.secret",
            ),
            (
                serde_json::json!({"scheme": "api-key", "secret": "x"}),
                "auth.header",
            ),
            (
                serde_json::json!({"scheme": "oauth", "secret": "x"}),
                "auth.scheme",
            ),
            (
                serde_json::json!([{"scheme": "bearer", "secret": "x"}, {"scheme": "basic"}]),
                "auth[1].secret",
            ),
            (serde_json::json!([]), "auth"),
        ] {
            assert_eq!(
                from_value::<AuthDef>("auth", &v).unwrap_err().0,
                field,
                "{v}"
            );
        }
        assert_eq!(
            AuthDef::parse_generic(
                &serde_json::json!({"auth": {"scheme": "bearer", "secret": "g"}, "ticket": "/t"})
            )
            .unwrap_err()
            .0,
            "ticket"
        );
        assert_eq!(
            AuthDef::parse_generic(&serde_json::json!({})).unwrap(),
            AuthDef::standard("generic")
        );
    }

    /// What a sender of each scheme writes (`Scheme::sign`, the local run's
    /// signer) is what that scheme admits.
    #[test]
    fn every_scheme_admits_what_it_signs() {
        let key = "a-long-random-shared-secret-1234";
        let secret = app_secret(serde_json::json!({"k": key}));
        let body = br#"{"ticket":"T-1"}"#;
        for def in [
            serde_json::json!({"scheme": "standard-webhooks", "secret": "k"}),
            serde_json::json!({"scheme": "hmac-sha256-hex", "header": "x-sig", "prefix": "sha256=", "secret": "k"}),
            serde_json::json!({"scheme": "bearer", "secret": "k"}),
            serde_json::json!({"scheme": "basic", "secret": "k"}),
            serde_json::json!({"scheme": "api-key", "header": "x-key", "secret": "k"}),
        ] {
            let auth: AuthDef = crate::support::config_de::from_value("auth", &def).unwrap();
            let key = if def["scheme"] == "basic" {
                "user:a-long-random-password"
            } else {
                key
            };
            let secret = if def["scheme"] == "basic" {
                app_secret(serde_json::json!({"k": key}))
            } else {
                secret.clone()
            };
            let sent = auth.schemes()[0].sign(key, "msg_1", SPEC_TS, body).unwrap();
            let pairs: Vec<(&str, &str)> =
                sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let h = header_map(&pairs);
            assert!(auth.verify(&presented(&h, body), &secret).is_ok(), "{def}");
        }
    }

    mod entra {
        use super::*;
        use crate::domain::signing_keys::{EntraTenant, KeySet, TenantGuid};
        use mde_testkit::entra::{
            AUDIENCE_ID, AUDIENCE_URI, CALLER_APPID, CALLER_OID, OTHER_TENANT, TestKey,
            hs256_token, unix_now, unsigned_token, v1_claims, v2_claims,
        };
        use serde_json::json;
        use std::sync::Arc;

        const TENANT: &str = "00000000-0000-0000-0000-000000000000";
        const LOGIN: &str = "https://login.microsoftonline.com";

        fn tenant() -> EntraTenant {
            EntraTenant::new(LOGIN, TenantGuid::parse(TENANT).unwrap())
        }

        fn keys_of(keys: &[&TestKey], issuer: &str) -> KeySet {
            let jwks: Vec<Value> = keys.iter().map(|k| k.jwk(issuer)).collect();
            KeySet::parse(json!({ "keys": jwks }).to_string().as_bytes()).unwrap()
        }

        fn published() -> KeySet {
            keys_of(&[TestKey::shared()], &format!("{LOGIN}/{TENANT}/v2.0"))
        }

        fn check(token: &str) -> Result<(), TokenProblem> {
            check_with(token, &published())
        }

        fn check_with(token: &str, keys: &KeySet) -> Result<(), TokenProblem> {
            verify_entra_token(
                token,
                &tenant(),
                keys,
                &[AUDIENCE_URI.to_string(), AUDIENCE_ID.to_string()],
                &[CALLER_OID.to_string()],
                unix_now(),
            )
        }

        fn v1() -> Value {
            v1_claims(TENANT, AUDIENCE_URI)
        }

        fn v2() -> Value {
            v2_claims(LOGIN, TENANT, AUDIENCE_ID)
        }

        fn with(mut claims: Value, key: &str, value: Value) -> Value {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value;
            }
            claims
        }

        #[test]
        fn v1_and_v2_app_tokens_of_the_tenant_are_accepted() {
            let key = TestKey::shared();
            assert_eq!(check(&key.token(&v1())), Ok(()));
            assert_eq!(check(&key.token(&v2())), Ok(()));
            // The key set's issuer as the tenant-independent endpoint writes it.
            let templated = keys_of(&[key], &format!("{LOGIN}/{{tenantid}}/v2.0"));
            assert_eq!(check_with(&key.token(&v1()), &templated), Ok(()));
            // A key without an issuer (v1.0 key sets) binds nothing.
            let mut bare = key.jwk("");
            bare.as_object_mut().unwrap().remove("issuer");
            let bare = KeySet::parse(json!({"keys": [bare]}).to_string().as_bytes()).unwrap();
            assert_eq!(check_with(&key.token(&v2()), &bare), Ok(()));
        }

        #[test]
        fn the_caller_is_the_oid_else_the_client_id_of_the_token_version() {
            let key = TestKey::shared();
            let only_client = |c: Value| with(c, "oid", Value::Null);
            // No oid: v1 reads appid, v2 reads azp.
            let principals = [CALLER_APPID.to_string()];
            let run = |claims: &Value| {
                verify_entra_token(
                    &key.token(claims),
                    &tenant(),
                    &published(),
                    &[AUDIENCE_URI.to_string(), AUDIENCE_ID.to_string()],
                    &principals,
                    unix_now(),
                )
            };
            assert_eq!(run(&only_client(v1())), Ok(()));
            assert_eq!(run(&only_client(v2())), Ok(()));
            // A v2 token's appid (there is none in real ones) is not read.
            let v2_appid = with(
                with(only_client(v2()), "azp", Value::Null),
                "appid",
                json!(CALLER_APPID),
            );
            assert_eq!(run(&v2_appid), Err(TokenProblem::MissingClaim("oid")));
            // With an oid, the oid decides.
            assert!(
                matches!(run(&v1()), Err(TokenProblem::CallerNotAllowed(c)) if c.contains(CALLER_OID))
            );
        }

        #[test]
        fn every_check_refuses_on_its_own() {
            let key = TestKey::shared();
            let now = unix_now();
            let other_key = TestKey::generate("fake-tenant-key-1");
            let cases: Vec<(&str, String, TokenProblem)> = vec![
                (
                    "signed by another key with the published kid",
                    other_key.token(&v1()),
                    TokenProblem::BadSignature("\"fake-tenant-key-1\"".into()),
                ),
                (
                    "alg none",
                    unsigned_token(&v1()),
                    TokenProblem::Algorithm("\"none\"".into()),
                ),
                (
                    "HS256 with the public key as secret",
                    hs256_token(key.kid(), &key.public_der(), &v1()),
                    TokenProblem::Algorithm("\"HS256\"".into()),
                ),
                (
                    "RS256 header over another algorithm's signature",
                    {
                        let t = hs256_token(key.kid(), &key.public_der(), &v1());
                        let sig = t.rsplit('.').next().unwrap().to_string();
                        let good = key.token(&v1());
                        let (msg, _) = good.rsplit_once('.').unwrap();
                        format!("{msg}.{sig}")
                    },
                    TokenProblem::BadSignature("\"fake-tenant-key-1\"".into()),
                ),
                (
                    "expired beyond the leeway",
                    key.token(&with(v1(), "exp", json!(now - 301))),
                    TokenProblem::Expired(now - 301),
                ),
                (
                    "not yet valid beyond the leeway",
                    key.token(&with(v2(), "nbf", json!(now + 400))),
                    TokenProblem::NotYetValid(now + 400),
                ),
                (
                    "no exp",
                    key.token(&with(v1(), "exp", Value::Null)),
                    TokenProblem::MissingClaim("exp"),
                ),
                (
                    "no nbf",
                    key.token(&with(v1(), "nbf", Value::Null)),
                    TokenProblem::MissingClaim("nbf"),
                ),
                (
                    "another API's audience",
                    key.token(&with(v1(), "aud", json!("https://graph.microsoft.com"))),
                    TokenProblem::Audience("\"https://graph.microsoft.com\"".into()),
                ),
                (
                    "another tenant's token (same Entra keys)",
                    key.token(&v1_claims(OTHER_TENANT, AUDIENCE_URI)),
                    TokenProblem::Issuer(format!("\"https://sts.windows.net/{OTHER_TENANT}/\"")),
                ),
                (
                    "the tenant's issuer, another tid",
                    key.token(&with(v1(), "tid", json!(OTHER_TENANT))),
                    TokenProblem::Tenant(format!("\"{OTHER_TENANT}\"")),
                ),
                (
                    "another cloud's v2 issuer",
                    key.token(&v2_claims(
                        "https://login.microsoftonline.us",
                        TENANT,
                        AUDIENCE_ID,
                    )),
                    TokenProblem::Issuer(format!(
                        "\"https://login.microsoftonline.us/{TENANT}/v2.0\""
                    )),
                ),
                (
                    "a caller not listed",
                    key.token(&with(
                        v2(),
                        "oid",
                        json!("11111111-2222-3333-4444-555555555555"),
                    )),
                    TokenProblem::CallerNotAllowed(
                        "\"11111111-2222-3333-4444-555555555555\"".into(),
                    ),
                ),
                (
                    "an unknown kid",
                    TestKey::generate("rolled-key-2").token(&v1()),
                    TokenProblem::UnknownKey("\"rolled-key-2\"".into()),
                ),
                (
                    "not a JWT",
                    "eyJhbGciOiJSUzI1NiJ9.e30".into(),
                    TokenProblem::Malformed("not three dot-separated parts"),
                ),
            ];
            for (what, token, want) in cases {
                assert_eq!(check(&token), Err(want), "{what}");
            }
            // Within the leeway both ways.
            assert_eq!(
                check(&key.token(&with(v1(), "exp", json!(now - 299)))),
                Ok(())
            );
            assert_eq!(
                check(&key.token(&with(v1(), "nbf", json!(now + 299)))),
                Ok(())
            );
            // A key Entra gives to the consumer (MSA) tenant signs only for it.
            let msa = keys_of(
                &[key],
                "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
            );
            assert!(matches!(
                check_with(&key.token(&v1()), &msa),
                Err(TokenProblem::KeyIssuer(_))
            ));
        }

        fn entra_def() -> AuthDef {
            def(
                json!({"scheme": "entra-jwt", "audiences": [AUDIENCE_URI], "principals": [CALLER_OID.to_uppercase()]}),
            )
        }

        fn secret_for(tenant_id: &str) -> AppSecret {
            AppSecret::parse(
                &json!({"tenant_id": tenant_id, "client_id": "c", "client_secret": "s"})
                    .to_string(),
            )
            .unwrap()
        }

        #[test]
        fn the_scheme_fetches_keys_only_for_a_token_it_could_accept() {
            let key = TestKey::shared();
            let d = entra_def();
            let s = secret_for(&TENANT.to_uppercase());
            let bearer = |t: &str| header_map(&[("authorization", &format!("Bearer {t}"))]);
            let h = bearer(&key.token(&v1()));
            let wanted = d.keys_wanted(&presented(&h, b"{}"), &s, LOGIN);
            assert_eq!(wanted, vec![(tenant(), key.kid().to_string())]);
            for t in [
                unsigned_token(&v1()),
                hs256_token(key.kid(), b"k", &v1()),
                "opaque-token".into(),
            ] {
                assert!(
                    d.keys_wanted(&presented(&bearer(&t), b"{}"), &s, LOGIN)
                        .is_empty(),
                    "{t}"
                );
            }
            // Admitted with the keys; refused as unavailable without them.
            let mut ring = KeyRing::default();
            ring.insert(tenant(), Arc::new(published()));
            let now = Presented {
                now: unix_now(),
                ..presented(&h, b"{}")
            };
            assert_eq!(
                d.verify_with(&now, &s, &ring),
                Ok(Admitted { delivery_id: None })
            );
            assert_eq!(d.verify(&now, &s), Err(AuthError::KeysUnavailable));
            // No header: refused before anything is fetched.
            let bare = HeaderMap::new();
            assert_eq!(
                d.precheck(&presented(&bare, b"{}")),
                Err(AuthError::Signature(SigError::MissingHeader(
                    "authorization"
                )))
            );
            // A secret whose tenant_id is no GUID: a configuration error.
            let named = secret_for("contoso.onmicrosoft.com");
            let e = d.verify_with(&now, &named, &ring).unwrap_err();
            assert_eq!(e, AuthError::NoEntraTenant);
            assert!(e.is_config_error());
            // The scheme's own tenant_id wins over the secret's.
            let own = def(json!({"scheme": "entra-jwt", "audiences": [AUDIENCE_URI],
                "principals": [CALLER_OID], "tenant_id": TENANT}));
            assert!(own.verify_with(&now, &named, &ring).is_ok());
        }

        #[test]
        fn unavailable_keys_outrank_other_refusals_but_not_an_admission() {
            let key = TestKey::shared();
            let list = def(json!([
                {"scheme": "bearer", "secret": "b"},
                {"scheme": "entra-jwt", "audiences": [AUDIENCE_URI], "principals": [CALLER_OID]}
            ]));
            let s = AppSecret::parse(
                &json!({"tenant_id": TENANT, "client_id": "c", "client_secret": "s",
                "webhook_secrets": {"b": "a-static-bearer-token-0001"}})
                .to_string(),
            )
            .unwrap();
            let jwt = header_map(&[("authorization", &format!("Bearer {}", key.token(&v1())))]);
            let p = Presented {
                now: unix_now(),
                ..presented(&jwt, b"{}")
            };
            assert_eq!(list.verify(&p, &s), Err(AuthError::KeysUnavailable));
            let fixed = header_map(&[("authorization", "Bearer a-static-bearer-token-0001")]);
            assert!(list.verify(&presented(&fixed, b"{}"), &s).is_ok());
        }

        #[test]
        fn definitions_name_the_field_at_fault() {
            for (v, field) in [
                (
                    json!({"scheme": "entra-jwt", "principals": [CALLER_OID]}),
                    "auth.audiences",
                ),
                (
                    json!({"scheme": "entra-jwt", "audiences": [], "principals": [CALLER_OID]}),
                    "auth.audiences",
                ),
                (
                    json!({"scheme": "entra-jwt", "audiences": [""], "principals": [CALLER_OID]}),
                    "auth.audiences",
                ),
                (
                    json!({"scheme": "entra-jwt", "audiences": [AUDIENCE_URI]}),
                    "auth.principals",
                ),
                (
                    json!({"scheme": "entra-jwt", "audiences": [AUDIENCE_URI], "principals": ["Logic App"]}),
                    "auth.principals",
                ),
                (
                    json!({"scheme": "entra-jwt", "audiences": [AUDIENCE_URI], "principals": [CALLER_OID], "tenant_id": "contoso.com"}),
                    "auth.tenant_id",
                ),
                (
                    json!({"scheme": "entra-jwt", "audiences": [AUDIENCE_URI], "principals": [CALLER_OID], "secret": "x"}),
                    "auth.secret",
                ),
            ] {
                let (at, reason) = from_value::<AuthDef>("auth", &v).unwrap_err();
                let named = field.trim_start_matches("auth.");
                assert!(
                    at == field || (at == "auth" && reason.contains(&format!("'{named}'"))),
                    "{v}: {at}: {reason}"
                );
            }
            assert!(entra_def().schemes()[0].sign("k", "id", 0, b"{}").is_err());
        }
    }
}
