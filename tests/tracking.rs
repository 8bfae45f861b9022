//! Tracking on a simulated clock: a request offboards four devices, and the
//! worker follows each action through delayed track messages for seven
//! simulated days, in a moment. The queue keeps SQS's delay semantics in
//! memory (a message is invisible until its delay has passed, a failed one
//! comes back after the visibility timeout); the clock jumps to the next
//! visible message, as a discrete-event simulation does, so nothing sleeps.

// Only its moto clients are used here.
#[allow(unused_imports)]
mod common;
mod sim;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use futures_util::future::BoxFuture;
use lambda_http::{Body, Request};
use mde_offboard::App;
use mde_offboard::adapters::memory::ledger::InMemoryLedger;
use mde_offboard::config::Config;
use mde_offboard::domain::defender::{Defender, DefenderError, Machine, MachineAction};
use mde_offboard::domain::ledger::DeviceRecords;
use mde_offboard::domain::limits::Deadline;
use mde_offboard::domain::model::{DeviceName, MachineId};
use mde_offboard::domain::queue::Queue;
use mde_offboard::domain::secret::StaticSecret;
use mde_offboard::support::webhook_sig::StandardWebhooks;
use mde_testkit::{CallbackReceiver, FakeTicketing, GENERIC_WEBHOOK_SECRET, secret_json};
use serde_json::{Value, json};
use sim::{SimClock, SimQueue};

const CALLBACK_SECRET: &str = "whsec_Y2FsbGJhY2stc2lnbmluZy1rZXktMDEyMzQ1Njc4OWFi";
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// Where the simulated clock starts (any fixed instant).
const T0: i64 = 1_900_000_000;

const OK_ID: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
const FAIL_ID: &str = "7f3c2a9d1b8e4f6a0c5d3e2b1a9f8e7d6c5b4a39";
const CANCEL_ID: &str = "a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";
const DRAWER_ID: &str = "b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";

/// A tenant whose actions end, each after its own time, in their own
/// final status (or never); every GET of an action is counted.
struct ScriptedDefender {
    clock: SimClock,
    /// machine -> (final status, seconds after the request; None: never)
    script: HashMap<&'static str, (&'static str, Option<i64>)>,
    actions: Mutex<HashMap<String, (String, i64)>>,
    gets: Mutex<HashMap<String, u32>>,
}

fn ready<'a, T: Send + 'a>(v: Result<T, DefenderError>) -> BoxFuture<'a, Result<T, DefenderError>> {
    Box::pin(async move { v })
}

impl Defender for ScriptedDefender {
    fn find_by_name<'a>(
        &'a self,
        name: &'a DeviceName,
        _: &'a Deadline,
    ) -> BoxFuture<'a, Result<Vec<Machine>, DefenderError>> {
        // One machine known by name, as a CMDB names it.
        let found = (name.as_str() == "laptop-17.contoso.com").then(|| {
            serde_json::from_value(json!({"id": OK_ID, "computerDnsName": name.as_str(),
                "osPlatform": "Windows11"}))
            .unwrap()
        });
        ready(Ok(found.into_iter().collect()))
    }
    fn get_machine<'a>(
        &'a self,
        id: &'a MachineId,
        _: &'a Deadline,
    ) -> BoxFuture<'a, Result<Machine, DefenderError>> {
        let m = serde_json::from_value(json!({"id": id.as_str(),
            "computerDnsName": format!("pc-{}", &id.as_str()[..4]), "osPlatform": "Windows11"}))
        .unwrap();
        ready(Ok(m))
    }
    fn offboard<'a>(
        &'a self,
        id: &'a MachineId,
        _: &'a str,
        _: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>> {
        let mut actions = self.actions.lock().unwrap();
        let action_id = format!("00000000-0000-4000-8000-{:012x}", actions.len() + 1);
        actions.insert(
            action_id.clone(),
            (id.as_str().to_string(), self.clock.now()),
        );
        let a = serde_json::from_value(json!({"id": action_id, "type": "Offboard",
            "status": "Pending", "machineId": id.as_str()}))
        .unwrap();
        ready(Ok(a))
    }
    fn get_action<'a>(
        &'a self,
        action_id: &'a str,
        _: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>> {
        let Some((machine, at)) = self.actions.lock().unwrap().get(action_id).cloned() else {
            return ready(Err(DefenderError::NotFound));
        };
        *self
            .gets
            .lock()
            .unwrap()
            .entry(machine.clone())
            .or_default() += 1;
        let (fin, after) = self.script[machine.as_str()];
        let status = match after {
            Some(s) if self.clock.now() >= at + s => fin,
            _ => "Pending",
        };
        ready(Ok(serde_json::from_value(
            json!({"id": action_id, "status": status, "machineId": machine}),
        )
        .unwrap()))
    }
    fn cancel_action<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>> {
        ready(Err(DefenderError::NotFound))
    }
}

struct Sim {
    notify_failed: Mutex<f64>,
    app: App,
    clock: SimClock,
    queue: Arc<SimQueue>,
    ledger: Arc<InMemoryLedger>,
    defender: Arc<ScriptedDefender>,
}

fn secret(extra: &Value) -> String {
    let mut s: Value = serde_json::from_str(&secret_json()).unwrap();
    s["webhook_secrets"]["callback"] = json!(CALLBACK_SECRET);
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s.to_string()
}

fn sim() -> Sim {
    sim_with(&json!({}))
}

fn sim_with(secret_extra: &Value) -> Sim {
    let clock = SimClock::at(T0);
    let env: HashMap<&str, &str> = [
        ("SECRET_ID", "in-memory"),
        ("MDE_API_URL", "http://127.0.0.1:9"),
        ("MDE_LOGIN_URL", "http://127.0.0.1:9"),
        ("CALLBACK_HOSTS", "127.0.0.1"),
    ]
    .into();
    let config = Config::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
    let defender = Arc::new(ScriptedDefender {
        clock: clock.clone(),
        script: [
            (OK_ID, ("Succeeded", Some(HOUR))),
            (FAIL_ID, ("Failed", Some(3 * HOUR))),
            (CANCEL_ID, ("Cancelled", Some(DAY))),
            (DRAWER_ID, ("Succeeded", None)),
        ]
        .into(),
        actions: Mutex::default(),
        gets: Mutex::default(),
    });
    let queue = Arc::new(SimQueue::new(clock.clone()));
    let ledger = Arc::new(InMemoryLedger::new());
    let c = clock.clone();
    let app = mde_offboard::init::Wiring::new(config, Arc::new(StaticSecret(secret(secret_extra))))
        .defender(defender.clone())
        .build()
        .with_queue(queue.clone())
        .with_ledger(ledger.clone())
        .with_clock(Arc::new(move || {
            UNIX_EPOCH + Duration::from_secs(c.now() as u64)
        }));
    Sim {
        notify_failed: Mutex::new(0.0),
        app,
        clock,
        queue,
        ledger,
        defender,
    }
}

fn signed(body: &Value, id: &str) -> Request {
    let mut event: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/events/generic.json"))
            .unwrap(),
    )
    .unwrap();
    let body = body.to_string();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    event["headers"]["webhook-id"] = json!(id);
    event["headers"]["webhook-timestamp"] = json!(now.to_string());
    event["headers"]["webhook-signature"] = json!(
        StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
            .unwrap()
            .sign(id, now, body.as_bytes())
    );
    event["body"] = json!(body);
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

impl Sim {
    /// Delivers messages one at a time in visibility order until the queue
    /// is empty; a failed message comes back after a 30 s visibility
    /// timeout. Answers how many deliveries it made.
    async fn drain(&self, max_deliveries: usize) -> usize {
        let mut n = 0;
        while let Some((at, _, body)) = self.queue.pop_next() {
            n += 1;
            assert!(n <= max_deliveries, "the queue never emptied");
            self.clock.set(at);
            let mut msg = SqsMessage::default();
            msg.message_id = Some(format!("m{n}"));
            msg.body = Some(body.clone());
            let mut event = SqsEvent::default();
            event.records = vec![msg];
            let deadline = SystemTime::now() + Duration::from_secs(20);
            let ms = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
            let (answer, m) =
                mde_offboard::inbound::sqs::handle_queue_metered(&self.app, event, "sim", ms).await;
            *self.notify_failed.lock().unwrap() +=
                m.get(mde_offboard::ops::metrics::names::NOTIFY_FAILED);
            if !answer.batch_item_failures.is_empty() {
                self.queue.push(self.clock.now() + 30, body);
            }
        }
        n
    }
}

#[tokio::test]
async fn each_action_is_followed_to_its_final_state_and_called_back_once() {
    let s = sim();
    let receiver = CallbackReceiver::start(CALLBACK_SECRET, &[]).await;
    let body = json!({"ticket": "INC-77", "comment": "retired",
        "devices": [OK_ID, FAIL_ID, CANCEL_ID, DRAWER_ID],
        "callback_url": receiver.url()});
    let resp = mde_offboard::inbound::http::handle(&s.app, signed(&body, "msg_track_1")).await;
    assert_eq!(resp.status().as_u16(), 200);
    let Body::Text(text) = resp.body() else {
        panic!("no body")
    };
    assert!(text.contains("offboard_requested"), "{text}");

    let deliveries = s.drain(10_000).await;
    // Seven days of 900 s links for the one that never ends, and fewer for
    // the rest; SQS's own limit never exceeded.
    assert!(deliveries > 600, "{deliveries}");
    assert_eq!(s.queue.max_delay_seen.load(Ordering::SeqCst), 900);
    assert_eq!(s.clock.now(), T0 + 7 * DAY);

    let records = s.ledger.ticket_records("INC-77").await.unwrap();
    let status_of = |id: &str| {
        records
            .iter()
            .find(|r| r.machine_id == id)
            .map(|r| r.action_status.as_str())
            .unwrap()
    };
    assert_eq!(
        [
            status_of(OK_ID),
            status_of(FAIL_ID),
            status_of(CANCEL_ID),
            status_of(DRAWER_ID)
        ],
        ["Succeeded", "Failed", "Cancelled", "NotConfirmed"]
    );

    // One verified callback per device, each with its own final status.
    let got = receiver.received();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|r| r.verified && r.answered == 200));
    let by_machine: HashMap<String, Value> = got
        .iter()
        .map(|r| {
            (
                r.body["machine_id"].as_str().unwrap().to_string(),
                r.body.clone(),
            )
        })
        .collect();
    assert_eq!(by_machine[OK_ID]["status"], "Succeeded");
    assert_eq!(by_machine[OK_ID]["type"], "offboard.outcome");
    assert_eq!(by_machine[OK_ID]["ticket"], "INC-77");
    assert_eq!(by_machine[FAIL_ID]["status"], "Failed");
    assert_eq!(by_machine[CANCEL_ID]["status"], "Cancelled");
    assert_eq!(by_machine[DRAWER_ID]["status"], "NotConfirmed");
    for key in [
        "device",
        "action_id",
        "detail",
        "requested_at",
        "finished_at",
    ] {
        assert!(by_machine[OK_ID].get(key).is_some(), "{key}");
    }

    // The Defender calls tracking spent: the succeeded action was read at
    // 15 min, 45 min and 1 h 45 min; the one in a drawer 13 times in 7 days.
    let gets = s.defender.gets.lock().unwrap().clone();
    assert_eq!(gets[OK_ID], 3);
    assert_eq!(gets[DRAWER_ID], 13);
}

#[tokio::test]
async fn a_callback_receiver_down_twice_gets_it_on_the_third_try_and_a_4xx_is_not_retried() {
    for (script, want_received, want_last) in
        [(&[500u16, 500, 200][..], 3, 200u16), (&[400][..], 1, 400)]
    {
        let s = sim();
        let receiver = CallbackReceiver::start(CALLBACK_SECRET, script).await;
        let body = json!({"ticket": "INC-78", "comment": "retired",
            "devices": [OK_ID], "callback_url": receiver.url()});
        let resp = mde_offboard::inbound::http::handle(&s.app, signed(&body, "msg_track_2")).await;
        assert_eq!(resp.status().as_u16(), 200);
        s.drain(100).await;
        let got = receiver.received();
        assert_eq!(got.len(), want_received, "{script:?}: {got:?}");
        assert!(got.iter().all(|r| r.verified));
        assert_eq!(got.last().unwrap().answered, want_last);
        // Same webhook-id on every attempt: the receiver can deduplicate.
        assert!(got.iter().all(|r| r.webhook_id == got[0].webhook_id));
        // The outcome stands whatever the receiver answered.
        let records = s.ledger.ticket_records("INC-78").await.unwrap();
        assert_eq!(records[0].action_status.as_str(), "Succeeded");
    }
}

#[tokio::test]
async fn without_a_callback_url_the_outcome_is_still_recorded() {
    let s = sim();
    let body = json!({"ticket": "INC-79", "comment": "retired", "devices": [OK_ID]});
    assert_eq!(
        mde_offboard::inbound::http::handle(&s.app, signed(&body, "msg_track_3"))
            .await
            .status(),
        200
    );
    s.drain(100).await;
    let records = s.ledger.ticket_records("INC-79").await.unwrap();
    assert_eq!(records[0].action_status.as_str(), "Succeeded");
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hmac_hex(key: &str, body: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A preset's event fixture carrying `body`, authenticated as its sender does.
fn delivery(source: &str, body: &Value) -> Request {
    let mut event = fixture(&format!("{source}.json"));
    let text = body.to_string();
    match source {
        "servicenow" => {
            event["headers"]["authorization"] = json!("Bearer snow-bearer-token-never-log")
        }
        "jira" => {
            event["headers"]["x-hub-signature"] = json!(format!(
                "sha256={}",
                hmac_hex("jira-webhook-secret-never-log", &text)
            ))
        }
        "pagerduty" => {
            event["headers"]["x-pagerduty-signature"] =
                json!(format!("v1={}", hmac_hex("pd-new-secret-never-log", &text)))
        }
        _ => unreachable!(),
    }
    event["body"] = json!(text);
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

#[tokio::test]
async fn each_preset_writes_the_outcome_back_to_its_ticket_exactly_once() {
    let tickets = FakeTicketing::start()
        .await
        .with_jira_issue("IT-42")
        .with_snow_record("incident", "9d385017c611228701d22104cc95c371")
        .with_pd_incident("Q2W8L1RZ3XK4PQ");
    let s = sim_with(&tickets.secret_keys());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;

    let mut snow = fixture("servicenow.body.json");
    snow["cmdb_ci"] = json!("");
    snow["mde_machine_id"] = json!(OK_ID);
    let mut jira = fixture("jira.body.json");
    jira["timestamp"] = json!(now_ms);
    jira["issue"]["fields"]["customfield_10071"] = json!([FAIL_ID]);
    let mut pd = fixture("pagerduty.body.json");
    pd["event"]["occurred_at"] =
        json!(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
    pd["event"]["data"]["changed_custom_fields"][0]["value"] = json!([CANCEL_ID]);
    for (source, body) in [("servicenow", &snow), ("jira", &jira), ("pagerduty", &pd)] {
        let resp = mde_offboard::inbound::http::handle(&s.app, delivery(source, body)).await;
        let Body::Text(text) = resp.body() else {
            panic!("no body")
        };
        assert_eq!(resp.status().as_u16(), 200, "{source}: {text}");
        assert!(text.contains("offboard_requested"), "{source}: {text}");
    }
    // The first write-back meets a ServiceNow outage once and is retried.
    tickets.fail_next(&[503]);
    s.drain(10_000).await;

    let mut written = tickets.written();
    written.sort_by_key(|w| w.system);
    let got: Vec<(&str, &str)> = written
        .iter()
        .map(|w| (w.system, w.record.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("jira", "IT-42"),
            ("pagerduty", "Q2W8L1RZ3XK4PQ"),
            ("servicenow", "incident/9d385017c611228701d22104cc95c371"),
        ]
    );
    assert!(written[0].text.contains("ended Failed") && written[0].text.contains(FAIL_ID));
    assert!(written[1].text.contains("ended Cancelled"));
    assert!(written[2].text.contains("ended Succeeded"));
    assert_eq!(tickets.calls(), 4, "three writes and one retry");
    assert_eq!(*s.notify_failed.lock().unwrap(), 0.0);
}

#[tokio::test]
async fn a_refused_write_back_is_counted_once_and_the_outcome_stands() {
    // The Jira issue is gone (404), as after a project move.
    let tickets = FakeTicketing::start().await;
    let s = sim_with(&tickets.secret_keys());
    let mut jira = fixture("jira.body.json");
    jira["timestamp"] = json!(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    );
    jira["issue"]["fields"]["customfield_10071"] = json!([OK_ID]);
    assert_eq!(
        mde_offboard::inbound::http::handle(&s.app, delivery("jira", &jira))
            .await
            .status(),
        200
    );
    s.drain(100).await;
    assert_eq!(tickets.calls(), 1, "a 404 is not retried");
    assert!(tickets.written().is_empty());
    assert_eq!(*s.notify_failed.lock().unwrap(), 1.0);
    let records = s.ledger.ticket_records("IT-42").await.unwrap();
    assert_eq!(records[0].action_status.as_str(), "Succeeded");
}

#[tokio::test]
async fn without_write_back_credentials_nothing_is_written() {
    let tickets = FakeTicketing::start().await.with_jira_issue("IT-42");
    let s = sim();
    let mut jira = fixture("jira.body.json");
    jira["timestamp"] = json!(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    );
    jira["issue"]["fields"]["customfield_10071"] = json!([OK_ID]);
    assert_eq!(
        mde_offboard::inbound::http::handle(&s.app, delivery("jira", &jira))
            .await
            .status(),
        200
    );
    s.drain(100).await;
    assert_eq!(tickets.calls(), 0);
    assert_eq!(*s.notify_failed.lock().unwrap(), 0.0);
}

/// The SQS adapter against moto: a track message's DelaySeconds is set,
/// and a wait longer than SQS allows is sent as a 900 s link, not refused.
#[tokio::test]
async fn sqs_keeps_track_messages_invisible_for_their_delay() {
    use aws_sdk_sqs::types::QueueAttributeName;
    use mde_offboard::adapters::sqs::SqsQueue;
    let url = common::new_queue().await;
    let queue = SqsQueue::new(common::sqs_client(), url.clone());
    let bodies = ["first".to_string(), "second".to_string()];
    let refused = queue
        .send_batch_delayed(&bodies[..1], Duration::from_secs(900))
        .await
        .unwrap();
    assert!(refused.is_empty());
    let refused = queue
        .send_batch_delayed(&bodies[1..], Duration::from_secs(5 * 3600))
        .await
        .unwrap();
    assert!(
        refused.is_empty(),
        "a delay past 900 s is clamped, not refused"
    );
    let got = common::sqs_client()
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert!(got.messages().is_empty(), "delayed messages are invisible");
    let attrs = common::sqs_client()
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .unwrap();
    let delayed = attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessagesDelayed))
        .cloned();
    assert_eq!(delayed.as_deref(), Some("2"));
}

/// A track message is re-validated like a device message: a sealed one
/// whose action id could reach another path is refused, counted, left for
/// the dead-letter queue, and Defender is not called.
#[tokio::test]
async fn a_sealed_track_message_with_a_bad_field_is_rejected() {
    use mde_offboard::domain::queue::QueueKeys;
    use mde_offboard::domain::secret::AppSecret;
    use mde_offboard::domain::tracking::TrackedAction;
    let s = sim();
    let keys = QueueKeys::from_secret(&AppSecret::parse(&secret(&json!({}))).unwrap()).unwrap();
    let good = TrackedAction {
        action_id: "00000000-0000-4000-8000-000000000001".into(),
        machine_id: OK_ID.into(),
        ticket: "INC-80".into(),
        device: OK_ID.into(),
        source: "generic".into(),
        callback_url: None,
        notify: None,
        requested_at: T0,
        attempt: 0,
        due_at: T0,
        tenant: None,
    };
    let cases = [
        TrackedAction {
            action_id: "../machines/x".into(),
            ..good.clone()
        },
        TrackedAction {
            source: "nobody".into(),
            ..good.clone()
        },
        TrackedAction {
            callback_url: Some("https://elsewhere.example.com/hook".into()),
            ..good.clone()
        },
    ];
    for bad in cases {
        let mut msg = SqsMessage::default();
        msg.message_id = Some("bad".into());
        msg.body = Some(keys.seal_track(&bad));
        let mut event = SqsEvent::default();
        event.records = vec![msg];
        let ms = (SystemTime::now() + Duration::from_secs(20))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let (answer, m) =
            mde_offboard::inbound::sqs::handle_queue_metered(&s.app, event, "t", ms).await;
        assert_eq!(answer.batch_item_failures.len(), 1, "{bad:?}");
        assert_eq!(m.get(mde_offboard::ops::metrics::names::REJECTED), 1.0);
    }
    assert!(s.defender.gets.lock().unwrap().is_empty());
    assert!(s.queue.pop_next().is_none(), "nothing sent on");
}

#[test]
fn tracking_settings_are_checked_at_init() {
    let base = [
        ("SECRET_ID", "x"),
        ("MDE_API_URL", "http://127.0.0.1:9"),
        ("MDE_LOGIN_URL", "http://127.0.0.1:9"),
    ];
    let with = |k: &'static str, v: &'static str| {
        let mut env: HashMap<&str, &str> = base.into();
        env.insert(k, v);
        Config::from_lookup(move |n| env.get(n).map(|v| v.to_string()))
    };
    let c = with("TRACK_INTERVALS_SECONDS", "60, 600").unwrap();
    assert_eq!(c.track.intervals, [60, 600]);
    assert_eq!(c.track.track_for, 604_800);
    let e = with("TRACK_INTERVALS_SECONDS", "60,soon").unwrap_err();
    assert!(e.to_string().contains("TRACK_INTERVALS_SECONDS"), "{e}");
    let e = with("TRACK_FOR_SECONDS", "0").unwrap_err();
    assert!(e.to_string().contains("TRACK_FOR_SECONDS"), "{e}");
}

/// A direct invocation's `callback_url` is carried to the outcome too.
#[tokio::test]
async fn a_direct_invocations_callback_gets_the_outcome() {
    let s = sim();
    let receiver = CallbackReceiver::start(CALLBACK_SECRET, &[]).await;
    let event = json!({"ticket": "INC-81", "comment": "retired", "devices": [OK_ID],
        "callback_url": receiver.url()});
    let resp = mde_offboard::inbound::direct::invoke(
        &s.app,
        &event.to_string(),
        &lambda_http::Context::default(),
    )
    .await
    .expect("answered");
    assert_eq!(resp.status, 200);
    s.drain(100).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["ticket"], "INC-81");
    assert_eq!(got[0].body["status"], "Succeeded");
}

impl Sim {
    /// Delivers `bodies` as one batch, as SQS does.
    async fn deliver(&self, bodies: &[String]) {
        let mut event = SqsEvent::default();
        event.records = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut msg = SqsMessage::default();
                msg.message_id = Some(format!("dup{i}"));
                msg.body = Some(b.clone());
                msg
            })
            .collect();
        let ms = (SystemTime::now() + Duration::from_secs(20))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let (answer, _) =
            mde_offboard::inbound::sqs::handle_queue_metered(&self.app, event, "dup", ms).await;
        assert!(answer.batch_item_failures.is_empty());
    }
}

/// One generic request with a callback, one Jira delivery with a write-back.
async fn callback_and_jira(s: &Sim, receiver: &CallbackReceiver, ticket: &str) {
    let body = json!({"ticket": ticket, "comment": "retired", "devices": [OK_ID],
        "callback_url": receiver.url()});
    let resp =
        mde_offboard::inbound::http::handle(&s.app, signed(&body, &format!("msg_{ticket}"))).await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut jira = fixture("jira.body.json");
    jira["timestamp"] = json!(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    );
    jira["issue"]["fields"]["customfield_10071"] = json!([FAIL_ID]);
    let resp = mde_offboard::inbound::http::handle(&s.app, delivery("jira", &jira)).await;
    assert_eq!(resp.status().as_u16(), 200);
}

/// L1: the same track message delivered twice, in one batch, once its
/// action is final: one callback, one Jira comment.
#[tokio::test]
async fn a_final_track_message_delivered_twice_calls_back_once_and_notes_once() {
    let tickets = FakeTicketing::start().await.with_jira_issue("IT-42");
    let s = sim_with(&tickets.secret_keys());
    let receiver = CallbackReceiver::start(CALLBACK_SECRET, &[]).await;
    callback_and_jira(&s, &receiver, "INC-90").await;
    // Both actions are final by now (an hour, three hours).
    s.clock.set(T0 + 4 * HOUR);
    while let Some((_, _, body)) = s.queue.pop_next() {
        s.deliver(&[body.clone(), body]).await;
    }
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body["status"], "Succeeded");
    assert_eq!(tickets.calls(), 1, "one Jira comment");
    assert!(tickets.written()[0].text.contains("ended Failed"));
    // Nothing follows a final check, however often it came.
    assert!(s.queue.pop_next().is_none());
}

/// L1: a first track message delivered twice forks its chain; both forks
/// reach the final status, in separate batches; only the first reports.
#[tokio::test]
async fn a_forked_tracking_chain_calls_back_once_and_notes_once() {
    let tickets = FakeTicketing::start().await.with_jira_issue("IT-42");
    let s = sim_with(&tickets.secret_keys());
    let receiver = CallbackReceiver::start(CALLBACK_SECRET, &[]).await;
    callback_and_jira(&s, &receiver, "INC-91").await;
    s.queue.duplicate_everything();
    s.drain(1_000).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(tickets.calls(), 1, "one Jira comment");
    let records = s.ledger.ticket_records("INC-91").await.unwrap();
    assert_eq!(records[0].action_status.as_str(), "Succeeded");
}

/// The cancel route writes `Cancelled` into the record before tracking
/// sees it: tracking still reports that outcome, once.
#[tokio::test]
async fn an_outcome_the_cancel_route_wrote_is_still_reported_once() {
    use mde_offboard::domain::ledger::ActionStatus;
    let s = sim();
    let receiver = CallbackReceiver::start(CALLBACK_SECRET, &[]).await;
    let body = json!({"ticket": "INC-92", "comment": "retired", "devices": [CANCEL_ID],
        "callback_url": receiver.url()});
    let resp = mde_offboard::inbound::http::handle(&s.app, signed(&body, "msg_track_92")).await;
    assert_eq!(resp.status().as_u16(), 200);
    let record = s.ledger.ticket_records("INC-92").await.unwrap().remove(0);
    // What the cancel route's `record_cancel` does.
    s.ledger
        .update_action_status(
            &record.key(),
            ActionStatus::Cancelled,
            UNIX_EPOCH + Duration::from_secs(T0 as u64 + 60),
        )
        .await
        .unwrap();
    s.queue.duplicate_everything();
    s.drain(1_000).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body["status"], "Cancelled");
}

/// The ServiceNow recipe (`events/servicenow-business-rule.js`, the page's
/// Business Rule) sends what write-back needs: its body, built from an
/// incident record as the script builds it, reaches the `servicenow`
/// preset, and the outcome is written to that record as a work note.
#[tokio::test]
async fn the_servicenow_recipe_sends_what_write_back_needs() {
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/events/servicenow-business-rule.js"
    ))
    .unwrap();
    // The incident as ServiceNow holds it.
    let record = json!({
        "sys_id": "9d385017c611228701d22104cc95c371", "number": "INC0012345",
        "state": "Closed", "short_description": "Laptop stolen: laptop-17",
        "cmdb_ci": "LAPTOP-17", "cmdb_ci.fqdn": "laptop-17.contoso.com",
    });
    // `JSON.stringify({ key: current.<expr>, ... })`, evaluated against it.
    let literal = script
        .split("JSON.stringify({")
        .nth(1)
        .and_then(|rest| rest.split("}))").next())
        .expect("the script builds its body with JSON.stringify({...})");
    let mut body = serde_json::Map::new();
    for pair in literal.split(",\n") {
        let (key, expr) = pair.trim().split_once(':').expect("key: value");
        let expr = expr.trim();
        let field = |e: &str| e.split('\'').nth(1).map(str::to_string).unwrap_or_default();
        // `a || b`: the first that is not empty, as JavaScript does.
        let expr = expr
            .split(" || ")
            .find(|e| {
                e.strip_prefix("current.")
                    .and_then(|e| e.strip_suffix(".toString()"))
                    .is_none_or(|f| record.get(f).is_some())
            })
            .unwrap_or(expr);
        let value = if expr == "current.getUniqueValue()" {
            record["sys_id"].clone()
        } else if expr.starts_with("current.getValue(") {
            record[field(expr)].clone()
        } else if let Some(f) = expr
            .strip_prefix("current.")
            .and_then(|e| e.strip_suffix(".getDisplayValue()"))
        {
            record[f].clone()
        } else if let Some(f) = expr
            .strip_prefix("current.")
            .and_then(|e| e.strip_suffix(".toString()"))
        {
            record[f].clone()
        } else if expr == "''" {
            json!("")
        } else {
            panic!("an expression this test does not know: {expr}")
        };
        body.insert(key.trim().to_string(), value);
    }
    assert!(
        body.contains_key("sys_id"),
        "the recipe sends sys_id: {body:?}"
    );

    let tickets = FakeTicketing::start()
        .await
        .with_snow_record("incident", "9d385017c611228701d22104cc95c371");
    let s = sim_with(&tickets.secret_keys());
    let resp =
        mde_offboard::inbound::http::handle(&s.app, delivery("servicenow", &Value::Object(body)))
            .await;
    let Body::Text(text) = resp.body() else {
        panic!("no body")
    };
    assert_eq!(resp.status().as_u16(), 200, "{text}");
    assert!(text.contains("offboard_requested"), "{text}");
    s.drain(10_000).await;
    let written = tickets.written();
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(
        written[0].record,
        "incident/9d385017c611228701d22104cc95c371"
    );
    assert!(
        written[0].text.contains("ended Succeeded"),
        "{}",
        written[0].text
    );
}
