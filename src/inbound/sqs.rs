//! The SQS edge: a batch from the queue's event source mapping, worked by
//! the core (`app::work`), answered as the batch item failures SQS
//! delivers again (and, after maxReceiveCount, moves to the dead-letter
//! queue).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};

use super::Invocation;
use crate::app::App;
use crate::app::work::Message;
use crate::ops::metrics;

/// One batch of queued messages; answers the messages to retry.
pub async fn handle_queue(
    app: &App,
    event: SqsEvent,
    request_id: &str,
    deadline_ms: u64,
) -> SqsBatchResponse {
    let (answer, collected) = handle_queue_metered(app, event, request_id, deadline_ms).await;
    collected.emit(&app.config().metrics_namespace, "queue", request_id);
    answer
}

/// As `handle_queue`, answering the batch's metrics instead of writing
/// them (tests read them).
pub async fn handle_queue_metered(
    app: &App,
    event: SqsEvent,
    request_id: &str,
    deadline_ms: u64,
) -> (SqsBatchResponse, metrics::Collector) {
    let inv = Invocation::begin(app, request_id, None, deadline_ms);
    let deadline = inv.deadline;
    let batch: Vec<Message<'_>> = event
        .records
        .iter()
        .map(|r| Message {
            id: r.message_id.as_deref(),
            body: r.body.as_deref().unwrap_or(""),
        })
        .collect();
    inv.run_metered(async {
        let mut answer = SqsBatchResponse::default();
        answer.set_failures(app.work(&batch, &deadline).await);
        answer
    })
    .await
}
