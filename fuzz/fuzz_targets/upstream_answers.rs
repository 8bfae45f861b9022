//! Defender and login answers: any status, `Retry-After` and body, through
//! the functions `HttpDefender` and `TokenProvider` read them with.
//!
//! Input layout: two bytes of status (big-endian), then the `Retry-After`
//! header's raw bytes up to the first NUL, then the body. Without a NUL
//! there is no header and the rest is the body.
//!
//! Beyond "never panics": every wait and every token lifetime is at most an
//! hour, and the clock arithmetic done with them stays in range; a token
//! answer is classified by its status the way the contract says (3xx is a
//! redirect never followed, 429 and 5xx retryable, other 4xx the
//! credentials); error codes that reach answers and logs are short
//! identifiers.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use mde_offboard::domain::secret::CredentialError;
use mde_offboard::adapters::entra::{read_token_answer, token_lifetime};
use mde_offboard::domain::defender::{Machine, MachineAction};
use mde_offboard::adapters::defender_http::{read_json, read_machine_list, refusal_code, throttle_wait};
use mde_offboard::domain::limits::{Deadline, MAX_UPSTREAM_WAIT, later, parse_retry_after};
use serde_json::Value;

/// A fixed clock, so a crash replays: the seeds' HTTP dates are around it.
const NOW_SECS: u64 = 1_795_683_600;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]) % 1000;
    let rest = &data[2..];
    let (header, body) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS);

    // Defender: a 429's wait, used for the limiter's block and the
    // deadline check.
    let wait = throttle_wait(header, now);
    assert!(wait <= MAX_UPSTREAM_WAIT, "wait {wait:?}");
    let _ = later(wait);
    let _ = Deadline::after(wait).fits(wait);
    if let Some(text) = header.and_then(|h| std::str::from_utf8(h).ok()) {
        if let Some(d) = parse_retry_after(text, now) {
            assert!(d <= MAX_UPSTREAM_WAIT, "Retry-After {text:?} gave {d:?}");
        }
    }

    // Defender: the body of a refusal, and of each success it parses.
    let code = refusal_code(body);
    assert!(
        !code.is_empty()
            && code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'),
        "code {code:?}"
    );
    let _ = read_json::<Machine>(body);
    let _ = read_json::<MachineAction>(body).map(|a| a.last_update().map(str::len));
    let _ = read_machine_list(body);

    // Login: the whole answer, and expires_in however it is written.
    match read_token_answer(status, body) {
        Ok((token, lifetime)) => {
            assert!((200..300).contains(&status), "accepted HTTP {status}");
            assert!(lifetime <= MAX_UPSTREAM_WAIT, "lifetime {lifetime:?}");
            let t = token.expose();
            assert!(
                !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()),
                "token not header-safe"
            );
            let _ = later(lifetime.saturating_sub(Duration::from_secs(300)));
        }
        Err(e) => {
            match (status, &e) {
                (300..=399, CredentialError::LoginRedirected(s)) => assert_eq!(*s, status),
                (200..=299, CredentialError::LoginUnavailable(_)) => {}
                (429 | 500.., CredentialError::LoginUnavailable(_)) => {}
                (_, CredentialError::BadCredentials(m)) => {
                    assert!(!(200..400).contains(&status) && status != 429 && status < 500);
                    assert!(!m.chars().any(char::is_control), "message {m:?}");
                }
                // A refused federated assertion, read from its AADSTS code.
                (_, CredentialError::AssertionRefused(_)) => {
                    assert!(!(200..400).contains(&status) && status != 429 && status < 500);
                }
                _ => panic!("HTTP {status} read as {e:?}"),
            }
            let _ = e.to_string();
        }
    }
    let doc = serde_json::from_slice::<Value>(body).ok();
    let expires_in = doc.as_ref().and_then(|d| d.get("expires_in"));
    assert!(token_lifetime(expires_in) <= MAX_UPSTREAM_WAIT);
    assert!(token_lifetime(doc.as_ref()) <= MAX_UPSTREAM_WAIT);
});
