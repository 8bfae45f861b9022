//! Webhook authentication over arbitrary headers and bodies.
//!
//! Input layout: `id \n timestamp \n signature \n body`. Fewer than four
//! parts means the later headers are missing (the body is then empty). The
//! header parts are read as lossy UTF-8; the body stays raw bytes.
//!
//! Beyond "never panics", checks an oracle: `StandardWebhooks::verify_any`
//! accepts exactly when an entry of the signature header is, byte for
//! byte, what `StandardWebhooks::sign` makes with one of the secrets (the
//! base64 engine only decodes canonical text, so the signature text is
//! unique), and likewise for `verify_hmac_hex` (hex compared
//! case-insensitively) and `verify_bearer`.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use mde_offboard::intake::auth::{verify_bearer, verify_hmac_hex};
use mde_testkit::hmac_hex;
use mde_offboard::support::webhook_sig::{StandardHeaders, StandardWebhooks, TOLERANCE_SECONDS, secret_key};

/// The Standard Webhooks specification's test vector time, so the seed
/// built from it verifies.
const NOW: i64 = 1_614_265_330;

fn secrets() -> Vec<String> {
    vec![
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
        "plain-raw-secret".to_string(),
        "whsec_not*base64".to_string(),
    ]
}

/// The three header values (absent when the input has too few lines) and
/// the body.
type Parts<'a> = (
    Option<Cow<'a, str>>,
    Option<Cow<'a, str>>,
    Option<Cow<'a, str>>,
    &'a [u8],
);

fn split(data: &[u8]) -> Parts<'_> {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let mut text = || parts.next().map(String::from_utf8_lossy);
    let id = text();
    let ts = text();
    let sig = text();
    let body = parts.next().unwrap_or(&[]);
    (id, ts, sig, body)
}

fuzz_target!(|data: &[u8]| {
    let (id, ts, sig, body) = split(data);
    let secrets = secrets();
    let h = StandardHeaders {
        id: id.as_deref(),
        timestamp: ts.as_deref(),
        signature: sig.as_deref(),
    };
    // A secret that is not a key (an undecodable `whsec_`) never matches.
    let keys: Vec<StandardWebhooks> = secrets
        .iter()
        .filter_map(|s| secret_key(s).ok())
        .map(StandardWebhooks::from_bytes)
        .collect();
    let got = StandardWebhooks::verify_any(&keys, &h, body, NOW);

    // The oracle, when every header is there and well formed.
    if let (Some(id), Some(ts), Some(sig)) = (id.as_deref(), ts.as_deref(), sig.as_deref()) {
        let parsed = ts.trim().parse::<i64>().ok();
        let fresh =
            parsed.filter(|t| (NOW as i128 - *t as i128).abs() <= TOLERANCE_SECONDS as i128);
        let expected = match fresh {
            // An undecodable `whsec_` secret is no key and never matches.
            Some(t) if !id.is_empty() => {
                keys.iter().any(|k| {
                    let want = k.sign(id, t, body);
                    sig.split_whitespace().any(|e| e == want)
                })
            }
            _ => false,
        };
        assert_eq!(got.is_ok(), expected, "verify_any: {got:?}");
    } else {
        assert!(got.is_err());
    }

    // The same bytes through the other two schemes: the id part is the
    // hex scheme's prefix, the signature part the header value.
    let hex_secrets = vec!["jira-webhook-secret".to_string(), String::new()];
    let prefix = id.as_deref().unwrap_or("sha256=");
    let got = sig
        .as_deref()
        .map(|v| verify_hmac_hex(v, prefix, body, &hex_secrets));
    let expected = sig.as_deref().is_some_and(|v| {
        // An empty secret never matches.
        hex_secrets.iter().filter(|s| !s.is_empty()).any(|s| {
            let want = hmac_hex(s, body);
            v.split(',')
                .map(str::trim)
                .filter_map(|c| c.strip_prefix(prefix))
                .any(|c| c.eq_ignore_ascii_case(&want))
        })
    });
    assert_eq!(got.as_ref().is_some_and(Result::is_ok), expected, "verify_hmac_hex: {got:?}");

    let bearer_secrets = vec!["tok-new".to_string(), "tok-old".to_string()];
    let got = sig.as_deref().map(|v| verify_bearer(v, &bearer_secrets));
    let expected = sig.as_deref().is_some_and(|v| {
        v.trim().split_once(' ').is_some_and(|(scheme, token)| {
            scheme.eq_ignore_ascii_case("bearer")
                && bearer_secrets.iter().any(|s| s == token.trim())
        })
    });
    assert_eq!(got.as_ref().is_some_and(Result::is_ok), expected, "verify_bearer: {got:?}");
});
