//! The close-the-loop demo of the simulated tenant: an in-process queue
//! with SQS's delays, the worker draining it, a ledger in memory, actions
//! the fake Defender completes after a short while, and fake Jira,
//! ServiceNow and PagerDuty endpoints whose write-backs are printed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use futures_util::future::BoxFuture;
use mde_offboard::App;
use mde_offboard::domain::queue::{Queue, QueueError};
use mde_testkit::{FakeDefender, FakeTicketing};
use tokio::sync::mpsc;

/// How long the simulated devices take to pick up their offboard.
pub const COMPLETES_AFTER: Duration = Duration::from_secs(8);

/// Messages become visible after their delay, as on SQS.
pub struct LocalQueue {
    tx: mpsc::UnboundedSender<String>,
}

impl Queue for LocalQueue {
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
        for body in bodies {
            let (tx, body) = (self.tx.clone(), body.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(body);
            });
        }
        Box::pin(async { Ok(Vec::new()) })
    }
}

pub fn queue() -> (Arc<LocalQueue>, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(LocalQueue { tx }), rx)
}

/// The event source mapping: one message per invocation; a failed one
/// comes back after five seconds.
pub fn drain(app: Arc<App>, queue: Arc<LocalQueue>, mut rx: mpsc::UnboundedReceiver<String>) {
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(body) = rx.recv().await {
            n += 1;
            let mut msg = SqsMessage::default();
            msg.message_id = Some(format!("local-{n}"));
            msg.body = Some(body.clone());
            let mut event = SqsEvent::default();
            event.records = vec![msg];
            let deadline = SystemTime::now() + Duration::from_secs(30);
            let ms = deadline
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let answer =
                mde_offboard::inbound::sqs::handle_queue(&app, event, "local-worker", ms).await;
            if !answer.batch_item_failures.is_empty() {
                let _ = queue
                    .send_batch_delayed(&[body], Duration::from_secs(5))
                    .await;
            }
        }
    });
}

/// Completes each pending action `COMPLETES_AFTER` after it was first seen,
/// as a device coming online would, and prints each write-back.
pub fn simulate(fake: FakeDefender, machine_ids: Vec<String>, tickets: FakeTicketing) {
    tokio::spawn(async move {
        let mut seen: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
        let mut printed = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for id in &machine_ids {
                if let Some(action) = fake.pending_action(id) {
                    let first = *seen
                        .entry(action.clone())
                        .or_insert_with(tokio::time::Instant::now);
                    if first.elapsed() >= COMPLETES_AFTER {
                        fake.set_action_status(&action, "Succeeded");
                    }
                }
            }
            let written = tickets.written();
            for w in &written[printed..] {
                eprintln!("write-back to {} {}: {}", w.system, w.record, w.text);
            }
            printed = written.len();
        }
    });
}
