//! The request, validated into small typed values.
//!
//! Everything that comes from outside passes through here once; past this
//! module a `MachineId` is always 40 lowercase hex characters and a
//! `Comment` never holds a control character.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

pub const MAX_COMMENT_CHARS: usize = 1000;
pub const MAX_TICKET_CHARS: usize = 256;
pub const MAX_DEVICE_CHARS: usize = 255;

/// Why a field was refused. Wrong JSON shapes are the sender's bug (400);
/// well-formed values outside the bounds are 422.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldError {
    #[error("field '{field}' is required")]
    Missing { field: String },
    #[error("field '{field}' must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("field '{field}' {reason}")]
    OutOfBounds { field: String, reason: String },
}

impl FieldError {
    pub fn field(&self) -> &str {
        match self {
            Self::Missing { field }
            | Self::WrongType { field, .. }
            | Self::OutOfBounds { field, .. } => field,
        }
    }

    fn bounds(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::OutOfBounds {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A Defender machine id: the 40-hex-character SHA-1 Defender assigns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MachineId(String);

impl MachineId {
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device name, matched case-insensitively against `computerDnsName`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceName(String);

impl DeviceName {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("must not be empty");
        }
        if s.chars().count() > MAX_DEVICE_CHARS {
            return Err("is longer than 255 characters");
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("must not contain spaces or control characters");
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an OData string literal: quoted, with `'` doubled.
    pub fn odata_literal(&self) -> String {
        odata_quote(&self.0)
    }

    pub fn matches(&self, computer_dns_name: &str) -> bool {
        self.0.to_lowercase() == computer_dns_name.to_lowercase()
    }
}

pub fn odata_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A device as the caller named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceRef {
    Id(MachineId),
    Name(DeviceName),
}

impl DeviceRef {
    /// 40 hex characters is a machine id, anything else a name.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        match MachineId::parse(s) {
            Some(id) => Ok(Self::Id(id)),
            None => DeviceName::parse(s).map(Self::Name),
        }
    }

    /// Two references to the same device compare equal on this key.
    pub fn key(&self) -> String {
        match self {
            Self::Id(id) => id.to_string(),
            Self::Name(n) => n.as_str().to_lowercase(),
        }
    }
}

/// A device as given (for the answer) and as understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub given: String,
    pub target: DeviceRef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket(String);

impl Ticket {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(FieldError::bounds(field, "must not be empty"));
        }
        if s.chars().count() > MAX_TICKET_CHARS {
            return Err(FieldError::bounds(
                field,
                format!("must be at most {MAX_TICKET_CHARS} characters"),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(FieldError::bounds(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment(String);

impl Comment {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(FieldError::bounds(field, "must not be empty"));
        }
        if s.chars().count() > MAX_COMMENT_CHARS {
            return Err(FieldError::bounds(
                field,
                format!("must be at most {MAX_COMMENT_CHARS} characters"),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(FieldError::bounds(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// For text pulled from someone else's payload: control characters
    /// become spaces and the result is cut to the limit instead of refused.
    pub fn sanitize(s: &str) -> Option<Self> {
        let cleaned: String = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_COMMENT_CHARS)
            .collect();
        let cleaned = cleaned.trim();
        (!cleaned.is_empty()).then(|| Self(cleaned.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Now,
    Queue,
}

/// What every route boils down to: a ticket, a comment, the devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffboardRequest {
    pub ticket: Ticket,
    pub comment: Comment,
    pub devices: Vec<Device>,
    /// Can only turn dry run on; the environment's `DRY_RUN` wins otherwise.
    pub dry_run: bool,
    pub mode: Mode,
}

impl OffboardRequest {
    /// The text sent to Defender as `Comment`: ticket and comment, so the
    /// MachineAction in the Defender portal points back at its ticket.
    pub fn defender_comment(&self) -> String {
        format!("{}: {}", self.ticket.as_str(), self.comment.as_str())
    }
}

/// Validates the generic body (`POST /v1/offboard`).
pub fn parse_generic(body: &Value) -> Result<OffboardRequest, FieldError> {
    let obj = body.as_object().ok_or_else(|| FieldError::WrongType {
        field: "body".into(),
        expected: "a JSON object",
    })?;
    let ticket = Ticket::parse("ticket", required_str(obj, "ticket")?)?;
    let comment = Comment::parse("comment", required_str(obj, "comment")?)?;
    let devices = match obj.get("devices") {
        None | Some(Value::Null) => {
            return Err(FieldError::Missing {
                field: "devices".into(),
            });
        }
        Some(Value::Array(items)) => parse_devices("devices", items.iter())?,
        Some(_) => {
            return Err(FieldError::WrongType {
                field: "devices".into(),
                expected: "an array of strings",
            });
        }
    };
    if devices.is_empty() {
        return Err(FieldError::bounds(
            "devices",
            "must name at least one device",
        ));
    }
    let dry_run = match obj.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(FieldError::WrongType {
                field: "dry_run".into(),
                expected: "a boolean",
            });
        }
    };
    let mode = match obj.get("mode") {
        None | Some(Value::Null) => Mode::Now,
        Some(Value::String(s)) => match s.as_str() {
            "now" => Mode::Now,
            "queue" => Mode::Queue,
            _ => return Err(FieldError::bounds("mode", "must be \"now\" or \"queue\"")),
        },
        Some(_) => {
            return Err(FieldError::WrongType {
                field: "mode".into(),
                expected: "a string",
            });
        }
    };
    Ok(OffboardRequest {
        ticket,
        comment,
        devices,
        dry_run,
        mode,
    })
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(FieldError::Missing {
            field: field.into(),
        }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(FieldError::WrongType {
            field: field.into(),
            expected: "a string",
        }),
    }
}

/// Parses device strings; `field` names where they came from, and each
/// error names the element (`devices[2]`).
pub fn parse_devices<'a>(
    field: &str,
    items: impl Iterator<Item = &'a Value>,
) -> Result<Vec<Device>, FieldError> {
    items
        .enumerate()
        .map(|(i, v)| {
            // The field's name is only built for an error: formatting it for
            // every device was most of the validation's cost.
            let s = v.as_str().ok_or_else(|| FieldError::WrongType {
                field: format!("{field}[{i}]"),
                expected: "a string",
            })?;
            let trimmed = s.trim();
            let target = DeviceRef::parse(trimmed)
                .map_err(|reason| FieldError::bounds(format!("{field}[{i}]"), reason))?;
            Ok(Device {
                given: trimmed.to_string(),
                target,
            })
        })
        .collect()
}

pub fn parse_device(field: &str, s: &str) -> Result<Device, FieldError> {
    let trimmed = s.trim();
    let target = DeviceRef::parse(trimmed).map_err(|reason| FieldError::bounds(field, reason))?;
    Ok(Device {
        given: trimmed.to_string(),
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn odata_literal_doubles_single_quotes() {
        let n = DeviceName::parse("o'brien's-pc").unwrap();
        assert_eq!(n.odata_literal(), "'o''brien''s-pc'");
        assert_eq!(odata_quote("plain"), "'plain'");
        assert_eq!(odata_quote("''"), "''''''");
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
}
