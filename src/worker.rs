//! The queue worker (`MDE_MODE=worker`): the same binary and the same
//! per-device pipeline, fed by an SQS event source mapping instead of HTTP.
//!
//! Messages are handled one after another so the rate limiter paces them;
//! a device that failed (throttled, Defender down, a refusal a retry might
//! cure) is reported as a batch item failure, so SQS delivers it again
//! later and, after the queue's maxReceiveCount, moves it to the
//! dead-letter queue. Nothing is dropped, and a redelivered message that
//! was in fact done comes back `already_pending` from Defender.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;

use crate::App;
use crate::handler::{Caller, audit_line};
use crate::input::parse_device;
use crate::limits::{DEFAULT_BUDGET, Deadline};
use crate::metrics;
use crate::offboard::Status;
use crate::queue::QueuedDevice;

impl App {
    /// One batch of queued devices; answers the messages to retry.
    pub async fn handle_queue(
        &self,
        event: SqsEvent,
        request_id: &str,
        deadline_ms: u64,
    ) -> SqsBatchResponse {
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
            // Credentials are per batch: without them nothing can be done,
            // and every message goes back to the queue.
            let ready = match self.secrets.get().await {
                Ok(secret) => self.tokens.get(&secret, &deadline).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = ready {
                tracing::warn!(error = %e, records = event.records.len(), "no credentials; the batch goes back to the queue");
                answer.set_failures(ids);
                return answer;
            }
            for record in &event.records {
                if !self.handle_record(record, &deadline).await
                    && let Some(id) = &record.message_id
                {
                    answer.add_failure(id.clone());
                }
            }
            answer
        }
        .instrument(span);
        let (answer, collected) = metrics::scope(work).await;
        collected.emit(&self.config.metrics_namespace, "queue", request_id);
        answer
    }

    /// `true` when the message is done with (whatever the outcome), `false`
    /// when SQS should deliver it again.
    async fn handle_record(&self, record: &SqsMessage, deadline: &Deadline) -> bool {
        let item: QueuedDevice = match record.body.as_deref().map(serde_json::from_str) {
            Some(Ok(item)) => item,
            _ => {
                tracing::error!(
                    message_id = record.message_id.as_deref().unwrap_or(""),
                    "not a queued device; left for the dead-letter queue"
                );
                return false;
            }
        };
        let device = match parse_device("device", &item.device) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(reason = %e, "a queued device that cannot be parsed; left for the dead-letter queue");
                return false;
            }
        };
        let dry_run = item.dry_run || self.config.dry_run;
        let results = self
            .offboarder
            .run(
                std::slice::from_ref(&device),
                &item.comment,
                dry_run,
                deadline,
            )
            .await;
        let r = &results[0];
        let caller = Caller {
            source: item.source.clone(),
            source_ip: None,
            webhook_id: item.webhook_id.clone(),
        };
        audit_line(r, &item.ticket, &caller, dry_run);
        metrics::count(r.status.as_str());
        r.status != Status::Failed
    }
}
