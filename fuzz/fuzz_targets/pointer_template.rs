//! JSON Pointers (with the `*` and `[key=value]` extensions), comment
//! templates and source mapping over arbitrary documents.
//!
//! Input layout: `pointer \n template \n document`. The first two parts are
//! lossy UTF-8; a document that is not JSON is mapped as a JSON string.
#![no_main]

mod common;

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use mde_offboard::intake::sources::{Mapped, Pointer, Sources, Template, scalar_text};
use serde_json::{Value, json};

fn split(data: &[u8]) -> (Cow<'_, str>, Cow<'_, str>, &[u8]) {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let p = String::from_utf8_lossy(parts.next().unwrap_or(&[]));
    let t = String::from_utf8_lossy(parts.next().unwrap_or(&[]));
    (p, t, parts.next().unwrap_or(&[]))
}

fn valid_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .enumerate()
        .all(|(i, c)| *c != b'~' || matches!(b.get(i + 1), Some(b'0' | b'1')))
}

fuzz_target!(|data: &[u8]| {
    let (p, t, rest) = split(data);
    let doc: Value = serde_json::from_slice(rest)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(rest).into_owned()));

    let parsed = Pointer::parse(&p);
    let should_parse = p.is_empty() || (p.starts_with('/') && valid_escapes(&p));
    assert_eq!(
        parsed.is_ok(),
        should_parse,
        "Pointer::parse({p:?}) = {parsed:?}"
    );
    if let Ok(ptr) = &parsed {
        assert_eq!(ptr.as_str(), p);
        let all = ptr.resolve_all(&doc);
        assert_eq!(ptr.resolve(&doc), all.first().copied());
        // Without the two extensions it is plain RFC 6901: agree with
        // serde_json's own implementation.
        if !p.contains('*') && !p.contains('[') {
            assert_eq!(ptr.resolve(&doc), doc.pointer(&p), "pointer {p:?}");
            assert!(all.len() <= 1);
        }
    }

    let template = Template::parse(&t);
    if let Ok(tpl) = &template {
        let out = tpl.render("TICKET-1", &doc);
        if !t.contains("{ticket}") && !t.contains("{/") {
            assert_eq!(out, t, "a template without placeholders renders as itself");
        }
    } else {
        assert!(
            t.contains("{/"),
            "only a bad pointer placeholder fails: {t:?}"
        );
    }

    // A source that uses the fuzzed pointer for the ticket and the devices
    // and the fuzzed template for the comment; once plain, once with a
    // condition on the pointer that the document satisfies.
    let mut def = json!({
        "auth": {"scheme": "bearer", "secret": "s"},
        "ticket": [p.as_ref(), "/ticket"],
        "devices": [p.as_ref()],
        "comment": t.as_ref(),
    });
    let text = json!({"sources": {"fuzzed": def}}).to_string();
    match Sources::load(Some(&text)) {
        Ok(sources) => {
            let src = sources.get("fuzzed").expect("defined");
            common::check_map(src, &doc);
        }
        Err(e) => assert!(
            parsed.is_err() || template.is_err(),
            "a definition with a valid pointer and template is refused: {e}"
        ),
    }
    if let Ok(ptr) = &parsed
        && let Some(v) = ptr.resolve_all(&doc).into_iter().find_map(scalar_text)
    {
        def["when"] = json!([{"pointer": p.as_ref(), "in": [v]}]);
        let text = json!({"sources": {"fuzzed": def}}).to_string();
        if let Ok(sources) = Sources::load(Some(&text)) {
            let src = sources.get("fuzzed").expect("defined");
            common::check_map(src, &doc);
            assert!(
                !matches!(src.map(&doc), Ok(Mapped::Ignored { .. })),
                "a condition the document satisfies ignored it"
            );
        }
    }
});
