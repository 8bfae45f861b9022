//! Following each requested offboard to its final state (see
//! `domain::tracking`), and reporting it: the ledger, one audit line
//! `action_outcome`, a metric per final status, and the follow-ups
//! (`domain::follow_up`: callbacks, ticket write-backs).
//!
//! Sharing Defender's budget: tracking reads only `GET /api/machineactions/
//! {id}`, an API Defender counts apart from the offboard POST and the
//! machine lookups, so no tracking call takes a slot an offboard needs. On
//! that API tracking takes at most half of `RATE_LIMIT_PER_MINUTE` (its own
//! limiter, in front of the shared one), leaving the rest to the status and
//! cancel routes; and it never waits for a slot inside an invocation: a
//! check that finds no slot goes back on the queue a minute later.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::App;
use crate::domain::defender::DefenderError;
use crate::domain::follow_up::{FinalOutcome, FollowUpTargets};
use crate::domain::ledger::{
    ActionStatus, DeviceRecord, LedgerError, RecordKey, RecordedOutcome, Report, format_time,
};
use crate::domain::limits::{DEADLINE_MARGIN, Deadline, RateLimiter};
use crate::domain::offboard::{DeviceResult, Status};
use crate::domain::queue::QueueKeys;
use crate::domain::secret::AppSecret;
use crate::domain::tracking::{Next, Step, THROTTLED_RETRY_SECONDS, TrackedAction, delay_for};
use crate::ops::metrics;
use crate::support::time::unix_secs;

/// The wall clock tracking reads; a simulation passes its own.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// What tracking keeps for the life of the instance.
pub struct Tracker {
    pub(crate) clock: Clock,
    /// Tracking's share of the GetAction budget.
    limiter: RateLimiter,
}

impl Tracker {
    pub(crate) fn new(per_minute: usize) -> Self {
        Self {
            clock: Arc::new(SystemTime::now),
            limiter: RateLimiter::new(&[((per_minute / 2).max(1), Duration::from_secs(60))]),
        }
    }

    fn now(&self) -> i64 {
        unix_secs((self.clock)())
    }
}

/// Metric name per final status.
pub fn outcome_metric(s: ActionStatus) -> &'static str {
    match s {
        ActionStatus::Succeeded => metrics::names::ACTION_SUCCEEDED,
        ActionStatus::Failed => metrics::names::ACTION_FAILED,
        ActionStatus::Cancelled => metrics::names::ACTION_CANCELLED,
        ActionStatus::TimeOut => metrics::names::ACTION_TIMED_OUT,
        ActionStatus::NotConfirmed | ActionStatus::Pending | ActionStatus::InProgress => {
            metrics::names::ACTION_NOT_CONFIRMED
        }
    }
}

impl App {
    /// Sets the clock tracking reads (simulations).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.tracker.clock = clock;
        self
    }

    /// Sends the first track message of each action just requested. A
    /// message the queue does not take is logged and counted: the offboard
    /// itself has happened, and the ticket route still shows it `Pending`.
    pub(crate) async fn track_requested(
        &self,
        results: &[DeviceResult],
        ticket: &str,
        origin: &super::audit::Origin,
        to: &FollowUpTargets,
        secret: &AppSecret,
    ) {
        // Tracking needs the ledger (the outcome's home) and the queue.
        let (Some(_), Some(writer)) = (&self.records, &self.queue) else {
            return;
        };
        let Ok(keys) = QueueKeys::from_secret(secret) else {
            return;
        };
        let now = self.tracker.now();
        let plan = &self.config.track;
        let bodies: Vec<String> = results
            .iter()
            .filter(|r| r.status == Status::OffboardRequested)
            .filter_map(|r| {
                Some(TrackedAction {
                    action_id: r.action_id.clone()?,
                    machine_id: r.machine_id.as_ref()?.as_str().to_string(),
                    ticket: ticket.to_string(),
                    device: r.device.clone(),
                    source: origin.source.clone(),
                    callback_url: to.callback_url.clone(),
                    notify: to.notify.clone(),
                    tenant: origin.tenant.clone(),
                    requested_at: now,
                    attempt: 0,
                    due_at: plan.first_due(now),
                })
            })
            .map(|t| keys.seal_track(&t))
            .collect();
        let delay = delay_for(plan.first_due(now), now);
        let refused = writer.send_delayed(&bodies, delay).await;
        if refused > 0 {
            metrics::add(metrics::names::TRACK_NOT_QUEUED, refused as f64);
            tracing::warn!(
                ticket,
                refused,
                "actions not tracked: the queue refused their messages"
            );
        }
    }

    /// One track message. `true` when it is done with, `false` when SQS
    /// should deliver it again.
    pub(crate) async fn handle_track(
        &self,
        t: TrackedAction,
        keys: &QueueKeys,
        secret: &AppSecret,
        deadline: &Deadline,
    ) -> bool {
        let plan = &self.config.track;
        let now = self.tracker.now();
        if let Step::Wait(d) = plan.step(&t, now) {
            return self.send_track(&t, keys, Duration::from_secs(d)).await;
        }
        let status = match self
            .read_status(t.tenant.as_deref(), &t.action_id, deadline)
            .await
        {
            Ok(s) => s,
            Err(Unread::NoSlot) => {
                return self
                    .send_track(&t, keys, Duration::from_secs(THROTTLED_RETRY_SECONDS))
                    .await;
            }
            Err(Unread::Gone) => {
                // Defender no longer knows the action: nothing will move it.
                return self
                    .finish(
                        &t,
                        ActionStatus::NotConfirmed,
                        "Defender no longer knows this action",
                        secret,
                        deadline,
                    )
                    .await;
            }
            Err(Unread::Failed(e)) => {
                tracing::warn!(action_id = %t.action_id, error = %e, "action not read; checked again later");
                // Errors count against the window like a Pending answer,
                // so a Defender that stays broken still ends in NotConfirmed.
                ActionStatus::Pending
            }
        };
        match plan.next(&t, status, now) {
            Next::Final(s) => {
                let detail = if s == ActionStatus::NotConfirmed {
                    "still not final when tracking ended (TRACK_FOR_SECONDS)"
                } else {
                    ""
                };
                self.finish(&t, s, detail, secret, deadline).await
            }
            Next::Again { due_at } => {
                let next = TrackedAction {
                    attempt: t.attempt + 1,
                    due_at,
                    ..t
                };
                self.send_track(&next, keys, delay_for(due_at, now)).await
            }
        }
    }

    async fn read_status(
        &self,
        tenant: Option<&str>,
        action_id: &str,
        deadline: &Deadline,
    ) -> Result<ActionStatus, Unread> {
        // A short wait at most: a check is never worth holding the worker.
        let slot = Deadline::after(DEADLINE_MARGIN + Duration::from_millis(200));
        if self.tracker.limiter.acquire(&slot).await.is_err() {
            return Err(Unread::NoSlot);
        }
        let defender = self.tenant(tenant).defender.clone();
        match defender.get_action(action_id, deadline).await {
            Ok(a) => Ok(a
                .status
                .as_deref()
                .and_then(ActionStatus::parse)
                .unwrap_or(ActionStatus::Pending)),
            Err(DefenderError::NotFound) => Err(Unread::Gone),
            Err(DefenderError::Throttled { .. }) => Err(Unread::NoSlot),
            Err(e) => Err(Unread::Failed(e)),
        }
    }

    async fn send_track(&self, t: &TrackedAction, keys: &QueueKeys, delay: Duration) -> bool {
        let Some(writer) = &self.queue else {
            return false;
        };
        let taken = writer.send_delayed(&[keys.seal_track(t)], delay).await == 0;
        if !taken {
            // This message comes back after its visibility timeout and
            // tries again; nothing is lost.
            tracing::warn!(action_id = %t.action_id, "the next track message was not queued");
        }
        taken
    }

    /// The final status: the ledger, the audit line, the metric, then the
    /// follow-ups. A failing follow-up never changes the outcome.
    ///
    /// SQS delivers at least once, so a track message can come twice and
    /// fork its chain: the ledger's conditional write (`report_outcome`)
    /// lets only the first finisher of an action report it, so the
    /// follow-ups go out once. The cancel route writes a final status too,
    /// but reports nothing: tracking still reports that outcome, once.
    async fn finish(
        &self,
        t: &TrackedAction,
        status: ActionStatus,
        detail: &str,
        secret: &AppSecret,
        deadline: &Deadline,
    ) -> bool {
        let finished = (self.tracker.clock)();
        let mut status = status;
        if self.records.is_some() {
            match self.report(t, status, finished).await {
                Ok(Some(reported)) => status = reported,
                Ok(None) => {
                    tracing::info!(action_id = %t.action_id, ticket = %t.ticket, "outcome already reported; a duplicate track message, nothing sent");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(action_id = %t.action_id, error = %e, "outcome not written; the message comes back");
                    return false;
                }
            }
        }
        let requested_at =
            format_time(UNIX_EPOCH + Duration::from_secs(t.requested_at.max(0) as u64));
        let finished_at = format_time(finished);
        tracing::info!(
            target: "audit",
            event = "action_outcome",
            source = %t.source,
            ticket = %t.ticket,
            device = %t.device,
            machine_id = %t.machine_id,
            action_id = %t.action_id,
            status = status.as_str(),
            detail,
            checks = t.attempt + 1,
            requested_at = %requested_at,
            finished_at = %finished_at,
            "action outcome"
        );
        metrics::count(outcome_metric(status));
        let outcome = FinalOutcome {
            action: t,
            status,
            detail,
            requested_at: &requested_at,
            finished_at: &finished_at,
        };
        for follow_up in &self.follow_ups {
            follow_up.deliver(&outcome, secret, deadline).await;
        }
        true
    }

    /// Claims the reporting of `t`'s outcome: the status to report when
    /// this caller is the first, `None` when it was reported before. A
    /// record the request could not write is written now, so that even
    /// then only one finisher reports.
    async fn report(
        &self,
        t: &TrackedAction,
        status: ActionStatus,
        at: SystemTime,
    ) -> Result<Option<ActionStatus>, LedgerError> {
        let Some(ledger) = &self.records else {
            return Ok(Some(status));
        };
        let key = RecordKey {
            ticket: t.ticket.clone(),
            machine_id: t.machine_id.clone(),
            action_id: t.action_id.clone(),
        };
        for _ in 0..2 {
            match ledger.report_outcome(&key, status, at).await? {
                Report::First(reported) => return Ok(Some(reported)),
                Report::Already => return Ok(None),
                Report::NotFound => {
                    let requested_at =
                        UNIX_EPOCH + Duration::from_secs(t.requested_at.max(0) as u64);
                    ledger
                        .record_device(&DeviceRecord {
                            ticket: t.ticket.clone(),
                            machine_id: t.machine_id.clone(),
                            device: t.device.clone(),
                            status: RecordedOutcome::OffboardRequested,
                            action_id: t.action_id.clone(),
                            action_status: ActionStatus::Pending,
                            requested_at,
                            updated_at: requested_at,
                            source: t.source.clone(),
                            tenant: t.tenant.clone(),
                        })
                        .await?;
                }
            }
        }
        Err(LedgerError::Unavailable(
            "the device record was not there after it was written".into(),
        ))
    }
}

enum Unread {
    /// No slot in tracking's share of the budget, or Defender throttled.
    NoSlot,
    Gone,
    Failed(DefenderError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_final_status_has_its_own_metric() {
        let names: std::collections::HashSet<_> = ActionStatus::FINAL
            .iter()
            .chain([ActionStatus::NotConfirmed].iter())
            .map(|s| outcome_metric(*s))
            .collect();
        assert_eq!(names.len(), 5);
    }
}
