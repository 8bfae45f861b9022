//! EC2 Auto Scaling scale-in (contract, "Auto Scaling lifecycle hooks"): a
//! terminating instance is held by its group's termination lifecycle hook
//! while its machine is offboarded, then let go with `CONTINUE`.
//!
//! Here: the event as read, the settings (`EC2_DEVICE_MATCH`,
//! `LIFECYCLE_HOLD_SECONDS`, `LIFECYCLE_CHECK_SECONDS`, `EC2_TENANT`), how
//! an instance id finds its machine, the hold's schedule (pure, over unix
//! seconds), the sealed queue message a held instance is checked through,
//! and the port that completes the lifecycle action. The port has no way
//! to say `ABANDON`: an abandoned termination can be retained, running.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::domain::defender::{Defender, DefenderError, Machine};
use crate::domain::limits::Deadline;
use crate::domain::model::{DeviceName, InstanceId, InstanceMatch};
use crate::domain::tracking::MAX_DELAY_SECONDS;

/// The EventBridge `source` and `detail-type` of a termination hook's event.
pub const EVENT_SOURCE: &str = "aws.autoscaling";
pub const EVENT_DETAIL_TYPE: &str = "EC2 Instance-terminate Lifecycle Action";
/// `detail.Destination` of an instance going back to a warm pool.
pub const WARM_POOL: &str = "WarmPool";

/// Contract defaults.
pub const DEFAULT_HOLD_SECONDS: u64 = 900;
pub const DEFAULT_CHECK_SECONDS: u64 = 60;
/// A hook's global timeout is at most 48 hours: no hold is longer.
pub const MAX_HOLD_SECONDS: u64 = 172_800;

/// `EC2_DEVICE_MATCH`, `LIFECYCLE_HOLD_SECONDS`, `LIFECYCLE_CHECK_SECONDS`,
/// `EC2_TENANT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleSettings {
    /// Empty: `EC2_DEVICE_MATCH` is unset, and a lifecycle event is a
    /// configuration error (after its action is completed).
    pub device_match: Vec<InstanceMatch>,
    pub hold_seconds: u64,
    pub check_seconds: u64,
    /// The tenant whose machines lifecycle events offboard; carried for
    /// `tenants` (a tenant name: lowercase letters, digits, `-`, ≤ 32).
    pub tenant: Option<String>,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            device_match: Vec::new(),
            hold_seconds: DEFAULT_HOLD_SECONDS,
            check_seconds: DEFAULT_CHECK_SECONDS,
            tenant: None,
        }
    }
}

impl LifecycleSettings {
    /// `tag`, `hostname`, or both in the order given, comma-separated.
    pub fn parse_device_match(v: &str) -> Result<Vec<InstanceMatch>, String> {
        let mut out = Vec::new();
        for part in v.split(',').map(str::trim) {
            let m = match part.to_ascii_lowercase().as_str() {
                "tag" => InstanceMatch::Tag,
                "hostname" => InstanceMatch::Hostname,
                other => return Err(format!("'{other}' is not tag or hostname")),
            };
            if out.contains(&m) {
                return Err(format!("'{part}' is named twice"));
            }
            out.push(m);
        }
        Ok(out)
    }

    /// A tenant name as the secret's `tenants` keys are written.
    pub fn parse_tenant(v: &str) -> Result<String, String> {
        let v = v.trim();
        let ok = (1..=32).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        match ok {
            true => Ok(v.to_string()),
            false => Err(format!(
                "'{v}' is not a tenant name (lowercase letters, digits and '-', at most 32)"
            )),
        }
    }
}

/// Machines an instance id finds, each way of `by` in turn: the first way
/// that finds any decides (so `tag,hostname` falls back to the host name
/// only when no machine carries the tag). Answers the machines that really
/// match, whatever a looser server answered.
pub async fn find_instance(
    defender: &dyn Defender,
    instance: &InstanceId,
    by: &[InstanceMatch],
    deadline: &Deadline,
) -> Result<Vec<Machine>, DefenderError> {
    let id = instance.as_str();
    for way in by {
        let mut found: Vec<Machine> = match way {
            InstanceMatch::Tag => defender
                .find_by_tag(id, deadline)
                .await?
                .into_iter()
                .filter(|m| m.machine_tags.iter().any(|t| t.eq_ignore_ascii_case(id)))
                .collect(),
            InstanceMatch::Hostname => {
                let name = DeviceName::parse(id).expect("an instance id is a device name");
                defender
                    .find_by_host(&name, deadline)
                    .await?
                    .into_iter()
                    .filter(|m| {
                        m.computer_dns_name
                            .as_deref()
                            .is_some_and(|n| name.matches(n) || name.matches_host(n))
                    })
                    .collect()
            }
        };
        found.sort_by_key(|m| m.id.to_ascii_lowercase());
        found.dedup_by(|a, b| a.id.eq_ignore_ascii_case(&b.id));
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Ok(Vec::new())
}

/// The lifecycle action a termination hook holds, as `CompleteLifecycleAction`
/// and `RecordLifecycleActionHeartbeat` name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleAction {
    pub group: String,
    pub hook: String,
    pub token: String,
    pub instance: String,
}

impl LifecycleAction {
    /// Re-validates each field as the event was read (a queue message's
    /// content is checked again by the worker).
    pub fn check(&self) -> Result<(), &'static str> {
        if !aws_name(&self.group) {
            return Err("AutoScalingGroupName");
        }
        if !aws_name(&self.hook) {
            return Err("LifecycleHookName");
        }
        if !token(&self.token) {
            return Err("LifecycleActionToken");
        }
        if InstanceId::parse(&self.instance).is_none() {
            return Err("EC2InstanceId");
        }
        Ok(())
    }
}

/// A group or hook name: 1 to 255 characters, no control characters.
fn aws_name(s: &str) -> bool {
    (1..=255).contains(&s.chars().count()) && !s.chars().any(char::is_control)
}

/// A lifecycle action token (a GUID).
fn token(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// A termination hook's event, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleInEvent {
    pub action: LifecycleAction,
    pub instance: InstanceId,
    /// `detail.Destination` is `WarmPool`: the instance is stopped and
    /// kept, not terminated.
    pub to_warm_pool: bool,
    /// The event's `time` (unix seconds), when it reads as RFC 3339.
    pub time: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the lifecycle event's 'detail.{0}' is missing or not valid")]
pub struct EventError(pub &'static str);

/// Whether an EventBridge event is a termination hook's.
pub fn is_scale_in(event: &Value) -> bool {
    event.get("source").and_then(Value::as_str) == Some(EVENT_SOURCE)
        && event.get("detail-type").and_then(Value::as_str) == Some(EVENT_DETAIL_TYPE)
}

impl ScaleInEvent {
    pub fn read(event: &Value) -> Result<Self, EventError> {
        let field = |name: &'static str| {
            event
                .pointer(&format!("/detail/{name}"))
                .and_then(Value::as_str)
                .map(str::trim)
                .ok_or(EventError(name))
        };
        let action = LifecycleAction {
            group: field("AutoScalingGroupName")?.to_string(),
            hook: field("LifecycleHookName")?.to_string(),
            token: field("LifecycleActionToken")?.to_string(),
            instance: field("EC2InstanceId")?.to_string(),
        };
        action.check().map_err(EventError)?;
        let instance = InstanceId::parse(&action.instance).ok_or(EventError("EC2InstanceId"))?;
        let time = event
            .get("time")
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_rfc3339(t.trim()).ok())
            .map(crate::support::time::unix_secs);
        Ok(Self {
            to_warm_pool: field("Destination").ok() == Some(WARM_POOL),
            action,
            instance,
            time,
        })
    }

    /// The ticket every outcome of this instance is filed under.
    pub fn ticket(&self) -> String {
        format!("{}/{}", self.action.group, self.action.instance)
    }

    /// The comment Defender keeps with the offboard.
    pub fn comment(&self) -> String {
        format!(
            "Offboarded on scale-in of {} ({})",
            self.action.group, self.action.instance
        )
    }

    /// When the hold started: the event's time, never later than `now`
    /// (a clock ahead of ours does not lengthen the hold).
    pub fn held_since(&self, now: i64) -> i64 {
        self.time.map_or(now, |t| t.min(now))
    }
}

/// A held instance, as its sealed queue message carries it: checked after
/// each `LIFECYCLE_CHECK_SECONDS` until its offboard is final or the hold
/// is over. Strict, as the other messages: a field this build does not know
/// is a message it did not write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldInstance {
    pub action: LifecycleAction,
    /// The offboard action being waited for.
    pub action_id: String,
    pub machine_id: String,
    pub ticket: String,
    pub source: String,
    /// Unix seconds the hold is counted from (the event's time).
    pub held_since: i64,
    /// Checks made so far.
    pub checks: u32,
}

/// What a held instance's check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Complete the lifecycle action now.
    Release(Release),
    /// Heartbeat, and check again after this many seconds.
    Wait(u64),
}

/// Why a held instance is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The offboard action reached a final status.
    Final,
    /// `LIFECYCLE_HOLD_SECONDS` passed first.
    HoldOver,
}

impl Release {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Final => "offboard_final",
            Self::HoldOver => "hold_over",
        }
    }
}

impl LifecycleSettings {
    /// After a check at `now` that found the action `final_status` (or
    /// not): let go, or wait the next check (never past the hold's end).
    pub fn next(&self, held_since: i64, final_status: bool, now: i64) -> Hold {
        if final_status {
            return Hold::Release(Release::Final);
        }
        let end = held_since.saturating_add(self.hold_seconds as i64);
        if now >= end {
            return Hold::Release(Release::HoldOver);
        }
        let left = (end - now) as u64;
        Hold::Wait(self.check_seconds.min(left).min(MAX_DELAY_SECONDS))
    }
}

/// How AWS answered a completion or a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Done,
    /// "No active Lifecycle Action found": the action is over already
    /// (completed before, or its hook timed out). Not an error.
    AlreadyOver,
}

/// A call to Auto Scaling that did not go through. The text is for the
/// function's log (an SDK error can name the account).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("Auto Scaling {}: {detail}", if *.passing { "is unavailable" } else { "refused the call" })]
pub struct LifecycleError {
    /// Worth a retry (throttling, a 5xx, no answer).
    pub passing: bool,
    /// AWS's error code, or what went wrong on the way.
    pub code: String,
    pub detail: String,
}

/// Port: the two Auto Scaling calls of a held termination. A completion is
/// always `CONTINUE`.
pub trait LifecycleActions: Send + Sync {
    /// `CompleteLifecycleAction` with `LifecycleActionResult=CONTINUE`.
    fn complete<'a>(
        &'a self,
        action: &'a LifecycleAction,
    ) -> BoxFuture<'a, Result<Answered, LifecycleError>>;
    /// `RecordLifecycleActionHeartbeat`.
    fn heartbeat<'a>(
        &'a self,
        action: &'a LifecycleAction,
    ) -> BoxFuture<'a, Result<Answered, LifecycleError>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"version": "0", "id": "e-1", "detail-type": EVENT_DETAIL_TYPE,
            "source": EVENT_SOURCE, "time": "2026-12-07T09:00:00Z",
            "detail": {"LifecycleActionToken": "87654321-4321-4321-4321-210987654321",
                "AutoScalingGroupName": "web-asg", "LifecycleHookName": "offboard",
                "EC2InstanceId": "i-1234567890abcdef0",
                "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                "Origin": "AutoScalingGroup", "Destination": "EC2"}})
    }

    #[test]
    fn an_event_reads_into_its_action_ticket_and_comment() {
        let e = ScaleInEvent::read(&event()).unwrap();
        assert!(is_scale_in(&event()));
        assert!(!e.to_warm_pool);
        assert_eq!(e.ticket(), "web-asg/i-1234567890abcdef0");
        assert_eq!(
            e.comment(),
            "Offboarded on scale-in of web-asg (i-1234567890abcdef0)"
        );
        assert_eq!(e.time, Some(1_796_634_000));
        assert_eq!(e.held_since(1_796_634_100), 1_796_634_000);
        // A clock ahead of ours does not lengthen the hold.
        assert_eq!(e.held_since(1_796_633_000), 1_796_633_000);
        let mut warm = event();
        warm["detail"]["Destination"] = json!("WarmPool");
        assert!(ScaleInEvent::read(&warm).unwrap().to_warm_pool);
        // Without Origin and Destination (a group without a warm pool).
        let mut plain = event();
        plain["detail"]
            .as_object_mut()
            .unwrap()
            .remove("Destination");
        assert!(!ScaleInEvent::read(&plain).unwrap().to_warm_pool);
    }

    #[test]
    fn a_malformed_event_names_its_field() {
        for (field, bad) in [
            ("EC2InstanceId", json!("i-xyz")),
            ("EC2InstanceId", json!(7)),
            ("LifecycleActionToken", json!("not a token")),
            ("AutoScalingGroupName", json!("")),
            ("LifecycleHookName", json!("a\u{7}b")),
        ] {
            let mut e = event();
            e["detail"][field] = bad;
            assert_eq!(ScaleInEvent::read(&e).unwrap_err(), EventError(field));
        }
    }

    #[test]
    fn the_hold_checks_until_final_or_over() {
        let s = LifecycleSettings::default();
        assert_eq!(s.next(0, false, 60), Hold::Wait(60));
        assert_eq!(s.next(0, true, 60), Hold::Release(Release::Final));
        // The last check lands on the hold's end.
        assert_eq!(s.next(0, false, 870), Hold::Wait(30));
        assert_eq!(s.next(0, false, 900), Hold::Release(Release::HoldOver));
    }

    #[test]
    fn settings_parse_strictly() {
        use InstanceMatch::*;
        let p = LifecycleSettings::parse_device_match;
        assert_eq!(p("tag").unwrap(), [Tag]);
        assert_eq!(p(" Hostname , tag").unwrap(), [Hostname, Tag]);
        assert!(p("tag,tag").is_err());
        assert!(p("name").is_err());
        assert!(p("tag,").is_err());
        let t = LifecycleSettings::parse_tenant;
        assert_eq!(t("contoso-eu1").unwrap(), "contoso-eu1");
        for bad in ["Contoso", "a_b", &"a".repeat(33), "a b"] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }
}
