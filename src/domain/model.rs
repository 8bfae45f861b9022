//! The domain's words: the typed values every request is validated into.
//!
//! Past `parse` a `MachineId` is always 40 lowercase hex characters and a
//! `Comment` never holds a control character, whichever door the request
//! came through.

use std::fmt;

use serde::Serialize;
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
    /// A field the generic body does not define: a typo such as `dryRun`
    /// must never be read as "not given" and offboard for real.
    #[error("field '{field}' is not part of the body{}", hint.map(|h| format!(" (did you mean '{h}'?)")).unwrap_or_default())]
    Unknown {
        field: String,
        hint: Option<&'static str>,
    },
    /// A key given twice: parsers disagree on which copy wins, so neither is
    /// trusted.
    #[error("field '{field}' is given twice")]
    Duplicate { field: String },
    /// A `callback_url` this deployment may not call.
    #[error("field '{field}' {reason}")]
    CallbackNotAllowed { field: String, reason: String },
}

impl FieldError {
    /// The field at fault, for tests; the message names it for callers.
    #[cfg(test)]
    pub fn field(&self) -> &str {
        match self {
            Self::Missing { field }
            | Self::WrongType { field, .. }
            | Self::OutOfBounds { field, .. }
            | Self::Unknown { field, .. }
            | Self::Duplicate { field }
            | Self::CallbackNotAllowed { field, .. } => field,
        }
    }

    pub(crate) fn bounds(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::OutOfBounds {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Characters that change how text is shown without being seen (Unicode's
/// format characters, Cf): bidi overrides, isolates and marks, zero-width
/// spaces and joiners, the BOM, tag characters.
/// In a ticket, comment or device name they let an audit line or the
/// Defender portal read differently from what was sent.
pub fn is_hidden_format(c: char) -> bool {
    // Every character of Unicode's general category Cf (format), as of
    // Unicode 15.1: soft hyphen, Arabic and Syriac marks, bidirectional
    // controls, zero-width characters, invisible operators, the BOM,
    // interlinear annotations, Egyptian hieroglyph controls, shorthand and
    // musical format controls, and the tag characters that can smuggle
    // ASCII invisibly (U+E0001, U+E0020-E007F).
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// Refused in every value a person reads later (ticket, comment, device).
fn is_unsafe_char(c: char) -> bool {
    c.is_control() || is_hidden_format(c)
}

const UNSAFE_CHARS: &str = "must not contain control characters or invisible formatting characters (bidirectional or zero-width)";

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
        if s.chars().any(|c| c.is_whitespace() || is_unsafe_char(c)) {
            return Err(
                "must not contain spaces, control characters or invisible formatting characters",
            );
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, computer_dns_name: &str) -> bool {
        self.0.to_lowercase() == computer_dns_name.to_lowercase()
    }

    /// `NAME_MATCH=host`: a name without a dot is a short host name, and
    /// also matches `<name>.<any domain>`.
    pub fn is_short(&self) -> bool {
        !self.0.contains('.')
    }

    /// Whether `computer_dns_name` is this short name in some domain.
    pub fn matches_host(&self, computer_dns_name: &str) -> bool {
        let dns = computer_dns_name.to_lowercase();
        dns.strip_prefix(&self.0.to_lowercase())
            .is_some_and(|rest| rest.starts_with('.'))
    }
}

/// An EC2 instance id (`i-` and 8 or 17 lowercase hex characters), as an
/// Auto Scaling lifecycle event names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("i-")?;
        ((hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How an instance id finds its machine (`EC2_DEVICE_MATCH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceMatch {
    /// Machines tagged with the instance id (`findbytag`, exact).
    Tag,
    /// Machines whose `computerDnsName` is the id or `<id>.<domain>`.
    Hostname,
}

/// A device as the caller named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceRef {
    Id(MachineId),
    Name(DeviceName),
    /// A terminating EC2 instance, found as `EC2_DEVICE_MATCH` says, each
    /// way in turn. Only an Auto Scaling lifecycle event names one: no
    /// body or source can (`parse` never makes it).
    Instance(InstanceId, Vec<InstanceMatch>),
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
            Self::Instance(i, _) => i.as_str().to_string(),
        }
    }
}

/// A device as given (for the answer) and as understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub given: String,
    pub target: DeviceRef,
}

impl Device {
    /// A device string; `field` names where it came from, and is only
    /// formatted for an error (`devices[2]`).
    pub fn parse(field: impl fmt::Display, s: &str) -> Result<Self, FieldError> {
        let trimmed = s.trim();
        let target = DeviceRef::parse(trimmed)
            .map_err(|reason| FieldError::bounds(field.to_string(), reason))?;
        Ok(Self {
            given: trimmed.to_string(),
            target,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket(String);

/// Text a person reads later, trimmed: not empty, at most `max`
/// characters, nothing unsafe.
fn checked_text(field: &str, s: &str, max: usize) -> Result<String, FieldError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(FieldError::bounds(field, "must not be empty"));
    }
    if s.chars().count() > max {
        return Err(FieldError::bounds(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars().any(is_unsafe_char) {
        return Err(FieldError::bounds(field, UNSAFE_CHARS));
    }
    Ok(s.to_string())
}

impl Ticket {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        checked_text(field, s, MAX_TICKET_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment(String);

impl Comment {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        checked_text(field, s, MAX_COMMENT_CHARS).map(Self)
    }

    /// For text pulled from someone else's payload: control and invisible
    /// formatting characters become spaces and the result is cut to the
    /// limit instead of refused.
    pub fn sanitize(s: &str) -> Option<Self> {
        let cleaned: String = s
            .chars()
            .map(|c| if is_unsafe_char(c) { ' ' } else { c })
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
    /// The tenant the body names (`"tenant"`), not yet checked against the
    /// secret's `tenants`; a source's requests take their definition's.
    pub tenant: Option<String>,
}

impl OffboardRequest {
    /// The text sent to Defender as `Comment`: ticket and comment, so the
    /// MachineAction in the Defender portal points back at its ticket.
    pub fn defender_comment(&self) -> String {
        format!("{}: {}", self.ticket.as_str(), self.comment.as_str())
    }
}
