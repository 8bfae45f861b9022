//! Standard Webhooks signatures, after svix's `Webhook` (`new`, `sign`,
//! `verify`): `whsec_` secrets, `v1,<base64>` HMAC-SHA256 over
//! `{id}.{timestamp}.{body}`, and a constant-time comparison of every key
//! against every signature a request carries. Also the key rule every MAC
//! key here follows, and the HMAC-SHA256 the other schemes share.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD as B64;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::support::redacted::Redacted;

pub type HmacSha256 = Hmac<Sha256>;

/// Standard Webhooks' tolerance for clock skew and replay, in seconds.
pub const TOLERANCE_SECONDS: i64 = 300;

/// Least key material a MAC key must hold, in bytes: a shorter key is
/// guessable.
pub const MIN_KEY_LEN: usize = 16;

/// Base64 as the official libraries read `whsec_` secrets: Python's
/// `b64decode(secret + "==")` takes padded and unpadded text alike and
/// ignores stray trailing bits.
pub const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Why a secret's value is not a usable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is not base64 after 'whsec_'")]
    NotBase64,
    #[error("holds fewer than {MIN_KEY_LEN} bytes of key")]
    TooShort,
}

/// Why a request's signature was refused; the header named is the
/// `webhook-*` one, whichever set the request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is malformed")]
    Malformed(&'static str),
    #[error("webhook-timestamp is more than {TOLERANCE_SECONDS} seconds from now")]
    StaleTimestamp,
    #[error("no signature matches")]
    NoMatch,
}

/// HMAC-SHA256 keyed with `key` over `parts` in turn, not yet finalized.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Whether any of `macs` matches any of `candidates`. Every pair is
/// compared, each in constant time, so timing tells neither which key nor
/// which candidate matched.
pub fn any_matches(macs: impl IntoIterator<Item = HmacSha256>, candidates: &[Vec<u8>]) -> bool {
    let mut matched = false;
    for mac in macs {
        for c in candidates {
            matched |= mac.clone().verify_slice(c).is_ok();
        }
    }
    matched
}

/// The key bytes of a secret: base64 after `whsec_` (padded or not), or
/// the raw bytes of a secret without that prefix. An undecodable `whsec_`
/// value is an error, never raw bytes: falling back would turn a typo into
/// a key nobody chose.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, KeyError> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => LENIENT_B64
            .decode(b64.trim())
            .map_err(|_| KeyError::NotBase64),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// As `secret_key`, refusing a key of fewer than `MIN_KEY_LEN` bytes.
pub fn strong_key(secret: &str) -> Result<Vec<u8>, KeyError> {
    let key = secret_key(secret)?;
    if key.len() < MIN_KEY_LEN {
        return Err(KeyError::TooShort);
    }
    Ok(key)
}

/// Headers a Standard Webhooks request carries.
#[derive(Debug, Clone, Copy)]
pub struct StandardHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

impl<'a> StandardHeaders<'a> {
    /// `webhook-*`, or Svix's `svix-*` (the same scheme under its older
    /// names) when none of the `webhook-*` headers is there.
    pub fn from_headers(headers: &'a HeaderMap) -> Self {
        let get = |name: String| headers.get(name).and_then(|v| v.to_str().ok());
        let set = |prefix: &str| Self {
            id: get(format!("{prefix}-id")),
            timestamp: get(format!("{prefix}-timestamp")),
            signature: get(format!("{prefix}-signature")),
        };
        let any = |h: &Self| h.id.or(h.timestamp).or(h.signature).is_some();
        let (standard, svix) = (set("webhook"), set("svix"));
        if !any(&standard) && any(&svix) {
            svix
        } else {
            standard
        }
    }

    /// The id, timestamp and signature, each required.
    pub fn require(&self) -> Result<(&'a str, &'a str, &'a str), SigError> {
        Ok((
            self.id.ok_or(SigError::MissingHeader("webhook-id"))?,
            self.timestamp
                .ok_or(SigError::MissingHeader("webhook-timestamp"))?,
            self.signature
                .ok_or(SigError::MissingHeader("webhook-signature"))?,
        ))
    }
}

/// One Standard Webhooks key: signs, and verifies alone or with the other
/// keys of a rotation. Never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardWebhooks(Redacted<Vec<u8>>);

impl StandardWebhooks {
    /// A key as it is, whatever its length. An empty key never verifies.
    pub fn from_bytes(key: Vec<u8>) -> Self {
        Self(Redacted(key))
    }

    /// A secret's key (see `secret_key`), at least `MIN_KEY_LEN` bytes.
    pub fn from_secret(secret: &str) -> Result<Self, KeyError> {
        strong_key(secret).map(Self::from_bytes)
    }

    /// `v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", B64.encode(mac))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let ts = timestamp.to_string();
        hmac_sha256(&self.0.0, &[id.as_bytes(), b".", ts.as_bytes(), b".", body])
    }

    /// Verifies a request signed with any of `keys` (several during a
    /// rotation); `now` is unix seconds. Signatures that are not `v1` or
    /// not base64 are skipped, not fatal: the spec lets senders add
    /// signatures of other versions.
    pub fn verify_any(
        keys: &[Self],
        h: &StandardHeaders<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SigError> {
        let (id, ts_raw, sig) = h.require()?;
        if id.is_empty() {
            return Err(SigError::Malformed("webhook-id"));
        }
        let ts: i64 = ts_raw
            .trim()
            .parse()
            .map_err(|_| SigError::Malformed("webhook-timestamp"))?;
        // Checked: `now - i64::MIN` overflows, and a wrapped difference would
        // let an absurd timestamp through as fresh (found by the fuzzer).
        let fresh = now
            .checked_sub(ts)
            .is_some_and(|d| d.unsigned_abs() <= TOLERANCE_SECONDS as u64);
        if !fresh {
            return Err(SigError::StaleTimestamp);
        }
        let candidates: Vec<Vec<u8>> = sig
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| B64.decode(b64).ok())
            .collect();
        if candidates.is_empty() {
            return Err(SigError::NoMatch);
        }
        let macs = keys
            .iter()
            .filter(|k| !k.0.0.is_empty())
            .map(|k| k.mac(id, ts, body));
        if any_matches(macs, &candidates) {
            Ok(())
        } else {
            Err(SigError::NoMatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published test vector of the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn verify(
        key: &StandardWebhooks,
        h: &StandardHeaders<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SigError> {
        StandardWebhooks::verify_any(std::slice::from_ref(key), h, body, now)
    }

    fn headers(sig: &str) -> StandardHeaders<'_> {
        StandardHeaders {
            id: Some(ID),
            timestamp: Some("1614265330"),
            signature: Some(sig),
        }
    }

    #[test]
    fn signs_and_verifies_the_spec_test_vector() {
        let key = StandardWebhooks::from_secret(SECRET).unwrap();
        assert_eq!(key.sign(ID, TS, BODY), SIG);
        assert_eq!(verify(&key, &headers(SIG), BODY, TS + 300), Ok(()));
        assert_eq!(
            verify(&key, &headers(SIG), BODY, TS - 301),
            Err(SigError::StaleTimestamp)
        );
        assert_eq!(
            verify(&key, &headers(SIG), b"{}", TS),
            Err(SigError::NoMatch)
        );
        assert!(!format!("{key:?}").contains("MfKQ"));
    }

    #[test]
    fn any_key_of_a_rotation_verifies_and_an_empty_key_never() {
        let old = StandardWebhooks::from_bytes(b"an-older-key-0001".to_vec());
        let new = StandardWebhooks::from_secret(SECRET).unwrap();
        let h = headers(SIG);
        assert_eq!(
            StandardWebhooks::verify_any(&[old.clone(), new], &h, BODY, TS),
            Ok(())
        );
        assert_eq!(
            StandardWebhooks::verify_any(&[old], &h, BODY, TS),
            Err(SigError::NoMatch)
        );
        let empty = StandardWebhooks::from_bytes(Vec::new());
        let sig = empty.sign(ID, TS, BODY);
        assert_eq!(
            verify(&empty, &headers(&sig), BODY, TS),
            Err(SigError::NoMatch)
        );
    }

    #[test]
    fn keys_decode_whsec_padded_or_not_and_follow_the_length_rule() {
        assert_eq!(
            secret_key("whsec_bmV3LXNlY3JldC0xMjM0NTY=").unwrap(),
            b"new-secret-123456"
        );
        assert_eq!(
            secret_key("whsec_bmV3LXNlY3JldC0xMjM0NTY").unwrap(),
            b"new-secret-123456"
        );
        assert_eq!(secret_key("plain").unwrap(), b"plain");
        assert_eq!(secret_key("whsec_not*base64"), Err(KeyError::NotBase64));
        assert_eq!(strong_key("whsec_bmV3c2VjcmV0"), Err(KeyError::TooShort));
        assert_eq!(strong_key("fifteen-chars-x"), Err(KeyError::TooShort));
        assert_eq!(strong_key("sixteen-chars-xx").unwrap().len(), 16);
    }

    #[test]
    fn svix_headers_are_read_only_without_any_webhook_header() {
        let mut h = HeaderMap::new();
        h.insert("svix-id", "a".parse().unwrap());
        assert_eq!(StandardHeaders::from_headers(&h).id, Some("a"));
        h.insert("webhook-timestamp", "1".parse().unwrap());
        let read = StandardHeaders::from_headers(&h);
        assert_eq!((read.id, read.timestamp), (None, Some("1")));
        assert_eq!(read.require(), Err(SigError::MissingHeader("webhook-id")));
    }
}
