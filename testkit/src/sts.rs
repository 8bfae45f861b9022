//! A fake of AWS STS `GetWebIdentityToken` (IAM outbound identity
//! federation), faithful to what the function relies on: the awsQuery
//! protocol (a form POST with `Action` and `Version`), a SigV4
//! `Authorization` header required, the XML answer and error shapes of the
//! real service, and a JWT with `iss`, `sub` (the caller's role ARN), `aud`,
//! `iat`, `nbf` and `exp`. Point `AWS_ENDPOINT_URL_STS` at `url()`.
//!
//! The JWT's signature is not RSA: the fake login trusts exactly the tokens
//! this fake issued (`issued`), which is what verifying the issuer's JWKS
//! amounts to.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// The account and role the fake's caller is.
pub const ACCOUNT_ID: &str = "123456789012";
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/mde-offboard-FunctionRole";
/// The account's issuer, in the shape IAM gives it.
pub const ISSUER: &str = "https://4f2c9b1e-7a3d-4e8f-9c61-2b5d8e0a7f43.tokens.sts.global.api.aws";

/// A scripted refusal, as the real STS answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsFault {
    /// The account has not enabled outbound identity federation.
    FederationDisabled,
    /// The role policy does not allow the call.
    AccessDenied,
    /// Throttled.
    Throttling,
}

/// One request the fake saw.
#[derive(Debug, Clone)]
pub struct StsCall {
    pub form: HashMap<String, String>,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    faults: VecDeque<StsFault>,
    calls: Vec<StsCall>,
    /// Every JWT issued, with its claims.
    issued: Vec<(String, Value)>,
    /// Replaces the lifetime the caller asked for.
    lifetime_override: Option<u64>,
    seq: u64,
}

#[derive(Clone)]
pub struct FakeSts {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

impl FakeSts {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake STS");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake state")
    }

    /// The next call is refused with `fault`; faults queue up in order.
    pub fn fault(&self, fault: StsFault) {
        self.lock().faults.push_back(fault);
    }

    /// Tokens last `secs` whatever the caller asked for.
    pub fn set_lifetime(&self, secs: u64) {
        self.lock().lifetime_override = Some(secs);
    }

    pub fn calls(&self) -> Vec<StsCall> {
        self.lock().calls.clone()
    }

    /// Calls answered with a token.
    pub fn tokens_issued(&self) -> usize {
        self.lock().issued.len()
    }

    /// The JWTs issued so far.
    pub fn issued(&self) -> Vec<String> {
        self.lock().issued.iter().map(|(t, _)| t.clone()).collect()
    }

    /// The claims of `jwt` when this fake issued it: the login's check that
    /// the signature is the issuer's.
    pub fn claims_of(&self, jwt: &str) -> Option<Value> {
        self.lock()
            .issued
            .iter()
            .find(|(t, _)| t == jwt)
            .map(|(_, c)| c.clone())
    }
}

type Shared = Arc<Mutex<Inner>>;

async fn handle(
    axum::extract::State(st): axum::extract::State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = crate::defender::form_fields(&body);
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let r = answer(&st, &form, authorization.as_deref());
    let status = r.status().as_u16();
    st.lock().expect("fake state").calls.push(StsCall {
        form,
        authorization,
        status,
    });
    r
}

fn answer(st: &Shared, form: &HashMap<String, String>, authorization: Option<&str>) -> Response {
    // A SigV4 signature scoped to STS: the real service refuses anything
    // else before reading the action.
    let signed = authorization.is_some_and(|a| {
        a.starts_with("AWS4-HMAC-SHA256 Credential=")
            && a.contains("/sts/aws4_request")
            && a.contains("SignedHeaders=")
            && a.contains("Signature=")
    });
    if !signed {
        return error(
            403,
            "Sender",
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
        );
    }
    if form.get("Action").map(String::as_str) != Some("GetWebIdentityToken")
        || form.get("Version").map(String::as_str) != Some("2011-06-15")
    {
        return error(
            400,
            "Sender",
            "InvalidAction",
            "Could not find operation for this action and version",
        );
    }
    let mut inner = st.lock().expect("fake state");
    if let Some(f) = inner.faults.pop_front() {
        return match f {
            StsFault::FederationDisabled => error(
                400,
                "Sender",
                "OutboundWebIdentityFederationDisabledException",
                "The outbound web identity federation feature is not enabled for this account.",
            ),
            StsFault::AccessDenied => error(
                403,
                "Sender",
                "AccessDenied",
                &format!(
                    "User: arn:aws:sts::{ACCOUNT_ID}:assumed-role/mde-offboard-FunctionRole/mde-offboard is not authorized to perform: sts:GetWebIdentityToken"
                ),
            ),
            StsFault::Throttling => error(400, "Sender", "Throttling", "Rate exceeded"),
        };
    }
    let audiences: Vec<String> = (1..=10)
        .map_while(|i| form.get(&format!("Audience.member.{i}")).cloned())
        .collect();
    if audiences.is_empty() {
        return error(
            400,
            "Sender",
            "ValidationError",
            "1 validation error detected: Value null at 'audience' failed to satisfy constraint: Member must not be null",
        );
    }
    let alg = form.get("SigningAlgorithm").map(String::as_str);
    if !matches!(alg, Some("RS256" | "ES384")) {
        return error(
            400,
            "Sender",
            "ValidationError",
            "Value at 'signingAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [RS256, ES384]",
        );
    }
    let asked = match form.get("DurationSeconds") {
        None => 300,
        Some(v) => match v.parse::<u64>() {
            Ok(d) if (60..=3600).contains(&d) => d,
            _ => {
                return error(
                    400,
                    "Sender",
                    "ValidationError",
                    "Value at 'durationSeconds' failed to satisfy constraint: Member must have value between 60 and 3600",
                );
            }
        },
    };
    let lifetime = inner.lifetime_override.unwrap_or(asked);
    inner.seq += 1;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let exp = now + lifetime;
    let aud = if audiences.len() == 1 {
        json!(audiences[0])
    } else {
        json!(audiences)
    };
    let claims = json!({
        "iss": ISSUER,
        "sub": ROLE_ARN,
        "aud": aud,
        "iat": now,
        "nbf": now,
        "exp": exp,
        "jti": format!("fake-jti-{}", inner.seq),
        "https://sts.amazonaws.com/": {"aws_account": ACCOUNT_ID},
    });
    let header = json!({"alg": alg, "typ": "JWT", "kid": "fake-key-1"});
    let jwt = format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(format!("fake-signature-{}", inner.seq).as_bytes()),
    );
    inner.issued.push((jwt.clone(), claims));
    drop(inner);
    let body = format!(
        "<GetWebIdentityTokenResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <GetWebIdentityTokenResult>\n    <WebIdentityToken>{jwt}</WebIdentityToken>\n    <Expiration>{}</Expiration>\n  </GetWebIdentityTokenResult>\n  <ResponseMetadata>\n    <RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId>\n  </ResponseMetadata>\n</GetWebIdentityTokenResponse>\n",
        iso8601(exp)
    );
    xml(200, body)
}

fn xml(status: u16, body: String) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "text/xml")],
        body,
    )
        .into_response()
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> Response {
    xml(
        status,
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>{kind}</Type>\n    <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n  <RequestId>0b5c3d3e-EXAMPLE</RequestId>\n</ErrorResponse>\n"
        ),
    )
}

/// Seconds since the epoch as `2026-12-01T22:05:00Z` (civil from days).
fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url, as JWTs use.
pub fn b64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(B64URL[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded base64url; `None` on any other byte.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = B64URL.iter().position(|b| *b == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

/// The claims of a JWT, read without checking its signature.
pub fn jwt_claims(jwt: &str) -> Option<Value> {
    let mut parts = jwt.split('.');
    let (_, payload, _, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    if rest.is_some() {
        return None;
    }
    serde_json::from_slice(&b64url_decode(payload)?).ok()
}

/// How long the fake's tokens are kept by a test that needs a number.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_and_dates_are_civil() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "{\"a\":\"é\"}",
        ] {
            assert_eq!(b64url_decode(&b64url(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(b64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_796_162_400), "2026-12-01T22:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }
}
