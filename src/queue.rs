//! Queued bulk mode: one SQS message per device, drained by the worker at
//! Defender's pace. SQS keeps what the request could not do in time, the
//! event source mapping's MaximumConcurrency bounds the parallel workers,
//! and a dead-letter queue catches what keeps failing; no scheduler of ours.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What the worker needs to offboard one device, exactly as the request
/// gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedDevice {
    pub ticket: String,
    /// The comment as Defender will receive it (`<ticket>: <comment>`).
    pub comment: String,
    pub device: String,
    pub dry_run: bool,
    pub source: String,
    #[serde(default)]
    pub webhook_id: Option<String>,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("the queue did not take {failed} of {total} messages: {reason}")]
    Unavailable {
        failed: usize,
        total: usize,
        reason: String,
    },
}

/// Port: where queued devices go.
pub trait Queue: Send + Sync {
    fn send_all<'a>(&'a self, items: &'a [QueuedDevice]) -> BoxFuture<'a, Result<(), QueueError>>;
}

/// Adapter: Amazon SQS, ten messages per `SendMessageBatch`.
pub struct SqsQueue {
    /// Built on first use, like the Secrets Manager client.
    client: tokio::sync::OnceCell<aws_sdk_sqs::Client>,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        Self {
            client: tokio::sync::OnceCell::new_with(Some(client)),
            url,
        }
    }

    pub fn from_env(url: String) -> Self {
        Self {
            client: tokio::sync::OnceCell::new(),
            url,
        }
    }
}

impl Queue for SqsQueue {
    fn send_all<'a>(&'a self, items: &'a [QueuedDevice]) -> BoxFuture<'a, Result<(), QueueError>> {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
        Box::pin(async move {
            let total = items.len();
            let client = self
                .client
                .get_or_init(|| async {
                    aws_sdk_sqs::Client::new(crate::runtime::sdk_config().await)
                })
                .await;
            for (chunk_no, chunk) in items.chunks(10).enumerate() {
                let mut pending: Vec<(String, String)> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        (
                            format!("d{}", chunk_no * 10 + i),
                            serde_json::to_string(item).expect("plain data serialises"),
                        )
                    })
                    .collect();
                // One resend of the entries SQS did not take; a second
                // refusal is the caller's to retry (the whole request is
                // safe to repeat: the worker's Defender check dedups).
                for attempt in 0..2 {
                    let entries = pending
                        .iter()
                        .map(|(id, body)| {
                            SendMessageBatchRequestEntry::builder()
                                .id(id)
                                .message_body(body)
                                .build()
                                .expect("id and body are set")
                        })
                        .collect::<Vec<_>>();
                    let out = client
                        .send_message_batch()
                        .queue_url(&self.url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .map_err(|e| QueueError::Unavailable {
                            failed: total,
                            total,
                            reason: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
                        })?;
                    let failed: Vec<String> =
                        out.failed().iter().map(|f| f.id().to_string()).collect();
                    pending.retain(|(id, _)| failed.contains(id));
                    if pending.is_empty() {
                        break;
                    }
                    if attempt == 1 {
                        return Err(QueueError::Unavailable {
                            failed: pending.len(),
                            total,
                            reason: "SendMessageBatch refused some entries twice".into(),
                        });
                    }
                }
            }
            Ok(())
        })
    }
}
