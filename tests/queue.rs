//! Queued bulk mode: the request puts one message per device on SQS (moto),
//! the worker drains it through the same pipeline, and nothing is lost,
//! duplicated, or sent faster than Defender allows.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use common::*;
use mde_offboard::App;
use mde_offboard::config::Config;
use mde_offboard::credentials::StaticSecret;
use mde_offboard::limits::Limiters;
use mde_testkit::{Api, FakeDefender, FakeMachine, demo_machines};
use serde_json::json;

/// Receives up to ten messages as the event source mapping would, with a
/// short visibility timeout so failed ones come back quickly.
async fn receive(queue: &str, visibility_secs: i32) -> Vec<(SqsMessage, String)> {
    let out = sqs_client()
        .receive_message()
        .queue_url(queue)
        .max_number_of_messages(10)
        .visibility_timeout(visibility_secs)
        .send()
        .await
        .unwrap();
    out.messages()
        .iter()
        .map(|m| {
            let mut msg = SqsMessage::default();
            msg.message_id = m.message_id().map(str::to_string);
            msg.body = m.body().map(str::to_string);
            (msg, m.receipt_handle().unwrap().to_string())
        })
        .collect()
}

/// One event source mapping poll: receive, invoke the worker, delete what
/// it did not report as failed. Returns how many messages it handled.
async fn poll_once(app: &App, queue: &str, budget: Duration, visibility_secs: i32) -> usize {
    let batch = receive(queue, visibility_secs).await;
    if batch.is_empty() {
        return 0;
    }
    let mut event = SqsEvent::default();
    event.records = batch.iter().map(|(m, _)| m.clone()).collect();
    let deadline = std::time::SystemTime::now() + budget;
    let deadline_ms = deadline
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let answer = app.handle_queue(event, "test", deadline_ms).await;
    let failed: HashSet<String> = answer
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    for (m, receipt) in &batch {
        if !failed.contains(m.message_id.as_deref().unwrap()) {
            sqs_client()
                .delete_message()
                .queue_url(queue)
                .receipt_handle(receipt)
                .send()
                .await
                .unwrap();
        }
    }
    batch.len()
}

#[tokio::test]
async fn queue_mode_enqueues_and_the_worker_drains_it() {
    let queue = new_queue().await;
    let h = Harness::with(Options {
        queue_url: Some(queue.clone()),
        ..Default::default()
    })
    .await;
    let mut devices: Vec<String> = demo_machines().iter().map(|m| m.id.clone()).collect();
    devices.extend((0..22).map(|i| format!("retired-{i}.contoso.com")));
    let body = json!({"ticket": "CHG0100", "comment": "Fleet refresh", "devices": devices, "mode": "queue"});
    let (status, b, _) = h.offboard(&body).await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(b["mode"], "queue");
    assert_eq!(
        b["queued"].as_array().unwrap().len(),
        30,
        "more than MAX_DEVICES (25) is fine in queue mode"
    );
    assert_eq!(
        h.fake.count(Api::AnyDefender),
        0,
        "nothing is sent in the request"
    );

    while poll_once(&h.app, &queue, Duration::from_secs(20), 30).await > 0 {}
    // Windows, not protected, not sharing a name: WIN11, WIN10, SERVER2022, DUP_A, DUP_B.
    let accepted: HashSet<String> = h
        .fake
        .accepted_offboards()
        .iter()
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(accepted.len(), 5, "{accepted:?}");
    assert_eq!(h.fake.count(Api::Offboard), 5);
    let sent: serde_json::Value =
        serde_json::from_str(&h.fake.accepted_offboards()[0].body).unwrap();
    assert_eq!(sent["Comment"], "CHG0100: Fleet refresh");
}

#[tokio::test]
async fn queue_mode_limits_and_refusals() {
    let h = Harness::new().await;
    let body = json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11], "mode": "queue"});
    let (status, b, _) = h.offboard(&body).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (422, Some("queue_not_configured"))
    );

    let h = Harness::with(Options {
        queue_url: Some(new_queue().await),
        env: vec![("MAX_QUEUED_DEVICES", "40".into())],
        ..Default::default()
    })
    .await;
    let devices: Vec<String> = (0..41).map(|i| format!("pc-{i}.contoso.com")).collect();
    let (status, b, _) = h
        .offboard(&json!({"ticket": "T", "comment": "c", "devices": devices, "mode": "queue"}))
        .await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (422, Some("too_many_devices")),
        "{b}"
    );
}

/// SQS semantics in memory for the volume test (moto takes minutes for
/// thousands of messages): at-least-once delivery, a visibility timeout per
/// receive, and a message returns when it is not deleted in time.
#[derive(Default)]
struct MemQueue {
    inner: std::sync::Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    seq: u64,
    visible: std::collections::VecDeque<(String, String)>,
    in_flight: HashMap<String, (String, Instant)>,
    deliveries: HashMap<String, u32>,
}

impl mde_offboard::queue::Queue for MemQueue {
    fn send_all<'a>(
        &'a self,
        items: &'a [mde_offboard::queue::QueuedDevice],
    ) -> futures_util::future::BoxFuture<'a, Result<(), mde_offboard::queue::QueueError>> {
        Box::pin(async move {
            let mut q = self.inner.lock().unwrap();
            for item in items {
                q.seq += 1;
                let id = format!("m{}", q.seq);
                q.visible
                    .push_back((id, serde_json::to_string(item).unwrap()));
            }
            Ok(())
        })
    }
}

impl MemQueue {
    fn receive(&self, max: usize, visibility: Duration) -> Vec<SqsMessage> {
        let mut q = self.inner.lock().unwrap();
        let now = Instant::now();
        let expired: Vec<String> = q
            .in_flight
            .iter()
            .filter(|(_, (_, t))| *t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for id in expired {
            let (body, _) = q.in_flight.remove(&id).unwrap();
            q.visible.push_back((id, body));
        }
        let mut out = Vec::new();
        while out.len() < max {
            let Some((id, body)) = q.visible.pop_front() else {
                break;
            };
            *q.deliveries.entry(id.clone()).or_default() += 1;
            q.in_flight
                .insert(id.clone(), (body.clone(), now + visibility));
            let mut m = SqsMessage::default();
            m.message_id = Some(id);
            m.body = Some(body);
            out.push(m);
        }
        out
    }

    fn delete(&self, id: &str) {
        self.inner.lock().unwrap().in_flight.remove(id);
    }

    fn drained(&self) -> bool {
        let q = self.inner.lock().unwrap();
        q.visible.is_empty() && q.in_flight.is_empty()
    }
}

/// 2,000 devices through two workers (the event source mapping's
/// MaximumConcurrency of 2), each allowed 45 calls a minute to each API, on
/// a clock where a minute lasts 100 ms (and an hour 6 s): the time the
/// limiter measures is scaled; the requests to Defender are real HTTP to the
/// fake. Each batch has a 3 s deadline and a 5 s visibility timeout, as the
/// template's 30 s and 180 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_devices_lose_nothing_and_respect_the_limits() {
    const DEVICES: usize = 2000;
    const MINUTE: Duration = Duration::from_millis(100);
    let machines: Vec<FakeMachine> = (0..DEVICES)
        .map(|i| {
            FakeMachine::new(
                &format!("{i:040x}"),
                &format!("pc-{i}.contoso.com"),
                "Windows11",
            )
        })
        .collect();
    let fake = FakeDefender::start(machines).await;
    let queue = Arc::new(MemQueue::default());
    let worker = || {
        let env: HashMap<&str, String> = HashMap::from([
            ("SECRET_ID", "local".to_string()),
            ("MDE_API_URL", fake.url()),
            ("MDE_LOGIN_URL", fake.url()),
        ]);
        let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
        App::with_limiters(
            config,
            Arc::new(StaticSecret(mde_testkit::secret_json())),
            App::http_client(),
            Limiters::scaled(45, MINUTE),
        )
        .with_queue(queue.clone())
    };
    // Enqueue through the request path, 500 at a time.
    let front = worker();
    for chunk in (0..DEVICES).collect::<Vec<_>>().chunks(500) {
        let devices: Vec<String> = chunk.iter().map(|i| format!("{i:040x}")).collect();
        let body = json!({"ticket": "CHG-BULK", "comment": "Lab teardown", "devices": devices, "mode": "queue"}).to_string();
        let resp = front.handle(signed("POST", "/v1/offboard", &body)).await;
        assert_eq!(resp.status(), 202);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in [Arc::new(worker()), Arc::new(worker())] {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let batch = queue.receive(10, Duration::from_secs(5));
                if batch.is_empty() {
                    if queue.drained() {
                        break;
                    }
                    // The event source mapping's next poll.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let ids: Vec<String> = batch
                    .iter()
                    .map(|m| m.message_id.clone().unwrap())
                    .collect();
                let mut event = SqsEvent::default();
                event.records = batch;
                let deadline = std::time::SystemTime::now() + Duration::from_secs(3);
                let deadline_ms = deadline
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                let answer = w.handle_queue(event, "sim", deadline_ms).await;
                let failed: HashSet<String> = answer
                    .batch_item_failures
                    .iter()
                    .map(|f| f.item_identifier.clone())
                    .collect();
                for id in ids.iter().filter(|id| !failed.contains(*id)) {
                    queue.delete(id);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();

    let offboards: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.api == Api::Offboard)
        .collect();
    let machines_done: HashSet<&str> = offboards.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(machines_done.len(), DEVICES, "0 lost");
    assert_eq!(
        offboards.len(),
        DEVICES,
        "0 duplicated: one offboard call per device"
    );
    assert!(offboards.iter().all(|c| c.status == 201));
    let redeliveries: u32 = queue
        .inner
        .lock()
        .unwrap()
        .deliveries
        .values()
        .map(|n| n - 1)
        .sum();
    let most_deliveries = queue
        .inner
        .lock()
        .unwrap()
        .deliveries
        .values()
        .copied()
        .max()
        .unwrap_or(0);

    // Sliding windows over the fake's receive times, per API.
    for api in [Api::GetMachine, Api::Offboard] {
        let mut times: Vec<Instant> = fake
            .calls()
            .iter()
            .filter(|c| c.api == api)
            .map(|c| c.at)
            .collect();
        times.sort();
        let most_in = |window: Duration| {
            let mut best = 0;
            let mut j = 0;
            for i in 0..times.len() {
                while times[i] - times[j] >= window {
                    j += 1;
                }
                best = best.max(i - j + 1);
            }
            best
        };
        let per_minute = most_in(MINUTE);
        let per_hour = most_in(MINUTE * 60);
        println!(
            "{api:?}: {} calls, busiest simulated minute {per_minute}, busiest simulated hour {per_hour}",
            times.len()
        );
        assert!(
            per_minute <= 100,
            "{api:?}: {per_minute} calls in one simulated minute"
        );
        assert!(
            per_hour <= 1500,
            "{api:?}: {per_hour} calls in one simulated hour"
        );
    }
    println!(
        "2000 devices in {:.1} s real = {:.0} simulated minutes; {redeliveries} redeliveries of throttled messages, at most {most_deliveries} deliveries of one message",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / MINUTE.as_secs_f64()
    );
}
