//! Freshness windows: a delivery whose signed body carries an old time is
//! refused, so that a captured delivery cannot be replayed later.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, de};
use serde_json::Value;
use thiserror::Error;

use crate::support::json_pointer::Pointer;

/// How a sender writes the time into its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TimeUnit {
    #[serde(rename = "ms")]
    Millis,
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "rfc3339")]
    Rfc3339,
}

/// How far ahead of this clock a body's time may be: the same tolerance
/// Standard Webhooks allows its timestamp, for senders whose clocks drift.
pub const MAX_FUTURE: Duration = Duration::from_secs(300);

/// A delivery whose body time is outside the window. Each names the
/// pointer, so an operator can see which field the check read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StaleError {
    #[error("the delivery carries no time at '{0}'")]
    Missing(String),
    #[error("the time at '{0}' cannot be read")]
    Unreadable(String),
    #[error(
        "the time at '{pointer}' is {age_seconds} s old; at most {max_age_seconds} s is accepted"
    )]
    TooOld {
        pointer: String,
        age_seconds: u64,
        max_age_seconds: u64,
    },
    #[error("the time at '{0}' is more than 300 s in the future")]
    InTheFuture(String),
}

/// The optional `freshness` window: a captured delivery, validly signed,
/// cannot be replayed once its body time has aged out, even into an
/// instance whose replay cache never saw it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    pub pointer: Pointer,
    pub unit: TimeUnit,
    #[serde(rename = "max_age_seconds", deserialize_with = "max_age")]
    pub max_age: Duration,
}

/// `max_age_seconds`: a whole number of seconds, at most a week.
fn max_age<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Some(u64::deserialize(d)?)
        .filter(|n| (1..=7 * 24 * 3600).contains(n))
        .map(Duration::from_secs)
        .ok_or_else(|| de::Error::custom("must be a whole number of seconds from 1 to 604800"))
}

impl Freshness {
    pub fn check(&self, doc: &Value, now: SystemTime) -> Result<(), StaleError> {
        let name = || self.pointer.as_str().to_string();
        let v = self
            .pointer
            .resolve(doc)
            .filter(|v| !v.is_null())
            .ok_or_else(|| StaleError::Missing(name()))?;
        let at = self.read(v).ok_or_else(|| StaleError::Unreadable(name()))?;
        match now.duration_since(at) {
            Ok(age) if age > self.max_age => Err(StaleError::TooOld {
                pointer: name(),
                age_seconds: age.as_secs(),
                max_age_seconds: self.max_age.as_secs(),
            }),
            Ok(_) => Ok(()),
            Err(ahead) if ahead.duration() > MAX_FUTURE => Err(StaleError::InTheFuture(name())),
            Err(_) => Ok(()),
        }
    }

    /// Writes `now` where this window reads the time, in its unit: what a
    /// sender does when it delivers, for tools and tests that resend old
    /// samples.
    pub fn stamp(&self, doc: &mut Value, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let v = match self.unit {
            TimeUnit::Millis => Value::from(since.as_millis() as u64),
            TimeUnit::Seconds => Value::from(since.as_secs()),
            TimeUnit::Rfc3339 => Value::from(humantime::format_rfc3339_millis(now).to_string()),
        };
        if let Some(slot) = self.pointer.resolve_mut(doc) {
            *slot = v;
        }
    }

    fn read(&self, v: &Value) -> Option<SystemTime> {
        match self.unit {
            TimeUnit::Millis => epoch(v, 1_000),
            TimeUnit::Seconds => epoch(v, 1),
            TimeUnit::Rfc3339 => v.as_str().and_then(parse_rfc3339),
        }
    }
}

/// A count of `per_second` units since the epoch, as a number or a string
/// of digits; negative, fractional or absurd values have no time.
fn epoch(v: &Value, per_second: u64) -> Option<SystemTime> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()?
        }
        _ => return None,
    };
    let d = Duration::from_secs(n / per_second)
        .checked_add(Duration::from_millis((n % per_second) * 1_000 / per_second))?;
    UNIX_EPOCH.checked_add(d)
}

/// RFC 3339 with `Z` or a numeric offset. humantime reads only UTC, so an
/// offset is taken off by hand.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if !s.is_ascii() {
        return None;
    }
    let (base, offset_secs) = match s.len().checked_sub(6).map(|i| s.split_at(i)) {
        Some((base, off))
            if matches!(off.as_bytes()[0], b'+' | b'-') && off.as_bytes()[3] == b':' =>
        {
            let h: u64 = off[1..3].parse().ok()?;
            let m: u64 = off[4..6].parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            let secs = (h * 3600 + m * 60) as i64;
            (base, if off.starts_with('-') { -secs } else { secs })
        }
        _ => (s.strip_suffix('Z').or_else(|| s.strip_suffix('z'))?, 0),
    };
    let utc = humantime::parse_rfc3339(&format!("{base}Z")).ok()?;
    // Local time = UTC + offset, so UTC = local - offset.
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        utc.checked_sub(shift)
    } else {
        utc.checked_add(shift)
    }
}
