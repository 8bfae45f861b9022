//! Webhook authentication: who is calling.
//!
//! Pure functions over headers, raw body bytes, secrets and the current time.
//! Every comparison of a secret-derived value is constant-time (`hmac`'s
//! `verify_slice` and `subtle`), and the reasons returned never contain a
//! signature or a secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Standard Webhooks' tolerance for clock skew and replay.
pub const TOLERANCE_SECONDS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is malformed")]
    Malformed(&'static str),
    #[error("webhook-timestamp is more than 300 seconds from now")]
    StaleTimestamp,
    #[error("no signature matches")]
    NoMatch,
    #[error("no webhook secret is configured for '{0}'")]
    NoSecret(String),
}

/// The key bytes of a Standard Webhooks secret: base64 after `whsec_`, or the
/// raw bytes of a secret without that prefix.
pub fn standard_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => B64
            .decode(b64.trim())
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    }
}

/// Headers a Standard Webhooks request carries.
#[derive(Debug, Clone, Copy)]
pub struct StandardHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Signs `{id}.{timestamp}.{body}`, for tests, the local sender and docs.
pub fn standard_sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = standard_mac(&standard_key(secret), id, timestamp, body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

fn standard_mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Verifies a Standard Webhooks request against any of `secrets` (several
/// during a rotation). `now` is unix seconds.
pub fn verify_standard(
    h: StandardHeaders<'_>,
    body: &[u8],
    secrets: &[String],
    now: i64,
) -> Result<(), AuthError> {
    let id = h.id.ok_or(AuthError::MissingHeader("webhook-id"))?;
    let ts_raw = h
        .timestamp
        .ok_or(AuthError::MissingHeader("webhook-timestamp"))?;
    let sig = h
        .signature
        .ok_or(AuthError::MissingHeader("webhook-signature"))?;
    if id.is_empty() {
        return Err(AuthError::Malformed("webhook-id"));
    }
    let ts: i64 = ts_raw
        .trim()
        .parse()
        .map_err(|_| AuthError::Malformed("webhook-timestamp"))?;
    // Checked: `now - i64::MIN` overflows, and a wrapped difference would
    // let an absurd timestamp through as fresh (found by the fuzzer).
    let fresh = now
        .checked_sub(ts)
        .is_some_and(|d| d.unsigned_abs() <= TOLERANCE_SECONDS as u64);
    if !fresh {
        return Err(AuthError::StaleTimestamp);
    }
    // Candidates that are not v1 or not base64 are skipped, not fatal: the
    // spec lets senders add signatures of other versions.
    let candidates: Vec<Vec<u8>> = sig
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| B64.decode(b64).ok())
        .collect();
    if candidates.is_empty() {
        return Err(AuthError::NoMatch);
    }
    let mut matched = false;
    for secret in secrets {
        let mac = standard_mac(&standard_key(secret), id, ts, body);
        for c in &candidates {
            // `verify_slice` is constant-time; keep looping so timing does
            // not tell which secret or entry matched.
            matched |= mac.clone().verify_slice(c).is_ok();
        }
    }
    if matched {
        Ok(())
    } else {
        Err(AuthError::NoMatch)
    }
}

/// HMAC-SHA256 of the raw body, lowercase hex, after `prefix` in one
/// header; the header may hold several comma-separated values (PagerDuty
/// sends one per active secret).
pub fn verify_hmac_hex(
    header_value: Option<&str>,
    header_name: &'static str,
    prefix: &str,
    body: &[u8],
    secrets: &[String],
) -> Result<(), AuthError> {
    let value = header_value.ok_or(AuthError::MissingHeader(header_name))?;
    let candidates: Vec<Vec<u8>> = value
        .split(',')
        .map(str::trim)
        .filter_map(|v| v.strip_prefix(prefix))
        .filter_map(decode_hex)
        .collect();
    if candidates.is_empty() {
        return Err(AuthError::NoMatch);
    }
    let mut matched = false;
    for secret in secrets {
        let mut mac =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(body);
        for c in &candidates {
            matched |= mac.clone().verify_slice(c).is_ok();
        }
    }
    if matched {
        Ok(())
    } else {
        Err(AuthError::NoMatch)
    }
}

/// Computes the hex HMAC-SHA256 a sender would put after its prefix.
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `Authorization: Bearer <secret>`, compared in constant time.
pub fn verify_bearer(authorization: Option<&str>, secrets: &[String]) -> Result<(), AuthError> {
    let value = authorization.ok_or(AuthError::MissingHeader("authorization"))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(AuthError::Malformed("authorization"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("authorization"));
    }
    let token = token.trim().as_bytes();
    let mut matched = subtle::Choice::from(0);
    for secret in secrets {
        matched |= token.ct_eq(secret.as_bytes());
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(AuthError::NoMatch)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    // `from_str_radix` accepts a leading '+': only hex digits are hex here.
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn secrets(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn signs_the_spec_test_vector() {
        assert_eq!(
            standard_sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY),
            SPEC_SIG
        );
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
            Err(AuthError::NoMatch)
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
                Err(AuthError::StaleTimestamp)
            );
        }
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        let s = secrets(&[SPEC_SECRET]);
        for ts in [i64::MIN, i64::MAX, -1] {
            let ts_text = ts.to_string();
            let sig = standard_sign(SPEC_SECRET, SPEC_ID, ts, SPEC_BODY);
            assert_eq!(
                verify_standard(headers(&sig, &ts_text), SPEC_BODY, &s, SPEC_TS),
                Err(AuthError::StaleTimestamp),
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
            Err(AuthError::NoMatch)
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
            Err(AuthError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            verify_standard(headers(SPEC_SIG, "soon"), SPEC_BODY, &s, SPEC_TS),
            Err(AuthError::Malformed("webhook-timestamp"))
        );
        assert_eq!(
            verify_standard(headers("v1,", &ts), SPEC_BODY, &s, SPEC_TS),
            Err(AuthError::NoMatch)
        );
        assert_eq!(
            verify_standard(headers(SPEC_SIG, &ts), SPEC_BODY, &[], SPEC_TS),
            Err(AuthError::NoMatch)
        );
    }

    #[test]
    fn a_secret_without_prefix_is_raw_bytes() {
        assert_eq!(standard_key("plain"), b"plain");
        let sig = standard_sign("plain", "id", 10, b"{}");
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
        assert!(
            verify_hmac_hex(
                Some(&header),
                "x-pagerduty-signature",
                "v1=",
                body,
                &secrets(&["s3cret"])
            )
            .is_ok()
        );
        assert_eq!(
            verify_hmac_hex(Some(&header), "x", "v1=", body, &secrets(&["other"])),
            Err(AuthError::NoMatch)
        );
        assert_eq!(
            verify_hmac_hex(Some(&good), "x", "sha256=", body, &secrets(&["s3cret"])),
            Err(AuthError::NoMatch)
        );
        assert_eq!(
            verify_hmac_hex(
                None,
                "x-hub-signature",
                "sha256=",
                body,
                &secrets(&["s3cret"])
            ),
            Err(AuthError::MissingHeader("x-hub-signature"))
        );
    }

    #[test]
    fn hex_is_canonical_digits_only() {
        assert_eq!(decode_hex("0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_hex("+a"), None);
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
    }

    #[test]
    fn bearer_matches_exactly() {
        let s = secrets(&["tok-new", "tok-old"]);
        assert!(verify_bearer(Some("Bearer tok-old"), &s).is_ok());
        assert!(verify_bearer(Some("bearer tok-new"), &s).is_ok());
        assert_eq!(
            verify_bearer(Some("Bearer tok"), &s),
            Err(AuthError::NoMatch)
        );
        assert_eq!(
            verify_bearer(Some("Basic tok-new"), &s),
            Err(AuthError::Malformed("authorization"))
        );
        assert_eq!(
            verify_bearer(None, &s),
            Err(AuthError::MissingHeader("authorization"))
        );
        assert_eq!(
            verify_bearer(Some("Bearer "), &s),
            Err(AuthError::Malformed("authorization"))
        );
        assert_eq!(
            verify_bearer(Some("Bearer tok-new"), &[]),
            Err(AuthError::NoMatch)
        );
    }
}
