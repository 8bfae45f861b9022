//! The generic body (`POST /v1/offboard`): bytes → `strict_json` →
//! `parse_generic_body`, as the handler reads it. Whatever it accepts must hold
//! the invariants the rest of the code relies on; the strict parse must
//! agree with serde_json on every body without a repeated key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mde_offboard::intake::generic::{DeviceRef, GENERIC_FIELDS, JsonError, MAX_COMMENT_CHARS, MAX_DEVICE_CHARS, MAX_TICKET_CHARS, is_hidden_format, parse_generic_body, strict_json};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let lenient = serde_json::from_slice::<Value>(data);
    let value = match strict_json(data) {
        Ok(v) => {
            assert_eq!(lenient.ok().as_ref(), Some(&v), "strict and lenient differ");
            v
        }
        // A repeated key is the only thing the strict parse refuses that
        // serde_json reads; a syntax error is one for both.
        Err(JsonError::Field(_)) => return,
        Err(JsonError::Syntax(_)) => {
            assert!(lenient.is_err(), "strict refused what serde_json reads");
            return;
        }
    };
    let Ok(req) = parse_generic_body(&value, &Default::default()).map(|b| b.request) else {
        return;
    };
    let keys = value.as_object().expect("an accepted body is an object");
    assert!(
        keys.keys().all(|k| GENERIC_FIELDS.contains(&k.as_str())),
        "accepted an unknown field"
    );
    for text in [req.ticket.as_str(), req.comment.as_str()]
        .into_iter()
        .chain(req.devices.iter().map(|d| d.given.as_str()))
    {
        assert!(
            !text.chars().any(is_hidden_format),
            "hidden format in {text:?}"
        );
    }
    assert!(!req.devices.is_empty(), "no devices");

    let ticket = req.ticket.as_str();
    assert!(
        !ticket.is_empty() && ticket.trim() == ticket,
        "ticket {ticket:?}"
    );
    assert!(
        ticket.chars().count() <= MAX_TICKET_CHARS,
        "ticket too long"
    );
    assert!(!ticket.chars().any(char::is_control), "control in ticket");

    let comment = req.comment.as_str();
    assert!(
        !comment.is_empty() && comment.trim() == comment,
        "comment {comment:?}"
    );
    assert!(
        comment.chars().count() <= MAX_COMMENT_CHARS,
        "comment too long"
    );
    assert!(!comment.chars().any(char::is_control), "control in comment");

    for d in &req.devices {
        match &d.target {
            DeviceRef::Id(id) => {
                let s = id.as_str();
                assert_eq!(s.len(), 40, "id {s:?}");
                assert!(
                    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                    "id not lowercase hex: {s:?}"
                );
                assert!(
                    d.given.eq_ignore_ascii_case(s),
                    "given {:?} vs id {s:?}",
                    d.given
                );
            }
            DeviceRef::Name(n) => {
                let s = n.as_str();
                assert!(
                    !s.is_empty() && s.chars().count() <= MAX_DEVICE_CHARS,
                    "name {s:?}"
                );
                assert!(
                    !s.chars().any(|c| c.is_control() || c.is_whitespace()),
                    "space or control in name {s:?}"
                );
                // Names are never something that reads as an id.
                assert!(
                    !(s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())),
                    "40-hex name {s:?}"
                );
                // The OData literal is quoted with every quote doubled.
                let lit = mde_offboard::adapters::defender_http::odata_quote(n.as_str());
                let inner = &lit[1..lit.len() - 1];
                assert!(lit.starts_with('\'') && lit.ends_with('\''));
                assert!(
                    !inner.replace("''", "").contains('\''),
                    "unescaped quote in {lit:?}"
                );
            }
        }
    }
    let dc = req.defender_comment();
    assert!(dc.starts_with(ticket) && dc.ends_with(comment));
});
