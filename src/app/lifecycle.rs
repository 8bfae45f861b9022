//! EC2 Auto Scaling scale-in (contract, "Auto Scaling lifecycle hooks"):
//! a termination hook's event offboards the terminating instance's machine
//! through the usual delivery (replay protection, the checks, the budget,
//! the ledger, the audit line, dry run), then lets the instance go with
//! `CONTINUE`: at once when no offboard was sent or nothing can wait (no
//! queue), else once the offboard action is final or the hold is over,
//! checked through sealed, delayed queue messages that each send the
//! lifecycle heartbeat.
//!
//! An answer a retry may change (a 503: Defender or the ledger down) lets
//! nothing go: the invocation fails as retryable, EventBridge delivers the
//! event again, and the hook's own timeout (`DefaultResult: CONTINUE`) is
//! the backstop. Any other error (configuration, the secret) lets the
//! instance go first: a configuration problem never holds an instance.

use serde_json::{Value, json};

use super::audit::Origin;
use super::idempotency::DeliveryKey;
use super::offboarding::{Content, Delivery};
use super::{App, Outcome};
use crate::domain::defender::DefenderError;
use crate::domain::ledger::ActionStatus;
use crate::domain::lifecycle::{
    Answered, HeldInstance, Hold, LifecycleAction, LifecycleError, ScaleInEvent,
};
use crate::domain::limits::Deadline;
use crate::domain::model::{Comment, Device, DeviceRef, FieldError, Mode, OffboardRequest, Ticket};
use crate::domain::queue::QueueKeys;
use crate::domain::secret::AppSecret;
use crate::domain::tracking::valid_action_id;
use crate::error::ApiError;
use crate::support::time::unix_secs;

/// How a lifecycle event failed.
#[derive(Debug)]
pub enum ScaleInError {
    /// As any delivery's error.
    Api(ApiError),
    /// A variable the event needs is not set (the lifecycle action was
    /// completed before this was answered).
    Unconfigured {
        var: &'static str,
        reason: &'static str,
    },
    /// Auto Scaling did not take the completion.
    Lifecycle(LifecycleError),
}

impl From<ApiError> for ScaleInError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<LifecycleError> for ScaleInError {
    fn from(e: LifecycleError) -> Self {
        Self::Lifecycle(e)
    }
}

/// What was done with the lifecycle action, as the answer's `lifecycle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Completed with `CONTINUE` (or found over already).
    Completed,
    /// Held while the offboard runs; checked through the queue.
    Held,
}

impl App {
    /// Replaces the Auto Scaling port (tests).
    pub fn with_lifecycle(
        mut self,
        actions: std::sync::Arc<dyn crate::domain::lifecycle::LifecycleActions>,
    ) -> Self {
        self.lifecycle = actions;
        self
    }

    fn unix_now(&self) -> i64 {
        unix_secs((self.tracker.clock)())
    }

    /// One termination hook's event (`domain::lifecycle::is_scale_in`).
    pub async fn scale_in(
        &self,
        event: &Value,
        origin: Origin,
        key: DeliveryKey,
        deadline: &Deadline,
    ) -> Result<Outcome, ScaleInError> {
        // Without a readable token nothing can be completed: the event is
        // refused as any malformed request, and the hook's timeout ends it.
        let ev = ScaleInEvent::read(event)
            .map_err(|e| ApiError::Field(FieldError::bounds("detail", e.to_string())))?;
        let (group, instance) = (&ev.action.group, &ev.action.instance);
        if ev.to_warm_pool {
            tracing::info!(group = %group, instance = %instance, "the instance goes back to its warm pool, not away: nothing offboarded");
            self.let_go(&ev.action, "warm_pool").await?;
            return Ok(Outcome::accepted(&json!({
                "status": "ignored",
                "reason": "the instance goes back to its warm pool (Destination WarmPool); nothing was offboarded",
                "lifecycle": "completed",
            })));
        }
        let by = &self.config.lifecycle.device_match;
        if by.is_empty() {
            self.let_go(&ev.action, "not_configured").await?;
            return Err(ScaleInError::Unconfigured {
                var: "EC2_DEVICE_MATCH",
                reason: "is not set: an Auto Scaling lifecycle event cannot find its machine without it (tag, hostname, or both); the lifecycle action was completed with CONTINUE",
            });
        }
        let secret = match self.secrets.get().await {
            Ok(secret) => secret,
            Err(e) => return Err(self.failed(&ev, e.into()).await),
        };
        // `EC2_TENANT`: the tenant whose machines scale-in offboards.
        let request = match request(&ev, by, self.config.lifecycle.tenant.as_deref()) {
            Ok(r) => r,
            Err(e) => return Err(self.failed(&ev, e).await),
        };
        let source = origin.source.clone();
        let delivery = Delivery {
            origin,
            key,
            content: Content::Request(request),
        };
        let outcome = match self.deliver(delivery, &secret, deadline).await {
            Ok(o) => o,
            Err(e) => return Err(self.failed(&ev, e).await),
        };
        if outcome.status == 503 {
            // Retried by EventBridge: the offboard may still be sent.
            tracing::info!(group = %group, instance = %instance, "offboard not sent yet; the lifecycle action waits for the retry");
            return Ok(outcome);
        }
        let step = self.hold_or_let_go(&ev, &outcome, &source, &secret).await?;
        Ok(with_step(outcome, step))
    }

    /// An error before an offboard could be sent: one a retry may cure
    /// keeps the instance for the retry; any other lets it go first.
    async fn failed(&self, ev: &ScaleInEvent, e: ApiError) -> ScaleInError {
        if matches!(e.status().as_u16(), 409 | 429 | 503 | 504) {
            return e.into();
        }
        match self.let_go(&ev.action, "not_offboarded").await {
            Ok(()) => e.into(),
            Err(le) => le.into(),
        }
    }

    /// After the delivery's answer: hold the instance while its offboard
    /// runs, or let it go now.
    async fn hold_or_let_go(
        &self,
        ev: &ScaleInEvent,
        outcome: &Outcome,
        source: &str,
        secret: &AppSecret,
    ) -> Result<Step, ScaleInError> {
        let answer: Value = serde_json::from_str(&outcome.body).unwrap_or_default();
        let first = answer.pointer("/results/0");
        let field = |k: &str| first.and_then(|r| r.get(k)).and_then(Value::as_str);
        let requested = match (field("status"), field("action_id"), field("machine_id")) {
            (Some("offboard_requested"), Some(action_id), Some(machine_id)) => {
                Some((action_id, machine_id))
            }
            _ => None,
        };
        let reason = match requested {
            None => "no_offboard_sent",
            Some((action_id, machine_id)) => {
                let now = self.unix_now();
                let held = HeldInstance {
                    action: ev.action.clone(),
                    action_id: action_id.to_string(),
                    machine_id: machine_id.to_string(),
                    ticket: ev.ticket(),
                    source: source.to_string(),
                    held_since: ev.held_since(now),
                    checks: 0,
                };
                match self.config.lifecycle.next(held.held_since, false, now) {
                    Hold::Wait(delay) => match self.send_held(&held, delay, secret, now).await {
                        true => return Ok(Step::Held),
                        false => "nothing_can_wait",
                    },
                    Hold::Release(r) => r.as_str(),
                }
            }
        };
        self.let_go(&ev.action, reason).await?;
        Ok(Step::Completed)
    }

    /// Puts a held instance's next check on the queue; `false` when there
    /// is no queue, no queue key, or the queue did not take it.
    async fn send_held(
        &self,
        held: &HeldInstance,
        delay: u64,
        secret: &AppSecret,
        now: i64,
    ) -> bool {
        let Some(writer) = &self.queue else {
            return false;
        };
        let Ok(keys) = QueueKeys::from_secret(secret) else {
            tracing::warn!(instance = %held.action.instance, "no usable queue key: the instance is not held");
            return false;
        };
        let body = keys.seal_lifecycle(held, now);
        let delay = std::time::Duration::from_secs(delay);
        let taken = writer.send_delayed(&[body], delay).await == 0;
        if !taken {
            tracing::warn!(instance = %held.action.instance, "the queue did not take the held instance's check");
        }
        taken
    }

    /// `CompleteLifecycleAction` with `CONTINUE`, and its audit line. An
    /// action over already is not an error.
    async fn let_go(&self, action: &LifecycleAction, reason: &str) -> Result<(), LifecycleError> {
        let answered = self.lifecycle.complete(action).await;
        let done = match &answered {
            Ok(Answered::Done) => "completed",
            Ok(Answered::AlreadyOver) => "already_over",
            Err(_) => "failed",
        };
        tracing::info!(
            target: "audit",
            event = "lifecycle_action",
            group = %action.group,
            hook = %action.hook,
            instance = %action.instance,
            result = "CONTINUE",
            reason,
            status = done,
            error = answered.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
            "lifecycle action completed"
        );
        answered.map(|_| ())
    }

    /// One held instance's check, from its queue message. `true` when the
    /// message is done with, `false` when SQS should deliver it again.
    pub(crate) async fn handle_held(
        &self,
        held: HeldInstance,
        keys: &QueueKeys,
        deadline: &Deadline,
    ) -> bool {
        let now = self.unix_now();
        let settings = &self.config.lifecycle;
        // A hold that is over needs no read of the action.
        let final_status = match settings.next(held.held_since, false, now) {
            Hold::Release(_) => false,
            Hold::Wait(_) => match self
                .tenant(self.config.lifecycle.tenant.as_deref())
                .defender
                .get_action(&held.action_id, deadline)
                .await
            {
                Ok(a) => a
                    .status
                    .as_deref()
                    .and_then(ActionStatus::parse)
                    .is_some_and(ActionStatus::is_final),
                // Defender no longer knows the action: nothing will move it.
                Err(DefenderError::NotFound) => true,
                Err(e) => {
                    tracing::warn!(action_id = %held.action_id, error = %e, "action not read; checked again later");
                    false
                }
            },
        };
        match settings.next(held.held_since, final_status, now) {
            Hold::Release(r) => match self.let_go(&held.action, r.as_str()).await {
                Ok(()) => true,
                // Throttled or unreachable: the message comes back.
                Err(e) => !e.passing,
            },
            Hold::Wait(delay) => {
                match self.lifecycle.heartbeat(&held.action).await {
                    Ok(Answered::Done) => {}
                    Ok(Answered::AlreadyOver) => {
                        tracing::info!(instance = %held.action.instance, "the lifecycle action is over already (completed, or its hook timed out): no more checks");
                        return true;
                    }
                    Err(e) => {
                        tracing::warn!(instance = %held.action.instance, error = %e, "lifecycle heartbeat not recorded");
                    }
                }
                let next = HeldInstance {
                    checks: held.checks + 1,
                    ..held
                };
                let Some(writer) = &self.queue else {
                    return false;
                };
                let body = keys.seal_lifecycle(&next, now);
                writer
                    .send_delayed(&[body], std::time::Duration::from_secs(delay))
                    .await
                    == 0
            }
        }
    }
}

/// The request an event makes: its instance, found as `EC2_DEVICE_MATCH`
/// says, under the ticket `<group>/<instance id>`.
fn request(
    ev: &ScaleInEvent,
    by: &[crate::domain::model::InstanceMatch],
    tenant: Option<&str>,
) -> Result<OffboardRequest, ApiError> {
    Ok(OffboardRequest {
        ticket: Ticket::parse("ticket", &ev.ticket())?,
        comment: Comment::parse("comment", &ev.comment())?,
        devices: vec![Device {
            given: ev.instance.as_str().to_string(),
            target: DeviceRef::Instance(ev.instance.clone(), by.to_vec()),
        }],
        dry_run: false,
        mode: Mode::Now,
        tenant: tenant.map(str::to_string),
    })
}

/// The answer with what was done with the lifecycle action.
fn with_step(mut outcome: Outcome, step: Step) -> Outcome {
    if let Ok(mut v) = serde_json::from_str::<Value>(&outcome.body)
        && let Some(obj) = v.as_object_mut()
    {
        let s = match step {
            Step::Completed => "completed",
            Step::Held => "held",
        };
        obj.insert("lifecycle".into(), json!(s));
        outcome.body = v.to_string();
    }
    outcome
}

/// A held instance's message, re-validated as the event was.
pub(crate) fn valid_held(h: &HeldInstance) -> bool {
    h.action.check().is_ok()
        && valid_action_id(&h.action_id)
        && crate::domain::model::MachineId::parse(&h.machine_id).is_some()
        && Ticket::parse("ticket", &h.ticket).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_says_what_became_of_the_lifecycle_action() {
        let o = Outcome::ok(&json!({"ticket": "g/i-1", "results": []}));
        let held = with_step(o.clone(), Step::Held);
        let v: Value = serde_json::from_str(&held.body).unwrap();
        assert_eq!(v["lifecycle"], "held");
        assert_eq!(v["ticket"], "g/i-1");
        let done = with_step(o, Step::Completed);
        assert!(done.body.contains("\"lifecycle\":\"completed\""));
    }
}
