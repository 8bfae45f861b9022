//! Checks shared by several targets.
#![allow(dead_code)]

use mde_offboard::intake::generic::{DeviceRef, MAX_COMMENT_CHARS, MAX_TICKET_CHARS, OffboardRequest};
use mde_offboard::intake::sources::{Mapped, SourceDef};
use serde_json::Value;

/// The sample payloads under `events/`, for mapping fuzzed definitions.
pub const SAMPLE_BODIES: [&str; 5] = [
    include_str!("../../events/generic.body.json"),
    include_str!("../../events/jira.body.json"),
    include_str!("../../events/pagerduty.body.json"),
    include_str!("../../events/servicenow.body.json"),
    include_str!("../../events/defender-incident.body.json"),
];

/// What every route hands to the domain must hold these.
pub fn check_request(req: &OffboardRequest) {
    assert!(!req.devices.is_empty(), "no devices");
    let ticket = req.ticket.as_str();
    assert!(!ticket.trim().is_empty(), "empty ticket");
    assert!(
        ticket.chars().count() <= MAX_TICKET_CHARS,
        "ticket too long"
    );
    assert!(
        !ticket.chars().any(char::is_control),
        "control in ticket {ticket:?}"
    );
    let comment = req.comment.as_str();
    assert!(!comment.trim().is_empty(), "empty comment");
    assert!(
        comment.chars().count() <= MAX_COMMENT_CHARS,
        "comment too long"
    );
    assert!(
        !comment.chars().any(char::is_control),
        "control in comment {comment:?}"
    );
    for d in &req.devices {
        match &d.target {
            DeviceRef::Id(id) => {
                let s = id.as_str();
                assert!(
                    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                    "id not 40 lowercase hex: {s:?}"
                );
            }
            DeviceRef::Name(n) => {
                let s = n.as_str();
                assert!(!s.is_empty(), "empty name");
                assert!(
                    !s.chars().any(|c| c.is_control() || c.is_whitespace()),
                    "space or control in name {s:?}"
                );
            }
        }
    }
}

/// Maps a payload with a definition and checks the outcome.
pub fn check_map(def: &SourceDef, doc: &Value) {
    match def.map(doc) {
        Ok(Mapped::Act(req)) => {
            check_request(&req);
            // A source's devices are deduplicated on their key.
            let mut keys: Vec<String> = req.devices.iter().map(|d| d.target.key()).collect();
            let n = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), n, "duplicate devices");
            // A source never turns dry run on or queues by itself.
            assert!(!req.dry_run);
        }
        Ok(Mapped::Ignored { reason }) => assert!(!reason.is_empty()),
        Err(_) => {}
    }
}
