//! Adapter: Amazon SQS, ten messages per `SendMessageBatch`.

use futures_util::future::BoxFuture;

use std::time::Duration;

use crate::domain::queue::{Queue, QueueError};
use crate::domain::tracking::MAX_DELAY_SECONDS;

/// Adapter: Amazon SQS `SendMessageBatch`.
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
    fn send_batch<'a>(
        &'a self,
        bodies: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<usize>, QueueError>> {
        self.send_batch_delayed(bodies, Duration::ZERO)
    }

    fn send_batch_delayed<'a>(
        &'a self,
        bodies: &'a [String],
        delay: Duration,
    ) -> BoxFuture<'a, Result<Vec<usize>, QueueError>> {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
        // SQS refuses the whole batch for a DelaySeconds above 900.
        let delay_seconds = delay.as_secs().min(MAX_DELAY_SECONDS) as i32;
        Box::pin(async move {
            let client = self
                .client
                .get_or_init(|| async {
                    aws_sdk_sqs::Client::new(crate::adapters::aws::sdk_config().await)
                })
                .await;
            let entries = bodies
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .set_delay_seconds((delay_seconds > 0).then_some(delay_seconds))
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
                .map_err(|e| {
                    QueueError::Unreachable(aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
                })?;
            Ok(out
                .failed()
                .iter()
                .filter_map(|f| f.id().parse::<usize>().ok())
                .collect())
        })
    }
}
