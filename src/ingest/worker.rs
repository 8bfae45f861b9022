//! The queue worker (`MDE_MODE=worker`): the same binary and the same
//! per-device pipeline, fed by an SQS event source mapping instead of HTTP.
//!
//! Messages are handled one after another so the rate limiter paces them;
//! a device that failed (throttled, Defender down, a refusal a retry might
//! cure) is reported as a batch item failure, so SQS delivers it again
//! later and, after the queue's maxReceiveCount, moves it to the
//! dead-letter queue. Nothing is dropped, and a redelivered message that
//! was in fact done comes back `already_pending` from Defender.
//!
//! A message is acted on only when its MAC verifies and every field passes
//! the HTTP path's checks (see `queue`): anyone with `sqs:SendMessage` can
//! write to the queue, so its content is no more trusted than a request.
//! A refused message is a batch item failure too, so it ends in the DLQ
//! where an operator sees it.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;

use crate::App;
use crate::domain::limits::{DEFAULT_BUDGET, Deadline};
use crate::domain::offboard::Status;
use crate::domain::queue::{
    self, QueueKeys, QueueMessage, QueuedDevice, Rejection, VerifiedDevice,
};
use crate::domain::secret::AppSecret;
use crate::domain::tracking::TrackedAction;
use crate::ingest::input::CallbackUrl;
use crate::ingest::tracking::validate_track;
use crate::ingest::{Caller, GENERIC};
use crate::ops::audit::audit_line;
use crate::ops::metrics;

/// What a verified message asks of the worker.
enum Work {
    Device(VerifiedDevice),
    Track(TrackedAction),
}

impl App {
    /// One batch of queued devices; answers the messages to retry.
    pub async fn handle_queue(
        &self,
        event: SqsEvent,
        request_id: &str,
        deadline_ms: u64,
    ) -> SqsBatchResponse {
        let (answer, collected) = self
            .handle_queue_metered(event, request_id, deadline_ms)
            .await;
        collected.emit(&self.config.metrics_namespace, "queue", request_id);
        answer
    }

    /// As `handle_queue`, answering the batch's metrics instead of writing
    /// them (tests read them).
    pub async fn handle_queue_metered(
        &self,
        event: SqsEvent,
        request_id: &str,
        deadline_ms: u64,
    ) -> (SqsBatchResponse, metrics::Collector) {
        let deadline = if deadline_ms > 0 {
            Deadline::from_epoch_millis(deadline_ms)
        } else {
            Deadline::after(DEFAULT_BUDGET)
        };
        let cold_start = self.cold.swap(false, std::sync::atomic::Ordering::Relaxed);
        let span = tracing::info_span!("invocation", function_request_id = %request_id, cold_start);
        let work = async {
            let mut answer = SqsBatchResponse::default();
            let ids = event.records.iter().filter_map(|r| r.message_id.clone());
            // The MAC key is in the secret: without it no message can be
            // trusted, and every one goes back to the queue.
            let keys = match self.secrets.get().await {
                Ok(secret) => QueueKeys::from_secret(&secret)
                    .map(|k| (secret, k))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let (secret, keys) = match keys {
                Ok(k) => k,
                Err(reason) => {
                    tracing::warn!(error = %reason, records = event.records.len(), "no queue key; the batch goes back to the queue");
                    answer.set_failures(ids);
                    return answer;
                }
            };
            // Refused messages never reach Defender, nor cost a token.
            let mut accepted: Vec<(&SqsMessage, Work)> = Vec::new();
            for record in &event.records {
                match self.verify_record(&keys, record) {
                    Ok(item) => accepted.push((record, item)),
                    Err(()) => {
                        if let Some(id) = &record.message_id {
                            answer.add_failure(id.clone());
                        }
                    }
                }
            }
            if accepted.is_empty() {
                return answer;
            }
            if let Err(e) = self.defender.ready(&secret, &deadline).await {
                tracing::warn!(error = %e, records = accepted.len(), "no token; the messages go back to the queue");
                answer.set_failures(
                    answer
                        .batch_item_failures
                        .iter()
                        .map(|f| f.item_identifier.clone())
                        .chain(accepted.iter().filter_map(|(r, _)| r.message_id.clone()))
                        .collect::<Vec<_>>(),
                );
                return answer;
            }
            for (record, work) in accepted {
                let done = match work {
                    Work::Device(item) => self.handle_verified(item, &secret, &deadline).await,
                    Work::Track(t) => self.handle_track(t, &keys, &secret, &deadline).await,
                };
                if !done && let Some(id) = &record.message_id {
                    answer.add_failure(id.clone());
                }
            }
            answer
        }
        .instrument(span);
        metrics::scope(work).await
    }

    /// Opens a message and re-validates it; a refusal is audited and
    /// counted here, and the message left for the dead-letter queue.
    fn verify_record(&self, keys: &QueueKeys, record: &SqsMessage) -> Result<Work, ()> {
        let message_id = record.message_id.as_deref().unwrap_or("");
        let opened = match keys.open_message(record.body.as_deref().unwrap_or("")) {
            Ok(QueueMessage::Track(t)) => return self.verify_track(t, message_id).map(Work::Track),
            Ok(QueueMessage::Device(d)) => Ok(d),
            Err(e) => Err(e),
        };
        let known = |s: &str| {
            [
                GENERIC,
                crate::ingest::direct::EVENTBRIDGE,
                crate::ingest::direct::INVOKE,
            ]
            .contains(&s)
                || self.config.sources.get(s).is_some()
        };
        let hosts = &self.config.callback_hosts;
        let checked = opened.clone().and_then(|item| {
            let d = queue::validate(item, known)?;
            if let Some(url) = &d.callback_url {
                CallbackUrl::parse("callback_url", url, hosts).map_err(Rejection::Field)?;
            }
            if d.notify.as_ref().is_some_and(|n| !n.is_valid()) {
                return Err(Rejection::Malformed);
            }
            Ok(d)
        });
        checked.map(Work::Device).map_err(|reason| {
            metrics::count(metrics::names::REJECTED);
            // Fields are quoted only when the MAC proved this function wrote
            // them; an unsealed message's claims would be a false audit line.
            let sealed = opened.ok();
            let field = |f: fn(&QueuedDevice) -> &str| sealed.as_ref().map(f).unwrap_or("");
            tracing::warn!(
                target: "audit",
                event = "device_outcome",
                source = field(|i| &i.source),
                ticket = field(|i| &i.ticket),
                device = field(|i| &i.device),
                machine_id = "",
                computer_dns_name = "",
                status = "rejected",
                action_id = "",
                detail = %reason,
                dry_run = sealed.as_ref().is_some_and(|i| i.dry_run),
                source_ip = "",
                webhook_id = field(|i| i.webhook_id.as_deref().unwrap_or("")),
                message_id,
                "queue message rejected; left for the dead-letter queue"
            );
        })
    }

    /// A track message's checks; a refusal is counted and logged, and the
    /// message left for the dead-letter queue.
    fn verify_track(&self, t: TrackedAction, message_id: &str) -> Result<TrackedAction, ()> {
        let known = |s: &str| {
            [
                GENERIC,
                crate::ingest::direct::EVENTBRIDGE,
                crate::ingest::direct::INVOKE,
            ]
            .contains(&s)
                || self.config.sources.get(s).is_some()
        };
        validate_track(t, known, &self.config.callback_hosts).map_err(|reason| {
            metrics::count(metrics::names::REJECTED);
            tracing::warn!(detail = %reason, message_id, "track message rejected; left for the dead-letter queue");
        })
    }

    /// `true` when the message is done with (whatever the outcome), `false`
    /// when SQS should deliver it again.
    async fn handle_verified(
        &self,
        item: VerifiedDevice,
        secret: &AppSecret,
        deadline: &Deadline,
    ) -> bool {
        let dry_run = item.dry_run || self.config.dry_run;
        let results = self
            .offboarder
            .run(
                std::slice::from_ref(&item.device),
                &item.defender_comment(),
                dry_run,
                deadline,
            )
            .await;
        let r = &results[0];
        let caller = Caller {
            source: item.source.clone(),
            source_ip: None,
            webhook_id: item.webhook_id.clone(),
            ..Default::default()
        };
        audit_line(r, item.ticket.as_str(), &caller, dry_run);
        metrics::count(r.status.as_str());
        if r.status == Status::BudgetExceeded {
            metrics::count(metrics::names::BUDGET_EXCEEDED);
        }
        self.record_outcomes(&results, item.ticket.as_str(), &item.source)
            .await;
        self.track_requested(
            &results,
            item.ticket.as_str(),
            &item.source,
            item.callback_url.as_deref(),
            item.notify.as_ref(),
            secret,
        )
        .await;
        // Over budget is not a failure of the device: the message comes
        // back after its visibility timeout, when the hour has room again.
        !matches!(r.status, Status::Failed | Status::BudgetExceeded)
    }
}
