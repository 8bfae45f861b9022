//! EC2 Auto Scaling scale-in (contract, "Auto Scaling lifecycle hooks"): a
//! real termination hook event (aws-lambda-go's fixture, read from the
//! shared real-world folder, fields set in code) through the function's own
//! dispatch, the Defender API fake over HTTP, the real Auto Scaling SDK
//! client against a stateful fake of the lifecycle calls (moto 5.2.1 does
//! not serve them: testkit/src/autoscaling.rs), and the queue on a
//! simulated clock, as in tests/tracking.rs: the clock jumps to the next
//! visible message, so nothing sleeps.

mod sim;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use lambda_http::{Context, LambdaEvent};
use mde_offboard::App;
use mde_offboard::adapters::autoscaling::AutoScaling;
use mde_offboard::adapters::memory::ledger::InMemoryLedger;
use mde_offboard::config::Config;
use mde_offboard::domain::ledger::DeviceRecords;
use mde_offboard::domain::secret::StaticSecret;
use mde_offboard::inbound::InvocationError;
use mde_testkit::{Api, FakeAutoScaling, FakeDefender, FakeMachine, ids, secret_json};
use serde_json::{Value, json};
use sim::{SimClock, SimQueue};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const T0: i64 = 1_900_000_000;
const GROUP: &str = "my-asg";
const HOOK: &str = "my-lifecycle-hook";
const TOKEN: &str = "87654321-4321-4321-4321-210987654321";
/// The instance of the real event.
const INSTANCE: &str = "i-1234567890abcdef0";
const COMPLETE: &str = "CompleteLifecycleAction";
const HEARTBEAT: &str = "RecordLifecycleActionHeartbeat";

/// The real event (as published: no `Origin` or `Destination`, a group
/// without a warm pool), its `time` on the simulated clock.
fn event() -> Value {
    let text = std::fs::read_to_string(format!(
        "{ROOT}/../shared/realworld/eventbridge/aws-lambda-go.autoscaling-event-terminate-action.json"
    ))
    .expect("the real Auto Scaling lifecycle event");
    let mut e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["detail"]["EC2InstanceId"], INSTANCE);
    assert_eq!(e["detail"]["LifecycleActionToken"], TOKEN);
    e["time"] = json!(iso(T0));
    e
}

fn iso(t: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t as u64)).to_string()
}

struct Sim {
    app: App,
    clock: SimClock,
    queue: Arc<SimQueue>,
    ledger: Arc<InMemoryLedger>,
    defender: FakeDefender,
    asg: FakeAutoScaling,
}

fn asg_client(url: &str) -> aws_sdk_autoscaling::Client {
    use aws_sdk_autoscaling::config::{BehaviorVersion, Credentials, Region};
    mde_offboard::adapters::aws::SdkClient::with_limits(
        aws_sdk_autoscaling::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests")),
    )
}

/// The tenant: a Windows server tagged with the instance id, a Linux host
/// named by it, and a machine tagged with a second instance's id twice.
fn machines() -> Vec<FakeMachine> {
    vec![
        FakeMachine::new(ids::SERVER2022, "EC2AMAZ-4F2K9QX", "WindowsServer2022").tagged(INSTANCE),
        FakeMachine::new(ids::LINUX, "i-0fedcba9876543210.ec2.internal", "Linux"),
        FakeMachine::new(ids::DUP_A, "web-a", "WindowsServer2022").tagged("i-0aaaaaaaaaaaaaaaa"),
        FakeMachine::new(ids::DUP_B, "web-b", "WindowsServer2022").tagged("i-0aaaaaaaaaaaaaaaa"),
        FakeMachine::new(ids::PROTECTED, "EC2AMAZ-PROT", "WindowsServer2022")
            .tagged("i-0bbbbbbbbbbbbbbbb")
            .tagged("Crown-Jewels"),
    ]
}

async fn sim(env: &[(&str, &str)]) -> Sim {
    sim_with(env, true).await
}

async fn sim_with(env: &[(&str, &str)], queue: bool) -> Sim {
    let defender = FakeDefender::start(machines()).await;
    let asg = FakeAutoScaling::start().await;
    let url = defender.url();
    let mut vars: HashMap<&str, &str> = [
        ("SECRET_ID", "in-memory"),
        ("MDE_API_URL", url.as_str()),
        ("MDE_LOGIN_URL", url.as_str()),
        ("DIRECT_EVENTS", "eventbridge"),
        ("EC2_DEVICE_MATCH", "tag"),
        ("PROTECTED_TAGS", "crown-jewels"),
    ]
    .into();
    for (k, v) in env {
        match *v {
            "" => vars.remove(k),
            _ => vars.insert(k, v),
        };
    }
    let config = Config::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap();
    let clock = SimClock::at(T0);
    let q = Arc::new(SimQueue::new(clock.clone()));
    let ledger = Arc::new(InMemoryLedger::new());
    let c = clock.clone();
    let mut app = mde_offboard::init::Wiring::new(config, Arc::new(StaticSecret(secret_json())))
        .build()
        .with_ledger(ledger.clone())
        .with_lifecycle(Arc::new(AutoScaling::new(asg_client(&asg.url()))))
        .with_clock(Arc::new(move || {
            UNIX_EPOCH + Duration::from_secs(c.now() as u64)
        }));
    if queue {
        app = app.with_queue(q.clone());
    }
    Sim {
        app,
        clock,
        queue: q,
        ledger,
        defender,
        asg,
    }
}

impl Sim {
    /// The event through the function's dispatch, as Lambda hands it over.
    async fn invoke(&self, event: &Value) -> Result<Value, InvocationError> {
        let raw = serde_json::value::RawValue::from_string(event.to_string()).unwrap();
        mde_offboard::inbound::dispatch(&self.app, LambdaEvent::new(raw, Context::default())).await
    }

    /// The hook holds the event's instance.
    fn hold(&self, event: &Value) {
        let d = &event["detail"];
        self.asg.hold(
            d["AutoScalingGroupName"].as_str().unwrap(),
            d["LifecycleHookName"].as_str().unwrap(),
            d["EC2InstanceId"].as_str().unwrap(),
            d["LifecycleActionToken"].as_str().unwrap(),
        );
    }

    /// Delivers queued messages one at a time in visibility order until
    /// the queue is empty (a failed one comes back after 30 s); `each`
    /// runs before every delivery with the number of lifecycle checks made
    /// so far. Answers how many deliveries it made.
    async fn drain(&self, max: usize, each: impl Fn(usize)) -> usize {
        let mut n = 0;
        while let Some((at, _, body)) = self.queue.pop_next() {
            n += 1;
            assert!(n <= max, "the queue never emptied");
            self.clock.set(at);
            each(self.asg.calls_of(HEARTBEAT).len());
            let mut msg = SqsMessage::default();
            msg.message_id = Some(format!("m{n}"));
            msg.body = Some(body.clone());
            let mut event = SqsEvent::default();
            event.records = vec![msg];
            let deadline = SystemTime::now() + Duration::from_secs(20);
            let ms = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
            let answer =
                mde_offboard::inbound::sqs::handle_queue(&self.app, event, "sim", ms).await;
            if !answer.batch_item_failures.is_empty() {
                self.queue.push(self.clock.now() + 30, body);
            }
        }
        n
    }

    fn completions(&self) -> Vec<(String, u16)> {
        self.asg
            .calls_of(COMPLETE)
            .iter()
            .map(|c| (c.form["LifecycleActionResult"].clone(), c.status))
            .collect()
    }
}

fn statuses(answer: &Value) -> Vec<&str> {
    answer["results"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["status"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_terminating_instance_is_offboarded_held_with_heartbeats_and_let_go_once_the_action_succeeds()
 {
    let s = sim(&[]).await;
    let e = event();
    s.hold(&e);
    let answer = s.invoke(&e).await.expect("answered");
    assert_eq!(statuses(&answer), ["offboard_requested"], "{answer}");
    assert_eq!(answer["ticket"], format!("{GROUP}/{INSTANCE}"));
    assert_eq!(answer["lifecycle"], "held");
    assert_eq!(answer["results"][0]["machine_id"], ids::SERVER2022);
    // The tag query Defender documents, exact.
    let lookup = s
        .defender
        .calls()
        .into_iter()
        .find(|c| c.path == "/api/machines/findbytag")
        .expect("a findbytag call");
    assert_eq!(
        lookup.query.as_deref(),
        Some(format!("tag={INSTANCE}&useStartsWithFilter=false").as_str())
    );
    let sent = s.defender.accepted_offboards();
    assert_eq!(sent.len(), 1);
    let comment: Value = serde_json::from_str(&sent[0].body).unwrap();
    assert_eq!(
        comment["Comment"],
        format!("{GROUP}/{INSTANCE}: Offboarded on scale-in of {GROUP} ({INSTANCE})")
    );
    // Not completed while the offboard runs.
    assert!(s.completions().is_empty());
    let action_id = answer["results"][0]["action_id"]
        .as_str()
        .unwrap()
        .to_string();

    // The device picks the offboard up after three checks.
    let defender = s.defender.clone();
    s.drain(100, |checks| {
        if checks == 3 {
            defender.set_action_status(&action_id, "Succeeded");
        }
    })
    .await;
    assert_eq!(s.completions(), [("CONTINUE".to_string(), 200)]);
    let held = s.asg.action(TOKEN).unwrap();
    assert_eq!(held.result.as_deref(), Some("CONTINUE"));
    assert_eq!(held.heartbeats, 3);
    // Every call named the event's group, hook and token.
    for c in s.asg.calls() {
        assert_eq!(c.form["AutoScalingGroupName"], GROUP);
        assert_eq!(c.form["LifecycleHookName"], HOOK);
        assert_eq!(c.form["LifecycleActionToken"], TOKEN);
        assert!(
            c.authorization
                .as_deref()
                .unwrap()
                .contains("/autoscaling/")
        );
    }
    // The regular tracking recorded the outcome in the ledger too.
    let records = s
        .ledger
        .ticket_records(&format!("{GROUP}/{INSTANCE}"))
        .await
        .unwrap();
    assert_eq!(records[0].action_status.as_str(), "Succeeded");

    // EventBridge delivers the same event again: answered from the
    // ledger, no second offboard, and the action (over) is not an error.
    let again = s.invoke(&e).await.expect("answered");
    assert_eq!(statuses(&again), ["offboard_requested"]);
    assert_eq!(s.defender.accepted_offboards().len(), 1);
    assert_eq!(
        s.completions().last().unwrap().1,
        400,
        "AWS said it is over"
    );
}

#[tokio::test]
async fn the_hold_runs_out_and_the_instance_is_let_go_with_continue() {
    let s = sim(&[("LIFECYCLE_HOLD_SECONDS", "300")]).await;
    let mut e = event();
    // The event was sent 60 s before it arrived: the hold counts from it.
    e["time"] = json!(iso(T0 - 60));
    s.hold(&e);
    let answer = s.invoke(&e).await.expect("answered");
    assert_eq!(answer["lifecycle"], "held");
    let asg = s.asg.clone();
    let let_go_at = Arc::new(AtomicI64::new(0));
    let (seen, clock) = (let_go_at.clone(), s.clock.clone());
    // The regular tracking follows the action for its seven days.
    s.drain(2000, move |_| {
        if asg.calls_of(COMPLETE).is_empty() {
            seen.store(clock.now(), Ordering::SeqCst);
        }
    })
    .await;
    assert_eq!(s.completions(), [("CONTINUE".to_string(), 200)]);
    // Checks (each with its heartbeat) 60, 120 and 180 s after the
    // invocation; the hold ends 300 s after the event, 240 s after it.
    assert_eq!(s.asg.action(TOKEN).unwrap().heartbeats, 3);
    assert_eq!(let_go_at.load(Ordering::SeqCst), T0 - 60 + 300);
    // The action was never final: the ledger still says so.
    let records = s
        .ledger
        .ticket_records(&format!("{GROUP}/{INSTANCE}"))
        .await
        .unwrap();
    assert_ne!(records[0].action_status.as_str(), "Succeeded");
}

#[tokio::test]
async fn a_warm_pool_instance_is_let_go_at_once_and_nothing_is_offboarded() {
    let s = sim(&[]).await;
    let mut e = event();
    e["detail"]["Origin"] = json!("AutoScalingGroup");
    e["detail"]["Destination"] = json!("WarmPool");
    s.hold(&e);
    let answer = s.invoke(&e).await.expect("answered");
    assert_eq!(answer["status"], "ignored", "{answer}");
    assert_eq!(answer["lifecycle"], "completed");
    assert_eq!(s.defender.count(Api::AnyDefender), 0);
    assert_eq!(s.completions(), [("CONTINUE".to_string(), 200)]);
    assert_eq!(s.queue.len(), 0);
}

/// No offboard sent (not found, ambiguous, protected, unsupported, dry
/// run): the instance is let go at once, nothing waits on the queue.
#[tokio::test]
async fn without_an_offboard_sent_the_instance_is_let_go_at_once() {
    type Env = &'static [(&'static str, &'static str)];
    let cases: [(&str, Env, &str); 6] = [
        ("i-0123456789abcdef0", &[], "not_found"),
        ("i-0aaaaaaaaaaaaaaaa", &[], "ambiguous"),
        ("i-0bbbbbbbbbbbbbbbb", &[], "protected"),
        (
            "i-0fedcba9876543210",
            &[("EC2_DEVICE_MATCH", "tag,hostname")],
            "unsupported_os",
        ),
        (INSTANCE, &[("DRY_RUN", "true")], "would_offboard"),
        (INSTANCE, &[("EC2_DEVICE_MATCH", "hostname")], "not_found"),
    ];
    for (instance, env, want) in cases {
        let s = sim(env).await;
        let mut e = event();
        e["detail"]["EC2InstanceId"] = json!(instance);
        s.hold(&e);
        let answer = s.invoke(&e).await.expect("answered");
        assert_eq!(statuses(&answer), [want], "{instance} {env:?}: {answer}");
        assert_eq!(answer["lifecycle"], "completed", "{instance}");
        assert_eq!(s.defender.accepted_offboards().len(), 0, "{instance}");
        assert_eq!(
            s.completions(),
            [("CONTINUE".to_string(), 200)],
            "{instance}"
        );
        assert_eq!(s.queue.len(), 0, "{instance}: nothing waits");
    }
}

#[tokio::test]
async fn a_linux_host_named_by_its_instance_id_is_found_by_hostname() {
    let s = sim(&[
        ("EC2_DEVICE_MATCH", "tag,hostname"),
        ("SUPPORTED_PLATFORMS", "windows,linux"),
    ])
    .await;
    let mut e = event();
    e["detail"]["EC2InstanceId"] = json!("i-0fedcba9876543210");
    s.hold(&e);
    let answer = s.invoke(&e).await.expect("answered");
    assert_eq!(statuses(&answer), ["offboard_requested"], "{answer}");
    assert_eq!(answer["results"][0]["machine_id"], ids::LINUX);
    // Tag first (nothing carries it), then the host name query.
    let paths: Vec<String> = s.defender.calls().iter().map(|c| c.path.clone()).collect();
    assert!(
        paths.contains(&"/api/machines/findbytag".to_string()),
        "{paths:?}"
    );
    assert!(paths.contains(&"/api/machines".to_string()), "{paths:?}");
}

#[tokio::test]
async fn without_the_queue_nothing_can_wait_and_the_instance_is_let_go_at_once() {
    let s = sim_with(&[], false).await;
    let e = event();
    s.hold(&e);
    let answer = s.invoke(&e).await.expect("answered");
    assert_eq!(statuses(&answer), ["offboard_requested"]);
    assert_eq!(answer["lifecycle"], "completed");
    assert_eq!(s.completions(), [("CONTINUE".to_string(), 200)]);
}

#[tokio::test]
async fn an_action_already_over_is_not_an_error() {
    let s = sim_with(&[], false).await;
    let e = event();
    s.hold(&e);
    s.asg.expire(TOKEN);
    let answer = s.invoke(&e).await.expect("answered, not failed");
    assert_eq!(answer["lifecycle"], "completed");
    assert_eq!(s.completions(), [("CONTINUE".to_string(), 400)]);
}

#[tokio::test]
async fn without_ec2_device_match_the_action_is_completed_then_the_event_fails_as_config_error() {
    let s = sim(&[("EC2_DEVICE_MATCH", "")]).await;
    let e = event();
    s.hold(&e);
    let err = s.invoke(&e).await.unwrap_err();
    assert_eq!(err.error_type, "MdeOffboard.ConfigError");
    assert!(err.message.contains("EC2_DEVICE_MATCH"), "{}", err.message);
    assert_eq!(s.completions(), [("CONTINUE".to_string(), 200)]);
    assert_eq!(s.defender.count(Api::AnyDefender), 0);
}

#[tokio::test]
async fn with_the_door_shut_nothing_is_called_not_even_the_completion() {
    let s = sim(&[("DIRECT_EVENTS", "invoke")]).await;
    let e = event();
    s.hold(&e);
    let err = s.invoke(&e).await.unwrap_err();
    assert_eq!(err.error_type, "MdeOffboard.Refused");
    assert!(
        err.message.contains("event_kind_disabled"),
        "{}",
        err.message
    );
    assert!(s.asg.calls().is_empty());
    assert_eq!(s.defender.count(Api::AnyDefender), 0);
}

#[tokio::test]
async fn defender_down_keeps_the_instance_for_the_retry() {
    let s = sim(&[]).await;
    let e = event();
    s.hold(&e);
    for _ in 0..20 {
        s.defender.fault(
            Api::Offboard,
            mde_testkit::Fault::Status {
                status: 503,
                code: "ServiceUnavailable".into(),
            },
        );
    }
    let err = s.invoke(&e).await.unwrap_err();
    assert_eq!(err.error_type, "MdeOffboard.Retryable");
    assert!(s.completions().is_empty(), "held for EventBridge's retry");
}
