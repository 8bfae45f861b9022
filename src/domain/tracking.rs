//! Tracking an offboard to its final state. `offboard_requested` is only a
//! request: the MachineAction stays `Pending` until the device next
//! connects, which for a laptop in a drawer is days away. Each requested
//! action is followed through delayed messages on the same sealed queue (no
//! scheduler of ours): the worker reads the action when a message comes
//! due, and either sends the next message or reports the final status.
//!
//! The schedule is pure (`TrackPlan::next`), over unix seconds the caller
//! passes in, so a simulation can run seven days in a moment.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::ledger::ActionStatus;

/// SQS refuses a `DelaySeconds` above 900: longer waits are chained.
pub const MAX_DELAY_SECONDS: u64 = 900;
/// Contract defaults of `TRACK_INTERVALS_SECONDS` and `TRACK_FOR_SECONDS`.
pub const DEFAULT_INTERVALS: [u64; 7] = [900, 1800, 3600, 10800, 21600, 43200, 86400];
pub const DEFAULT_TRACK_FOR: u64 = 604_800;
/// When tracking's own share of the GetAction budget is used up, the check
/// comes back this much later instead of waiting inside the invocation.
pub const THROTTLED_RETRY_SECONDS: u64 = 60;

/// One tracked action, as the track message carries it. Strict like the
/// device message: a field this build does not know is a message it did
/// not write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackedAction {
    pub action_id: String,
    pub machine_id: String,
    pub ticket: String,
    pub device: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<crate::domain::notify::NotifyTarget>,
    /// The tenant the action is in (with the secret's `tenants`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Unix seconds when the offboard was requested: tracking ends
    /// `track_for` after it.
    pub requested_at: i64,
    /// Checks made so far; picks the next interval.
    pub attempt: u32,
    /// Unix seconds when the next check is due. A message delivered before
    /// (a chained wait, or a queue that cannot delay) only sends itself on.
    pub due_at: i64,
}

/// A tracked action's id as the worker re-validates it.
pub fn valid_action_id(s: &str) -> bool {
    // Defender's action ids are GUIDs; anything else never goes in a URL.
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// `TRACK_INTERVALS_SECONDS` and `TRACK_FOR_SECONDS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackPlan {
    /// Never empty; the last repeats.
    pub intervals: Vec<u64>,
    pub track_for: u64,
}

impl Default for TrackPlan {
    fn default() -> Self {
        Self {
            intervals: DEFAULT_INTERVALS.to_vec(),
            track_for: DEFAULT_TRACK_FOR,
        }
    }
}

/// What to do with a track message that came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not due yet: send the same message again with this delay.
    Wait(u64),
    /// Read the action now.
    Check,
}

/// After a check: follow on, or stop with a final status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Check again when this message (`attempt` + 1, new `due_at`) is due.
    Again {
        due_at: i64,
    },
    Final(ActionStatus),
}

impl TrackPlan {
    /// Parses `900,1800,...`: whole seconds, at least one, each 1..=7 days.
    pub fn parse_intervals(v: &str) -> Result<Vec<u64>, String> {
        // `split` yields at least one part, so an empty list never parses.
        v.split(',')
            .map(|p| {
                let p = p.trim();
                p.parse::<u64>()
                    .ok()
                    .filter(|n| (1..=604_800).contains(n))
                    .ok_or_else(|| {
                        format!("'{p}' is not a whole number of seconds from 1 to 604800")
                    })
            })
            .collect()
    }

    pub fn interval(&self, attempt: u32) -> u64 {
        let i = (attempt as usize).min(self.intervals.len() - 1);
        self.intervals[i]
    }

    /// The first message for an action requested at `now`.
    pub fn first_due(&self, now: i64) -> i64 {
        now.saturating_add(self.interval(0) as i64)
    }

    /// Whether a message delivered at `now` is due; a longer wait than SQS
    /// allows goes in 900-second links.
    pub fn step(&self, t: &TrackedAction, now: i64) -> Step {
        if t.due_at > now {
            Step::Wait(((t.due_at - now) as u64).min(MAX_DELAY_SECONDS))
        } else {
            Step::Check
        }
    }

    /// After reading the action at `now`: a final Defender status ends
    /// tracking; otherwise the next check, unless it would fall after
    /// `track_for`, which is `NotConfirmed`.
    pub fn next(&self, t: &TrackedAction, status: ActionStatus, now: i64) -> Next {
        if status.is_final() {
            return Next::Final(status);
        }
        let end = t.requested_at.saturating_add(self.track_for as i64);
        if now >= end {
            return Next::Final(ActionStatus::NotConfirmed);
        }
        let due = now.saturating_add(self.interval(t.attempt + 1) as i64);
        // The last check lands on the end itself, so the whole window is
        // covered without a check after it.
        Next::Again {
            due_at: due.min(end),
        }
    }
}

/// The SQS delay of a message due at `due_at`, sent at `now`.
pub fn delay_for(due_at: i64, now: i64) -> Duration {
    Duration::from_secs((due_at.saturating_sub(now).max(0) as u64).min(MAX_DELAY_SECONDS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(requested_at: i64) -> TrackedAction {
        TrackedAction {
            action_id: "b9f0b2d6-0b5e-4a6c-9f46-1c2d3e4f5a6b".into(),
            machine_id: "1e5bc9d7e413ddd7902c2932e418702b84d0cc07".into(),
            ticket: "INC1".into(),
            device: "laptop-1".into(),
            source: "generic".into(),
            callback_url: None,
            notify: None,
            requested_at,
            attempt: 0,
            due_at: requested_at + 900,
            tenant: None,
        }
    }

    /// The defaults over seven days: the contract's intervals, the last
    /// repeating, and the final check on day seven. This count is the
    /// README's "GETs per tracked device".
    #[test]
    fn the_default_plan_checks_thirteen_times_in_seven_days_then_gives_up() {
        let plan = TrackPlan::default();
        let mut t = tracked(0);
        let mut checks = 0;
        let mut links = 0;
        let mut now = 0;
        loop {
            match plan.step(&t, now) {
                Step::Wait(d) => {
                    assert!(d <= MAX_DELAY_SECONDS);
                    links += 1;
                    now += d as i64;
                    continue;
                }
                Step::Check => checks += 1,
            }
            match plan.next(&t, ActionStatus::Pending, now) {
                Next::Again { due_at } => {
                    t.attempt += 1;
                    t.due_at = due_at;
                }
                Next::Final(s) => {
                    assert_eq!(s, ActionStatus::NotConfirmed);
                    break;
                }
            }
        }
        assert_eq!(now, 604_800);
        // 7 growing intervals to day 2, 5 more daily, the last on day 7.
        assert_eq!(checks, 13);
        // 604800 s of waiting in links of at most 900 s.
        assert_eq!(links, 604_800 / 900);
    }

    #[test]
    fn a_final_status_ends_tracking_at_once_and_not_confirmed_is_not_final() {
        let plan = TrackPlan::default();
        let t = tracked(0);
        for s in ActionStatus::FINAL {
            assert_eq!(plan.next(&t, s, 900), Next::Final(s));
        }
        assert_eq!(
            plan.next(&t, ActionStatus::InProgress, 900),
            Next::Again { due_at: 2700 }
        );
        assert!(!ActionStatus::NotConfirmed.is_final());
    }

    #[test]
    fn intervals_parse_strictly() {
        assert_eq!(
            TrackPlan::parse_intervals("60, 120").unwrap(),
            vec![60, 120]
        );
        for bad in ["", "0", "1,x", "-5", "604801", "1.5"] {
            assert!(TrackPlan::parse_intervals(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn action_ids_are_guid_characters_only() {
        assert!(valid_action_id("b9f0b2d6-0b5e-4a6c-9f46-1c2d3e4f5a6b"));
        for bad in ["", "../machines", "a b", "x".repeat(65).as_str()] {
            assert!(!valid_action_id(bad), "{bad}");
        }
    }
}
