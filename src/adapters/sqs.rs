//! Adapter: Amazon SQS, ten messages per `SendMessageBatch`.

use futures_util::future::BoxFuture;

use std::time::Duration;

use crate::adapters::aws::{self, LazyClient};
use crate::domain::queue::{Queue, QueueError};
use crate::domain::tracking::MAX_DELAY_SECONDS;

/// Adapter: Amazon SQS `SendMessageBatch`.
pub struct SqsQueue {
    client: LazyClient<aws_sdk_sqs::Client>,
    url: String,
}

impl SqsQueue {
    pub fn new(client: impl Into<LazyClient<aws_sdk_sqs::Client>>, url: String) -> Self {
        Self {
            client: client.into(),
            url,
        }
    }

    pub fn from_env(url: String) -> Self {
        Self::new(LazyClient::from_env(), url)
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
            let out = self
                .client
                .get()
                .await
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError::Unreachable(aws::sort(&e).detail))?;
            Ok(out
                .failed()
                .iter()
                .filter_map(|f| f.id().parse::<usize>().ok())
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::aws::TimeLimits;

    /// A queue endpoint that takes the connection and never answers: the
    /// send ends within the client's time limits, as unreachable.
    #[tokio::test]
    async fn a_stalled_send_ends_within_the_time_limits() {
        use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let client: aws_sdk_sqs::Client = aws::SdkClient::with_limits(
            aws_sdk_sqs::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(&endpoint)
                .credentials_provider(Credentials::new("testing", "testing", None, None, "tests")),
        );
        let queue = SqsQueue::new(client, format!("{endpoint}/123456789012/q"));
        let started = std::time::Instant::now();
        let sent = queue.send_batch(&["m".to_string()]).await;
        assert!(matches!(sent, Err(QueueError::Unreachable(_))), "{sent:?}");
        assert!(
            started.elapsed() < TimeLimits::REQUEST.total + Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }
}
