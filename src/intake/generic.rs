//! The generic body (`POST /v1/offboard`, direct invocations, an
//! EventBridge event's `detail`) and the cancel body, read strictly into the
//! domain's typed values: unknown and duplicated fields are refused.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use thiserror::Error;

pub use crate::domain::model::*;
use crate::support::url_policy::{CallbackHosts, CallbackUrl};

/// The fields the generic body defines; anything else is refused.
pub const GENERIC_FIELDS: [&str; 7] = [
    "ticket",
    "comment",
    "devices",
    "dry_run",
    "mode",
    "callback_url",
    "tenant",
];

/// The first field not in `GENERIC_FIELDS`, with the field it was probably
/// meant to be (`dryRun`, `dry-run` and `DRY_RUN` all mean `dry_run`).
fn unknown_field(obj: &Map<String, Value>) -> Option<FieldError> {
    let fold = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, '_' | '-' | ' '))
            .flat_map(char::to_lowercase)
            .collect()
    };
    let key = obj.keys().find(|k| !GENERIC_FIELDS.contains(&k.as_str()))?;
    let folded = fold(key);
    Some(FieldError::Unknown {
        field: key.clone(),
        hint: GENERIC_FIELDS.into_iter().find(|f| fold(f) == folded),
    })
}

/// The generic body, validated; `callback_url` is kept beside the request
/// so the request type every route shares stays as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericBody {
    pub request: OffboardRequest,
    pub callback_url: Option<CallbackUrl>,
}

/// The body of `POST /v1/actions/{id}/cancel`: `{"comment": "..."}`, the
/// comment under the same rules as an offboard's; nothing else.
pub fn parse_cancel_body(body: &Value) -> Result<Comment, FieldError> {
    let obj = object(body)?;
    if let Some(k) = obj.keys().find(|k| k.as_str() != "comment") {
        return Err(FieldError::Unknown {
            field: k.clone(),
            hint: None,
        });
    }
    Comment::parse(
        "comment",
        required(obj, "comment", "a string", Value::as_str)?,
    )
}

/// A `callback_url` this deployment may call, or why not, naming `field`.
pub fn callback_url(
    field: &str,
    s: &str,
    hosts: &CallbackHosts,
) -> Result<CallbackUrl, FieldError> {
    CallbackUrl::parse(s, hosts).map_err(|reason| FieldError::CallbackNotAllowed {
        field: field.to_string(),
        reason,
    })
}

/// Validates the generic body; a `callback_url` must be on one of `hosts`.
pub fn parse_generic_body(body: &Value, hosts: &CallbackHosts) -> Result<GenericBody, FieldError> {
    let obj = object(body)?;
    if let Some(e) = unknown_field(obj) {
        return Err(e);
    }
    let ticket = Ticket::parse(
        "ticket",
        required(obj, "ticket", "a string", Value::as_str)?,
    )?;
    let comment = Comment::parse(
        "comment",
        required(obj, "comment", "a string", Value::as_str)?,
    )?;
    let items = required(obj, "devices", "an array of strings", Value::as_array)?;
    let devices = items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            // The element's name is only built for an error: formatting it
            // for every device was most of the validation's cost.
            let s = v.as_str().ok_or_else(|| FieldError::WrongType {
                field: format!("devices[{i}]"),
                expected: "a string",
            })?;
            Device::parse(format_args!("devices[{i}]"), s)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if devices.is_empty() {
        return Err(FieldError::bounds(
            "devices",
            "must name at least one device",
        ));
    }
    let dry_run = optional(obj, "dry_run", "a boolean", Value::as_bool)?.unwrap_or(false);
    let mode = match optional(obj, "mode", "a string", Value::as_str)? {
        None | Some("now") => Mode::Now,
        Some("queue") => Mode::Queue,
        Some(_) => return Err(FieldError::bounds("mode", "must be \"now\" or \"queue\"")),
    };
    let callback_url = optional(obj, "callback_url", "a string", Value::as_str)?
        .map(|s| callback_url("callback_url", s, hosts))
        .transpose()?;
    // Checked against the secret's `tenants` once the caller is known.
    let tenant = optional(obj, "tenant", "a string", Value::as_str)?.map(str::to_string);
    Ok(GenericBody {
        request: OffboardRequest {
            ticket,
            comment,
            devices,
            dry_run,
            mode,
            tenant,
        },
        callback_url,
    })
}

fn object(body: &Value) -> Result<&Map<String, Value>, FieldError> {
    body.as_object().ok_or_else(|| FieldError::WrongType {
        field: "body".into(),
        expected: "a JSON object",
    })
}

/// A field's value, `None` when absent or `null`; `read` says whether it
/// is `expected`.
fn optional<'a, T>(
    obj: &'a Map<String, Value>,
    field: &str,
    expected: &'static str,
    read: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<Option<T>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => read(v).map(Some).ok_or_else(|| FieldError::WrongType {
            field: field.into(),
            expected,
        }),
    }
}

fn required<'a, T>(
    obj: &'a Map<String, Value>,
    field: &str,
    expected: &'static str,
    read: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<T, FieldError> {
    optional(obj, field, expected, read)?.ok_or_else(|| FieldError::Missing {
        field: field.into(),
    })
}

/// Why a body is not JSON the generic route accepts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JsonError {
    #[error("{0}")]
    Syntax(String),
    #[error(transparent)]
    Field(#[from] FieldError),
}

/// Parses JSON like `serde_json::from_slice::<Value>`, except that an object
/// holding a key twice is refused: `Value` silently keeps the last copy, so
/// `"dry_run": true, ..., "dry_run": false` would offboard for real.
pub fn strict_json(bytes: &[u8]) -> Result<Value, JsonError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictValue {
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match (parsed, duplicate.into_inner()) {
        (_, Some(field)) => Err(FieldError::Duplicate { field }.into()),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(JsonError::Syntax(e.to_string())),
    }
}

/// Builds a `Value`, noting the first duplicated key it meets.
#[derive(Clone, Copy)]
struct StrictValue<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                let e = de::Error::custom(format_args!("field '{key}' is given twice"));
                *self.duplicate.borrow_mut() = Some(key);
                return Err(e);
            }
            let v = map.next_value_seed(self)?;
            obj.insert(key, v);
        }
        Ok(Value::Object(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The generic body, refusing every `callback_url` (no `CALLBACK_HOSTS`).
    fn parse_generic(body: &Value) -> Result<OffboardRequest, FieldError> {
        parse_generic_body(body, &CallbackHosts::default()).map(|b| b.request)
    }

    const ID: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

    fn ok_body() -> Value {
        json!({"ticket": "INC0012345", "comment": "Laptop retired", "devices": [ID, "LAPTOP-17.contoso.com"]})
    }

    #[test]
    fn machine_id_is_40_hex_lowercased() {
        assert_eq!(MachineId::parse(&ID.to_uppercase()).unwrap().as_str(), ID);
        assert!(MachineId::parse(&ID[..39]).is_none());
        assert!(MachineId::parse(&format!("{ID}0")).is_none());
        assert!(MachineId::parse(&ID.replace('e', "g")).is_none());
    }

    #[test]
    fn forty_hex_is_an_id_anything_else_a_name() {
        assert!(matches!(DeviceRef::parse(ID), Ok(DeviceRef::Id(_))));
        assert!(matches!(
            DeviceRef::parse("LAPTOP-17"),
            Ok(DeviceRef::Name(_))
        ));
        assert!(DeviceRef::parse("two words").is_err());
        assert!(DeviceRef::parse("").is_err());
        assert!(DeviceRef::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn names_match_case_insensitively() {
        let n = DeviceName::parse("LAPTOP-17.Contoso.com").unwrap();
        assert!(n.matches("laptop-17.contoso.com"));
        assert!(!n.matches("laptop-170.contoso.com"));
    }

    #[test]
    fn generic_body_parses() {
        let r = parse_generic(&ok_body()).unwrap();
        assert_eq!(r.ticket.as_str(), "INC0012345");
        assert_eq!(r.devices.len(), 2);
        assert!(matches!(r.devices[0].target, DeviceRef::Id(_)));
        assert_eq!(r.devices[1].given, "LAPTOP-17.contoso.com");
        assert!(!r.dry_run);
        assert_eq!(r.mode, Mode::Now);
        assert_eq!(r.defender_comment(), "INC0012345: Laptop retired");
    }

    fn err(mut patch: impl FnMut(&mut Map<String, Value>)) -> FieldError {
        let mut b = ok_body();
        patch(b.as_object_mut().unwrap());
        parse_generic(&b).unwrap_err()
    }

    #[test]
    fn shape_errors_are_400_kinds_and_name_the_field() {
        let e = err(|o| {
            o.remove("ticket");
        });
        assert_eq!(
            e,
            FieldError::Missing {
                field: "ticket".into()
            }
        );
        let e = err(|o| {
            o.insert("comment".into(), json!(5));
        });
        assert!(matches!(e, FieldError::WrongType { ref field, .. } if field == "comment"));
        let e = err(|o| {
            o.insert("devices".into(), json!("LAPTOP-1"));
        });
        assert!(matches!(e, FieldError::WrongType { ref field, .. } if field == "devices"));
        let e = err(|o| {
            o.insert("devices".into(), json!(["ok", 7]));
        });
        assert_eq!(e.field(), "devices[1]");
        let e = err(|o| {
            o.insert("dry_run".into(), json!("yes"));
        });
        assert_eq!(e.field(), "dry_run");
        assert!(matches!(
            parse_generic(&json!([1])),
            Err(FieldError::WrongType { .. })
        ));
    }

    #[test]
    fn bound_errors_are_422_kinds_and_name_the_field() {
        let cases: Vec<(&str, Value)> = vec![
            ("ticket", json!("")),
            ("comment", json!("   ")),
            ("comment", json!("a".repeat(1001))),
            ("comment", json!("line one\nline two")),
            ("devices", json!([])),
            ("devices[0]", json!([""])),
            ("mode", json!("later")),
            ("ticket", json!("x".repeat(257))),
        ];
        for (field, value) in cases {
            let key = field.split('[').next().unwrap();
            let e = err(|o| {
                o.insert(key.into(), value.clone());
            });
            assert!(
                matches!(e, FieldError::OutOfBounds { .. }),
                "{field}: {e:?}"
            );
            assert_eq!(e.field(), field);
        }
    }

    #[test]
    fn comment_of_exactly_1000_chars_is_fine() {
        let b = json!({"ticket": "T", "comment": "é".repeat(1000), "devices": [ID]});
        assert!(parse_generic(&b).is_ok());
    }

    #[test]
    fn sanitize_replaces_controls_and_cuts() {
        let c = Comment::sanitize(&format!("a\nb\t{}", "x".repeat(2000))).unwrap();
        assert!(c.as_str().starts_with("a b x"));
        assert_eq!(c.as_str().chars().count(), MAX_COMMENT_CHARS);
        assert!(Comment::sanitize("\n\n").is_none());
    }
    #[test]
    fn unknown_fields_are_refused_by_name_with_a_hint() {
        for (key, hint) in [
            ("dryRun", Some("dry_run")),
            ("dry-run", Some("dry_run")),
            ("DRY_RUN", Some("dry_run")),
            ("Devices", Some("devices")),
            ("callbackUrl", Some("callback_url")),
            ("force", None),
        ] {
            let e = err(|o| {
                o.insert(key.into(), json!(true));
            });
            assert_eq!(
                e,
                FieldError::Unknown {
                    field: key.into(),
                    hint
                },
                "{key}"
            );
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn every_contract_field_is_accepted() {
        let b = json!({"ticket": "T", "comment": "c", "devices": [ID], "dry_run": true,
            "mode": "now", "callback_url": null});
        let r = parse_generic(&b).unwrap();
        assert!(r.dry_run);
    }

    fn strict(text: &str) -> Result<Value, JsonError> {
        strict_json(text.as_bytes())
    }

    #[test]
    fn strict_json_refuses_a_key_given_twice_anywhere() {
        let dup = |f: &str| Err(JsonError::Field(FieldError::Duplicate { field: f.into() }));
        assert_eq!(
            strict(
                r#"{"ticket":"T","dry_run":true,"comment":"c","devices":["a"],"dry_run":false}"#
            ),
            dup("dry_run")
        );
        assert_eq!(strict(r#"{"a":{"b":1,"b":1}}"#), dup("b"));
        assert_eq!(strict(r#"{"a":[{"x":1},{"y":2,"y":3}]}"#), dup("y"));
        // The same key in sibling objects is not a duplicate.
        assert_eq!(
            strict(r#"{"a":{"k":1},"b":{"k":2}}"#).unwrap(),
            json!({"a":{"k":1},"b":{"k":2}})
        );
    }

    #[test]
    fn strict_json_reads_what_serde_json_reads() {
        for text in [
            r#"{"ticket":"T","n":-1,"u":18446744073709551615,"f":1.5e300,"b":false,"z":null,"s":"\u00e9\n"}"#,
            r#"[1,[2,[3]],{"a":[]}]"#,
            " \"x\" ",
            "0",
        ] {
            let lenient: Value = serde_json::from_str(text).unwrap();
            assert_eq!(strict(text).unwrap(), lenient, "{text}");
        }
        for bad in [
            "",
            "{",
            r#"{"a":1} x"#,
            "[1,]",
            "{\"a\" 1}",
            &"[".repeat(200),
        ] {
            assert!(
                matches!(strict(bad), Err(JsonError::Syntax(_))),
                "{bad:?}: {:?}",
                strict(bad)
            );
        }
    }

    const HIDDEN: [char; 16] = [
        '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}',
        '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        '\u{FEFF}', '\u{061C}',
    ];

    #[test]
    fn bidi_and_zero_width_characters_are_refused_in_every_value() {
        for c in HIDDEN {
            for (key, value, field) in [
                ("ticket", json!(format!("INC{c}001")), "ticket"),
                ("comment", json!(format!("retired {c}laptop")), "comment"),
                (
                    "devices",
                    json!([ID, format!("LAPTOP{c}-17")]),
                    "devices[1]",
                ),
            ] {
                let e = err(|o| {
                    o.insert(key.into(), value.clone());
                });
                assert!(
                    matches!(e, FieldError::OutOfBounds { .. }),
                    "{key} U+{:04X}: {e:?}",
                    c as u32
                );
                assert_eq!(e.field(), field);
            }
        }
        assert!(DeviceRef::parse("laptop\u{202E}gpj.exe").is_err());
    }

    #[test]
    fn sanitize_replaces_hidden_formatting_too() {
        let c = Comment::sanitize("INC1 \u{202E}deliver\u{200B}ed\u{FEFF}").unwrap();
        assert_eq!(c.as_str(), "INC1  deliver ed");
        assert!(!c.as_str().chars().any(is_hidden_format));
    }

    fn hosts(list: &str) -> CallbackHosts {
        CallbackHosts::parse(list)
    }

    #[test]
    fn callback_url_must_be_https_on_a_listed_host() {
        let with = |url: Value, h: &CallbackHosts| {
            let mut b = ok_body();
            b["callback_url"] = url;
            parse_generic_body(&b, h)
        };
        let listed = hosts("hooks.example.com,localhost,127.0.0.1");
        let ok = with(json!("https://hooks.example.com/mde?x=1"), &listed).unwrap();
        assert_eq!(
            ok.callback_url.unwrap().as_str(),
            "https://hooks.example.com/mde?x=1"
        );
        assert!(with(json!("HTTPS://Hooks.Example.COM/"), &listed).is_ok());
        assert!(with(json!("http://127.0.0.1:9000/cb"), &listed).is_ok());
        assert!(with(json!("http://localhost:9000/cb"), &listed).is_ok());
        for (url, h) in [
            ("https://hooks.example.com/", CallbackHosts::default()),
            ("http://hooks.example.com/", listed.clone()),
            ("https://evil.example.com/", listed.clone()),
            ("https://hooks.example.com.evil.example/", listed.clone()),
            ("https://user:pw@hooks.example.com/", listed.clone()),
            ("ftp://hooks.example.com/", listed.clone()),
            ("not a url", listed.clone()),
        ] {
            let e = with(json!(url), &h).unwrap_err();
            assert!(
                matches!(e, FieldError::CallbackNotAllowed { ref field, .. } if field == "callback_url"),
                "{url}: {e:?}"
            );
        }
        let e = with(json!(5), &listed).unwrap_err();
        assert!(matches!(e, FieldError::WrongType { ref field, .. } if field == "callback_url"));
        // Without hosts, the plain entry point refuses every callback.
        let mut b = ok_body();
        b["callback_url"] = json!("https://hooks.example.com/");
        assert!(matches!(
            parse_generic(&b),
            Err(FieldError::CallbackNotAllowed { .. })
        ));
    }
}
