//! `SOURCES` given inline: arbitrary text that starts with '{' (text that
//! does not is a file path to the loader, and is skipped here). Whatever
//! loads must map the sample payloads without panicking and within the
//! invariants.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mde_offboard::intake::sources::Sources;
use serde_json::Value;

fn docs() -> &'static [Value] {
    static DOCS: OnceLock<Vec<Value>> = OnceLock::new();
    DOCS.get_or_init(|| {
        common::SAMPLE_BODIES
            .iter()
            .map(|b| serde_json::from_str(b).expect("sample bodies are JSON"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !text.trim().starts_with('{') {
        return;
    }
    let Ok(sources) = Sources::load(Some(text)) else {
        return;
    };
    // A definition replaces the preset of its name; the others stay.
    for preset in ["jira", "pagerduty", "servicenow", "defender-incident"] {
        assert!(sources.get(preset).is_some(), "preset {preset} lost");
    }
    for name in sources.names() {
        let def = sources.get(name).expect("a listed name is there");
        assert_eq!(def.name, name);
        for doc in docs() {
            common::check_map(def, doc);
        }
    }
});
