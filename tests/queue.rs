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
use mde_offboard::domain::limits::Limiters;
use mde_offboard::domain::secret::StaticSecret;
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
    let answer = mde_offboard::inbound::sqs::handle_queue(app, event, "test", deadline_ms).await;
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

impl mde_offboard::domain::queue::Queue for MemQueue {
    fn send_batch<'a>(
        &'a self,
        bodies: &'a [String],
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<Vec<usize>, mde_offboard::domain::queue::QueueError>,
    > {
        Box::pin(async move {
            let mut q = self.inner.lock().unwrap();
            for body in bodies {
                q.seq += 1;
                let id = format!("m{}", q.seq);
                q.visible.push_back((id, body.clone()));
            }
            Ok(Vec::new())
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
        mde_offboard::init::Wiring::new(config, Arc::new(StaticSecret(mde_testkit::secret_json())))
            .limiters(Limiters::scaled(45, MINUTE))
            .build()
            .with_queue(queue.clone())
    };
    // Enqueue through the request path, 500 at a time.
    let front = worker();
    for chunk in (0..DEVICES).collect::<Vec<_>>().chunks(500) {
        let devices: Vec<String> = chunk.iter().map(|i| format!("{i:040x}")).collect();
        let body = json!({"ticket": "CHG-BULK", "comment": "Lab teardown", "devices": devices, "mode": "queue"}).to_string();
        let resp =
            mde_offboard::inbound::http::handle(&front, signed("POST", "/v1/offboard", &body))
                .await;
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
                let answer =
                    mde_offboard::inbound::sqs::handle_queue(&w, event, "sim", deadline_ms).await;
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

// ---- The queue as a trust boundary (issue 11, item 1 and the queue part of 11).

use mde_offboard::domain::queue::{Queue, QueueError, QueueKeys, QueuedDevice};
use mde_offboard::domain::secret::AppSecret;
use mde_testkit::Fault;
use serde_json::Value;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Log lines as the function writes them, captured for one test thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        use tracing_subscriber::prelude::*;
        // tracing-core asks only the registering thread's own subscriber
        // for a new callsite's interest while one dispatcher is alive: a
        // test without a capture that first reaches a callsite (a refused
        // message's audit line) would cache "never" for it, and this
        // capture would miss the line. A second dispatcher kept alive for
        // the whole run makes every registration ask all of them.
        static KEEP_TWO: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        KEEP_TWO.get_or_init(|| tracing::Dispatch::new(tracing_subscriber::registry()));
        let logs = Logs::default();
        let sub = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(mde_offboard::ops::logging::JsonLayer::new(logs.clone()));
        let guard = tracing::subscriber::set_default(sub);
        (logs, guard)
    }

    fn lines(&self) -> Vec<Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn keys_of(secret_text: &str) -> QueueKeys {
    QueueKeys::from_secret(&AppSecret::parse(secret_text).unwrap()).unwrap()
}

fn queued(device: &str) -> QueuedDevice {
    QueuedDevice {
        source: "jira".into(),
        ticket: "INC-666".into(),
        comment: "approved".into(),
        device: device.into(),
        dry_run: false,
        webhook_id: None,
        enqueued_at: now(),
        callback_url: None,
        notify: None,
        tenant: None,
    }
}

async fn put(queue: &str, body: &str) -> String {
    sqs_client()
        .send_message()
        .queue_url(queue)
        .message_body(body)
        .send()
        .await
        .unwrap()
        .message_id
        .unwrap()
}

/// Everything on the queue, held invisible for a minute.
async fn take_all(queue: &str) -> Vec<SqsMessage> {
    let mut all = Vec::new();
    loop {
        let batch = receive(queue, 60).await;
        if batch.is_empty() {
            return all;
        }
        all.extend(batch.into_iter().map(|(m, _)| m));
    }
}

fn event_of(records: Vec<SqsMessage>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = records;
    event
}

fn deadline_ms(budget: Duration) -> u64 {
    (std::time::SystemTime::now() + budget)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn messages_the_function_did_not_seal_are_never_acted_on() {
    let queue = new_queue().await;
    let h = Harness::with(Options {
        queue_url: Some(queue.clone()),
        ..Default::default()
    })
    .await;
    // A genuine message from the request path, to splice a MAC from.
    let (status, b, _) = h
        .offboard(&json!({"ticket": "INC-1", "comment": "retired", "devices": [ids::WIN10], "mode": "queue"}))
        .await;
    assert_eq!(status, 202, "{b}");
    let genuine = take_all(&queue).await;
    assert_eq!(genuine.len(), 1);
    let envelope: Value = serde_json::from_str(genuine[0].body.as_deref().unwrap()).unwrap();
    assert!(envelope["mac"].is_string(), "{envelope}");

    let victim = ids::WIN11;
    // What a principal with sqs:SendMessage wrote before: no MAC at all.
    let bare = json!({"ticket": "INC-666", "comment": "INC-666: approved", "device": victim, "dry_run": false, "source": "jira"});
    // The genuine MAC over other content: the device swapped.
    let spliced = json!({
        "v": 1,
        "mac": envelope["mac"],
        "msg": envelope["msg"].as_str().unwrap().replace(ids::WIN10, victim),
    });
    // A well-formed seal made with a key that is not the function's.
    let mut other: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    other["webhook_secrets"]["queue"] = json!("a guess at the queue key");
    let forged = keys_of(&other.to_string()).seal(&queued(victim));
    // The function's own key over fields the HTTP path refuses.
    let keys = keys_of(&mde_testkit::secret_json());
    let unknown_source = keys.seal(&QueuedDevice {
        source: "nobody".into(),
        ..queued(victim)
    });
    let control_comment = keys.seal(&QueuedDevice {
        comment: "approved\u{1b}[2K".into(),
        ..queued(victim)
    });
    let mut written = HashSet::new();
    for body in [
        bare.to_string(),
        spliced.to_string(),
        forged,
        unknown_source,
        control_comment,
    ] {
        written.insert(put(&queue, &body).await);
    }

    let (logs, guard) = Logs::capture();
    let batch = take_all(&queue).await;
    assert_eq!(batch.len(), 5);
    let (answer, metrics) = mde_offboard::inbound::sqs::handle_queue_metered(
        &h.app,
        event_of(batch),
        "test",
        deadline_ms(Duration::from_secs(20)),
    )
    .await;
    drop(guard);
    let failed: HashSet<String> = answer
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(failed, written, "every one goes back, to end in the DLQ");
    assert!(
        h.fake.calls().is_empty(),
        "no Defender call, not even a token: {:?}",
        h.fake.calls()
    );
    assert_eq!(metrics.get("Rejected"), 5.0);
    let rejected: Vec<Value> = logs
        .lines()
        .into_iter()
        .filter(|l| l["logger"] == "audit" && l["event"] == "device_outcome")
        .collect();
    assert_eq!(rejected.len(), 5, "{}", logs.text());
    assert!(rejected.iter().all(|l| l["status"] == "rejected"));
    let reasons: Vec<&str> = rejected
        .iter()
        .map(|l| l["detail"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"the message is not a sealed queue message"));
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "the message's MAC does not verify")
            .count(),
        2
    );
    assert!(reasons.contains(&"the message names an unknown source"));
    assert!(reasons.iter().any(|r| r.contains("comment")));
    // Unsealed claims are not repeated as if they were facts.
    assert!(
        rejected
            .iter()
            .filter(|l| l["detail"] != "the message names an unknown source"
                && !l["detail"].as_str().unwrap().contains("comment"))
            .all(|l| l["device"] == "" && l["ticket"] == ""),
        "{rejected:?}"
    );

    // The genuine message is acted on.
    let answer = mde_offboard::inbound::sqs::handle_queue(
        &h.app,
        event_of(genuine),
        "test",
        deadline_ms(Duration::from_secs(20)),
    )
    .await;
    assert!(answer.batch_item_failures.is_empty());
    let offboards = h.fake.accepted_offboards();
    assert_eq!(offboards.len(), 1);
    assert!(
        offboards[0].path.contains(ids::WIN10),
        "{}",
        offboards[0].path
    );
    let sent: Value = serde_json::from_str(&offboards[0].body).unwrap();
    assert_eq!(sent["Comment"], "INC-1: retired");
}

#[tokio::test]
async fn a_device_named_many_times_is_queued_once() {
    let queue = new_queue().await;
    let h = Harness::with(Options {
        queue_url: Some(queue.clone()),
        ..Default::default()
    })
    .await;
    let mut devices: Vec<String> = (0..500)
        .map(|i| {
            if i % 2 == 0 {
                ids::WIN11.to_string()
            } else {
                ids::WIN11.to_uppercase()
            }
        })
        .collect();
    devices.extend([
        "Laptop-7.contoso.com".to_string(),
        "LAPTOP-7.CONTOSO.COM".to_string(),
        " laptop-7.contoso.com".to_string(),
    ]);
    let (status, b, _) = h
        .offboard(
            &json!({"ticket": "CHG-9", "comment": "dedupe", "devices": devices, "mode": "queue"}),
        )
        .await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(
        b["queued"],
        json!([{"device": ids::WIN11}, {"device": "Laptop-7.contoso.com"}])
    );
    assert_eq!(take_all(&queue).await.len(), 2);
}

/// A queue port that takes the first `ok_batches` batches, then takes only
/// the first seven entries of the next one, then fails, until healed.
#[derive(Default)]
struct FlakyQueue {
    ok_batches: usize,
    calls: AtomicUsize,
    healed: std::sync::atomic::AtomicBool,
    taken: Mutex<Vec<String>>,
}

/// What the SDK's error text looks like: it names the account and the queue.
const SDK_TEXT: &str = "service error: QueueDoesNotExist: https://sqs.us-east-1.amazonaws.com/123456789012/mde-offboard-queue";

impl Queue for FlakyQueue {
    fn send_batch<'a>(
        &'a self,
        bodies: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<usize>, QueueError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let mut taken = self.taken.lock().unwrap();
            if self.healed.load(Ordering::SeqCst) || n < self.ok_batches {
                taken.extend(bodies.iter().cloned());
                return Ok(Vec::new());
            }
            if n == self.ok_batches {
                taken.extend(bodies.iter().take(7).cloned());
                return Ok((7..bodies.len()).collect());
            }
            Err(QueueError::Unreachable(SDK_TEXT.into()))
        })
    }
}

fn devices_in(bodies: &[String]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| {
            let env: Value = serde_json::from_str(b).unwrap();
            let msg: Value = serde_json::from_str(env["msg"].as_str().unwrap()).unwrap();
            msg["device"].as_str().unwrap().to_string()
        })
        .collect()
}

fn assert_names_no_queue(b: &Value) {
    let text = b.to_string();
    for leak in ["sqs.", "123456789012", "mde-offboard-queue", "amazonaws"] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
}

#[tokio::test]
async fn a_retry_of_a_partly_queued_request_queues_only_the_rest() {
    let port = Arc::new(FlakyQueue {
        ok_batches: 1,
        ..Default::default()
    });
    let Harness { app, fake, .. } = Harness::new().await;
    let h = Harness {
        app: app.with_queue(port.clone()),
        fake,
        secret_name: String::new(),
    };
    let devices: Vec<String> = (0..25).map(|i| format!("pc-{i}.contoso.com")).collect();
    let body =
        json!({"ticket": "CHG-7", "comment": "partial", "devices": devices, "mode": "queue"});
    let (status, b, resp) = h.offboard(&body).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (503, Some("queue_unavailable")),
        "{b}"
    );
    assert!(resp.headers().contains_key("retry-after"));
    assert_names_no_queue(&b);
    assert_eq!(port.taken.lock().unwrap().len(), 17, "10, then 7 of 10");

    port.healed.store(true, Ordering::SeqCst);
    // The sender's retry: a new delivery with the same content.
    let (status, b, _) = h.offboard(&body).await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(b["queued"].as_array().unwrap().len(), 25);
    let taken = devices_in(&port.taken.lock().unwrap());
    let distinct: HashSet<&String> = taken.iter().collect();
    assert_eq!(taken.len(), 25, "no device queued twice: {taken:?}");
    assert_eq!(distinct.len(), 25);
}

#[tokio::test]
async fn a_queue_error_names_neither_the_queue_nor_the_account() {
    let missing = format!(
        "{}/123456789012/mde-offboard-queue",
        mde_testkit::moto::moto().endpoint
    );
    let Harness { app, fake, .. } = Harness::new().await;
    let h = Harness {
        app: app.with_queue(Arc::new(mde_offboard::adapters::sqs::SqsQueue::new(
            sqs_client(),
            missing,
        ))),
        fake,
        secret_name: String::new(),
    };
    let (logs, guard) = Logs::capture();
    let (status, b, _) = h
        .offboard(&json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11], "mode": "queue"}))
        .await;
    drop(guard);
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (503, Some("queue_unavailable")),
        "{b}"
    );
    assert_names_no_queue(&b);
    // The operator still has the SDK's reason.
    assert!(
        logs.text().contains("the queue did not take a batch"),
        "{}",
        logs.text()
    );
}

/// SQS answering in 400 ms, on tokio's paused clock: the request path's
/// time is all simulated, nothing here waits for real.
struct SlowQueue {
    batches: AtomicUsize,
}

impl Queue for SlowQueue {
    fn send_batch<'a>(
        &'a self,
        _bodies: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<usize>, QueueError>> {
        Box::pin(async move {
            self.batches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok(Vec::new())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn queueing_stops_before_the_deadline() {
    let port = Arc::new(SlowQueue {
        batches: AtomicUsize::new(0),
    });
    let env: HashMap<&str, String> = HashMap::from([
        ("SECRET_ID", "local".to_string()),
        ("MDE_API_URL", "http://127.0.0.1:9".to_string()),
        ("MDE_LOGIN_URL", "http://127.0.0.1:9".to_string()),
    ]);
    let app = mde_offboard::init::Wiring::new(
        Config::from_lookup(|k| env.get(k).cloned()).unwrap(),
        Arc::new(StaticSecret(mde_testkit::secret_json())),
    )
    .build()
    .with_queue(port.clone());
    let devices: Vec<String> = (0..100).map(|i| format!("pc-{i}.contoso.com")).collect();
    let body =
        json!({"ticket": "T", "comment": "c", "devices": devices, "mode": "queue"}).to_string();
    // 1.5 s is kept back for the answer; 1 s is left for the queue.
    let req = with_deadline(
        signed("POST", "/v1/offboard", &body),
        Duration::from_millis(2500),
    );
    let resp = mde_offboard::inbound::http::handle(&app, req).await;
    assert_eq!(resp.status(), 503);
    let b: Value = match resp.body() {
        lambda_http::Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(b["error"]["code"], "queue_unavailable");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ran out of time"),
        "{b}"
    );
    assert_eq!(
        port.batches.load(Ordering::SeqCst),
        2,
        "a batch starts only with 500 ms left"
    );
}

#[tokio::test]
async fn a_weak_queue_key_fails_closed_on_both_sides() {
    let mut secret: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    secret["webhook_secrets"]["queue"] = json!("whsec_");
    let port = Arc::new(FlakyQueue::default());
    port.healed.store(true, Ordering::SeqCst);
    let Harness { app, fake, .. } = Harness::with(Options {
        secret: secret.to_string(),
        ..Default::default()
    })
    .await;
    let app = app.with_queue(port.clone());
    let h = Harness {
        app,
        fake,
        secret_name: String::new(),
    };
    let (status, b, _) = h
        .offboard(&json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11], "mode": "queue"}))
        .await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (500, Some("bad_secret")),
        "{b}"
    );
    let message = b["error"]["message"].as_str().unwrap();
    assert!(message.contains("webhook_secrets.queue"), "{message}");
    assert!(port.taken.lock().unwrap().is_empty(), "nothing queued");

    // Nor does the worker fall back to any other key: a message sealed
    // with the key older builds derived from the secret is refused.
    let mut msg = SqsMessage::default();
    msg.message_id = Some("m1".into());
    msg.body = Some(seal_with_the_derived_key(
        &secret.to_string(),
        &queued(ids::WIN11),
    ));
    let (answer, _) = mde_offboard::inbound::sqs::handle_queue_metered(
        &h.app,
        event_of(vec![msg]),
        "test",
        deadline_ms(Duration::from_secs(20)),
    )
    .await;
    assert_eq!(answer.batch_item_failures.len(), 1);
    assert!(h.fake.calls().is_empty());
}

/// The wire format written out from the README, with the tests' queue key.
fn seal_by_hand(item: &QueuedDevice) -> String {
    seal_text_by_hand(&serde_json::to_string(item).unwrap())
}

#[test]
fn the_wire_format_is_the_documented_one() {
    let text = mde_testkit::secret_json();
    let item = queued(ids::WIN11);
    assert_eq!(keys_of(&text).open(&seal_by_hand(&item)), Ok(item.clone()));
    assert_eq!(keys_of(&text).seal(&item), seal_by_hand(&item));
}

/// A rolling deploy: a newer build seals a message this build cannot read
/// (it names a follow-up this build does not know). The worker puts it back
/// on the queue for a newer worker instead of failing it into the
/// dead-letter queue; once it is older than the rule's 14 days, it fails.
#[tokio::test]
async fn a_message_from_a_newer_build_is_kept_for_a_newer_worker() {
    let secret = mde_testkit::secret_json();
    let port = Arc::new(FlakyQueue::default());
    port.healed.store(true, Ordering::SeqCst);
    let Harness { app, fake, .. } = Harness::with(Options {
        secret: secret.clone(),
        ..Default::default()
    })
    .await;
    let app = app.with_queue(port.clone());
    let newer = |enqueued_at: i64| {
        let mut msg = serde_json::to_value(queued(ids::WIN11)).unwrap();
        msg["enqueued_at"] = json!(enqueued_at);
        msg["notify"] = json!({"to": "slack", "channel": "C0123"});
        seal_text_by_hand(&msg.to_string())
    };
    let message = |id: &str, body: String| {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.body = Some(body);
        m
    };
    let fresh = newer(now());
    let (answer, metrics) = mde_offboard::inbound::sqs::handle_queue_metered(
        &app,
        event_of(vec![message("m1", fresh.clone())]),
        "test",
        deadline_ms(Duration::from_secs(20)),
    )
    .await;
    assert!(answer.batch_item_failures.is_empty(), "not for the DLQ");
    assert_eq!(
        *port.taken.lock().unwrap(),
        vec![fresh],
        "put back as it was"
    );
    assert_eq!(
        metrics.get(mde_offboard::ops::metrics::names::KEPT_FOR_NEWER),
        1.0
    );
    assert!(fake.calls().is_empty(), "nothing offboarded");

    let stale = newer(now() - 15 * 86_400);
    let (answer, _) = mde_offboard::inbound::sqs::handle_queue_metered(
        &app,
        event_of(vec![message("m2", stale)]),
        "test",
        deadline_ms(Duration::from_secs(20)),
    )
    .await;
    assert_eq!(answer.batch_item_failures.len(), 1, "past the rule: DLQ");
    assert_eq!(port.taken.lock().unwrap().len(), 1, "not put back again");
}

/// `text` sealed as the README says: HMAC-SHA256 with `key`, over the
/// purpose label and the text.
fn seal_text_with(key: &[u8], text: &str) -> String {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(b"mde-offboard queue message v1\n");
    mac.update(text.as_bytes());
    let tag = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    json!({"v": 1, "mac": tag, "msg": text}).to_string()
}

/// Sealed with the tests' `webhook_secrets.queue` (a `whsec_` value: its
/// key is the base64 after the prefix).
fn seal_text_by_hand(text: &str) -> String {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(mde_testkit::QUEUE_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    seal_text_with(&key, text)
}

/// Sealed with the key builds before v3 derived from the whole
/// SecretString when it had no `webhook_secrets.queue`:
/// HMAC-SHA256(secret text, "mde-offboard queue mac v1"). Anyone who knows
/// the secret's non-secret parts (a federated secret's tenant and client
/// ids) could compute it.
fn seal_with_the_derived_key(secret_text: &str, item: &QueuedDevice) -> String {
    use hmac::{KeyInit, Mac};
    let mut derive = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret_text.as_bytes()).unwrap();
    derive.update(b"mde-offboard queue mac v1");
    let key = derive.finalize().into_bytes();
    seal_text_with(&key, &serde_json::to_string(item).unwrap())
}

fn sqs_message(id: &str, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.body = Some(body.into());
    m
}

/// One batch through the worker; answers the ids it reported as failed.
async fn work(app: &App, batch: Vec<SqsMessage>) -> (Vec<String>, Metrics) {
    let (answer, metrics) = mde_offboard::inbound::sqs::handle_queue_metered(
        app,
        event_of(batch),
        "test",
        deadline_ms(Duration::from_secs(20)),
    )
    .await;
    let mut failed: Vec<String> = answer
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    failed.sort();
    (failed, metrics)
}

type Metrics = mde_offboard::ops::metrics::Collector;

/// The audit lines of refused messages.
fn rejected_lines(logs: &Logs) -> Vec<Value> {
    logs.lines()
        .into_iter()
        .filter(|l| l["logger"] == "audit" && l["status"] == "rejected")
        .collect()
}

/// The tests' secret without `webhook_secrets.queue`.
fn secret_without_queue_key() -> Value {
    let mut s: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    s["webhook_secrets"]
        .as_object_mut()
        .unwrap()
        .remove("queue");
    s
}

/// The review's M3: a federated secret with `iam` auth may hold only the
/// tenant and client ids, neither of them secret. The queue key is never
/// derived from it: queue mode is a configuration error and the worker
/// refuses every message, whoever sealed it.
#[tokio::test]
async fn without_a_queue_key_nothing_is_queued_and_every_message_is_refused() {
    let secret = json!({
        "tenant_id": mde_testkit::defender::TENANT_ID,
        "client_id": mde_testkit::defender::CLIENT_ID,
        "webhook_secrets": {"generic": mde_testkit::GENERIC_WEBHOOK_SECRET},
    })
    .to_string();
    let queue = new_queue().await;
    let h = Harness::with(Options {
        secret: secret.clone(),
        env: vec![("MDE_CREDENTIALS", "federated".into())],
        queue_url: Some(queue.clone()),
        ..Default::default()
    })
    .await;
    let (status, b, _) = h
        .offboard(&json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11], "mode": "queue"}))
        .await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (500, Some("bad_secret")),
        "{b}"
    );
    let message = b["error"]["message"].as_str().unwrap();
    assert!(message.contains("webhook_secrets.queue"), "{message}");
    assert!(take_all(&queue).await.is_empty(), "nothing queued");

    // What anyone who knows the two ids can seal, and a message sealed with
    // a queue key since removed from the secret.
    let derived = seal_with_the_derived_key(&secret, &queued(ids::WIN11));
    let earlier = seal_by_hand(&queued(ids::WIN10));
    let batch = vec![sqs_message("m1", &derived), sqs_message("m2", &earlier)];
    let (logs, guard) = Logs::capture();
    let (failed, metrics) = work(&h.app, batch).await;
    drop(guard);
    assert_eq!(failed, ["m1", "m2"], "both for the dead-letter queue");
    assert!(h.fake.calls().is_empty(), "{:?}", h.fake.calls());
    assert_eq!(metrics.get("Rejected"), 2.0);
    let rejected = rejected_lines(&logs);
    assert_eq!(rejected.len(), 2, "{}", logs.text());
    for l in &rejected {
        assert_eq!(l["event"], "device_outcome");
        let detail = l["detail"].as_str().unwrap();
        assert!(detail.contains("webhook_secrets.queue"), "{detail}");
        assert_eq!(l["device"], "", "nothing unverified is quoted: {l}");
    }
}

/// With tracking on (the ledger and the queue), each offboard requested is
/// followed through sealed messages: without the queue key the request is
/// refused before Defender is called, not run untracked.
#[tokio::test]
async fn with_tracking_on_and_no_queue_key_nothing_is_offboarded_untracked() {
    let queue = new_queue().await;
    let Harness { app, fake, .. } = Harness::with(Options {
        secret: secret_without_queue_key().to_string(),
        queue_url: Some(queue.clone()),
        ..Default::default()
    })
    .await;
    let h = Harness {
        app: app.with_ledger(Arc::new(
            mde_offboard::adapters::memory::ledger::InMemoryLedger::new(),
        )),
        fake,
        secret_name: String::new(),
    };
    let (status, b, _) = h
        .offboard(&json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11]}))
        .await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (500, Some("bad_secret")),
        "{b}"
    );
    assert!(b.to_string().contains("webhook_secrets.queue"), "{b}");
    assert_eq!(h.fake.count(Api::Offboard), 0);
    assert!(take_all(&queue).await.is_empty(), "no track message");
    // A dry run seals nothing and still answers.
    let (status, b, _) = h
        .offboard(&json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11], "dry_run": true}))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["results"][0]["status"], "would_offboard");
}

/// The review's L2: a copy taken from the queue or the dead-letter queue
/// stays sealed, so its age is what bounds it.
#[tokio::test]
async fn a_sealed_message_older_than_fourteen_days_is_refused() {
    let h = Harness::new().await;
    let day = 86_400;
    let old = seal_by_hand(&QueuedDevice {
        enqueued_at: now() - 14 * day - 60,
        ..queued(ids::WIN11)
    });
    let recent = seal_by_hand(&QueuedDevice {
        enqueued_at: now() - 13 * day,
        ..queued(ids::WIN10)
    });
    let (logs, guard) = Logs::capture();
    let (failed, metrics) = work(
        &h.app,
        vec![sqs_message("m1", &old), sqs_message("m2", &recent)],
    )
    .await;
    drop(guard);
    assert_eq!(failed, ["m1"]);
    assert_eq!(metrics.get("Rejected"), 1.0);
    let offboards = h.fake.accepted_offboards();
    assert_eq!(offboards.len(), 1);
    assert!(offboards[0].path.contains(ids::WIN10));
    assert!(
        !h.fake.calls().iter().any(|c| c.path.contains(ids::WIN11)),
        "nothing called for the expired message"
    );
    let rejected = rejected_lines(&logs);
    assert_eq!(rejected.len(), 1, "{}", logs.text());
    assert!(
        rejected[0]["detail"]
            .as_str()
            .unwrap()
            .contains("more than 14 days ago"),
        "{}",
        rejected[0]
    );
    assert_eq!(
        rejected[0]["device"],
        ids::WIN11,
        "sealed: its fields are facts"
    );
}

/// The ledger in moto, its table made from the template.
async fn dynamo_ledger() -> (Arc<mde_offboard::adapters::dynamodb::DynamoLedger>, String) {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let client: aws_sdk_dynamodb::Client = mde_offboard::adapters::aws::SdkClient::with_limits(
        aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&mde_testkit::moto::moto().endpoint)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests")),
    );
    let table = mde_testkit::ledger_table_from_template().await;
    let ledger = mde_offboard::adapters::dynamodb::DynamoLedger::new(client, table.clone());
    (Arc::new(ledger), table)
}

/// The review's L2, with the ledger: each sealed message is acted on once,
/// however often SQS, a redrive or a replayer hands it over; a message not
/// done with (a failure SQS is to deliver again) is not used up; a new
/// request for the same device is a new seal. The budget is taken once per
/// offboard Defender accepted.
#[tokio::test]
async fn with_the_ledger_a_sealed_message_is_acted_on_once() {
    let (ledger, table) = dynamo_ledger().await;
    let Harness { app, fake, .. } = Harness::with(Options {
        env: vec![
            ("MAX_OFFBOARDS_PER_HOUR", "5".into()),
            ("LEDGER_TABLE", table),
        ],
        ..Default::default()
    })
    .await;
    let app = app.with_ledger(ledger.clone());
    let body = seal_by_hand(&queued(ids::WIN11));

    // Two copies in one batch: the first is acted on, the second finds it
    // held and comes back.
    let (failed, _) = work(
        &app,
        vec![sqs_message("m1", &body), sqs_message("m2", &body)],
    )
    .await;
    assert_eq!(failed, ["m2"]);
    assert_eq!(fake.accepted_offboards().len(), 1);

    // The copy again (SQS's next delivery, or a redrive from the DLQ):
    // refused like an unsealed message, nothing called.
    fake.reset_calls();
    let (logs, guard) = Logs::capture();
    let (failed, metrics) = work(&app, vec![sqs_message("m2", &body)]).await;
    drop(guard);
    assert_eq!(failed, ["m2"]);
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert_eq!(metrics.get("Rejected"), 1.0);
    let rejected = rejected_lines(&logs);
    assert_eq!(rejected.len(), 1, "{}", logs.text());
    assert_eq!(
        rejected[0]["detail"],
        "the sealed message was acted on before"
    );
    assert_eq!(rejected[0]["device"], ids::WIN11);

    // A message whose device failed is not used up: its redelivery acts.
    let win10 = seal_by_hand(&queued(ids::WIN10));
    fake.fault_on(
        Api::Offboard,
        ids::WIN10,
        Fault::Status {
            status: 400,
            code: "InvalidRequest".into(),
        },
    );
    let (failed, _) = work(&app, vec![sqs_message("m3", &win10)]).await;
    assert_eq!(failed, ["m3"], "failed: delivered again");
    let (failed, _) = work(&app, vec![sqs_message("m3", &win10)]).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(fake.accepted_offboards().len(), 1, "WIN10's second try");

    // A new request for WIN11 is a new seal: acted on (Defender answers
    // already_pending).
    let again = seal_by_hand(&QueuedDevice {
        enqueued_at: now() + 1,
        ..queued(ids::WIN11)
    });
    let (failed, metrics) = work(&app, vec![sqs_message("m4", &again)]).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(metrics.get("already_pending"), 1.0);

    // Two offboards accepted (WIN11 once, WIN10 once): two places of five
    // used, whatever was refused, failed or already pending.
    let left = {
        use mde_offboard::domain::ledger::OffboardBudget;
        ledger
            .take_budget("", 5, 5, std::time::SystemTime::now())
            .await
    };
    assert_eq!(left, Ok(3));
}
