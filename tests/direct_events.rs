//! Events that do not come through HTTP, through the built `bootstrap`
//! under a Runtime API endpoint: EventBridge events, direct invocations
//! (Step Functions, `aws lambda invoke`), SQS batches, and shapes that are
//! none of these. The answer is the JSON itself; a failure is an invocation
//! error whose `errorType` tells the caller whether to retry.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use mde_testkit::{Api, FakeDefender, FakeRuntime, Fault, Outcome, demo_machines, moto};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn event_file(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/events/{name}")).expect("events/ file");
    serde_json::from_str(&text).expect("events/ file is JSON")
}

async fn start(fake: &FakeDefender, extra: &[(&str, &str)]) -> (FakeRuntime, Child) {
    let runtime = FakeRuntime::start().await;
    let secret = put_secret(&mde_testkit::secret_json()).await;
    let mut c = Command::new(env!("CARGO_BIN_EXE_bootstrap"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(runtime.lambda_env())
        .env("SECRET_ID", &secret)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto::moto().endpoint)
        .env("MDE_API_URL", fake.url())
        .env("MDE_LOGIN_URL", fake.url())
        // Both doors open unless a test says otherwise.
        .env("DIRECT_EVENTS", "eventbridge,invoke")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = c.spawn().expect("start bootstrap");
    (runtime, child)
}

async fn invoke(runtime: &FakeRuntime, event: Value) -> Outcome {
    runtime
        .invoke(event, Duration::from_secs(20))
        .await
        .expect("the runtime answered")
}

fn answer(o: Outcome) -> Value {
    match o {
        Outcome::Response(v) => v,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn error(o: Outcome) -> (String, Value) {
    match o {
        Outcome::Error(v) => {
            let kind = v["errorType"].as_str().unwrap_or_default().to_string();
            let body = serde_json::from_str(v["errorMessage"].as_str().unwrap_or("null"))
                .unwrap_or(Value::Null);
            (kind, body)
        }
        other => panic!("expected an invocation error, got {other:?}"),
    }
}

fn statuses(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|r| r["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn an_eventbridge_event_is_read_as_a_generic_body_and_answered_as_json() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (runtime, _child) = start(&fake, &[]).await;

    let event = event_file("eventbridge.json");
    let first = answer(invoke(&runtime, event.clone()).await);
    assert_eq!(first["ticket"], "INC0012345");
    assert_eq!(statuses(&first), ["offboard_requested", "ambiguous"]);
    assert_eq!(fake.accepted_offboards().len(), 1);

    // EventBridge retries deliver the same event id: answered again, no
    // second Defender round.
    let calls = fake.calls().len();
    let again = answer(invoke(&runtime, event).await);
    assert_eq!(again, first);
    assert_eq!(fake.calls().len(), calls, "a replay reached Defender");
}

#[tokio::test]
async fn an_eventbridge_event_claimed_by_a_source_is_mapped_by_its_pointers() {
    let fake = FakeDefender::start(demo_machines()).await;
    // A real Auto Scaling lifecycle event, with the device added in a field
    // of its detail as a user's rule would see it.
    let text = std::fs::read_to_string(format!(
        "{ROOT}/../shared/realworld/eventbridge/aws-lambda-go.autoscaling-event-terminate-action.json"
    ))
    .expect("the real EventBridge event");
    let mut event: Value = serde_json::from_str(&text).unwrap();
    let sources = json!({"sources": {"asg": {
        "eventbridge": {"source": ["aws.autoscaling"], "detail-type": [event["detail-type"].clone()]},
        "ticket": "/detail/EC2InstanceId",
        "devices": ["/detail/mde_devices"],
        "comment": "Instance {ticket} terminated"
    }}})
    .to_string();
    let (runtime, _child) = start(&fake, &[("SOURCES", &sources)]).await;

    // As published, the event names no device: ignored, nothing called.
    let ignored = answer(invoke(&runtime, event.clone()).await);
    assert_eq!(ignored["status"], "ignored", "{ignored}");
    assert_eq!(fake.count(Api::Offboard), 0);

    event["detail"]["mde_devices"] = json!([ids::WIN11]);
    event["id"] = json!("a-new-event-id");
    let acted = answer(invoke(&runtime, event.clone()).await);
    assert_eq!(statuses(&acted), ["offboard_requested"], "{acted}");
    let sent = fake.accepted_offboards();
    let sent_body: Value = serde_json::from_str(&sent[0].body).unwrap();
    let comment = sent_body["Comment"].as_str().unwrap().to_string();
    let instance = event["detail"]["EC2InstanceId"].as_str().unwrap();
    assert!(comment.contains(instance), "{comment}");
}

#[tokio::test]
async fn a_direct_invocation_is_a_generic_body_and_its_errors_have_types() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (runtime, _child) = start(&fake, &[]).await;

    let ok = answer(invoke(&runtime, event_file("invoke.json")).await);
    assert_eq!(statuses(&ok), ["offboard_requested", "ambiguous"]);

    // A Step Functions task with a typo: refused, typed, nothing called.
    let calls = fake.calls().len();
    let (kind, body) = error(
        invoke(
            &runtime,
            json!({"ticket": "INC1", "comment": "x", "devices": []}),
        )
        .await,
    );
    assert_eq!(kind, "MdeOffboard.InvalidRequest");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert_eq!(fake.calls().len(), calls);

    // Defender keeps failing: the invocation fails as retryable, with the
    // per-device answer as its message.
    for _ in 0..20 {
        fake.fault(
            Api::Offboard,
            Fault::Status {
                status: 503,
                code: "ServiceUnavailable".into(),
            },
        );
    }
    let (kind, body) = error(
        invoke(
            &runtime,
            json!({"ticket": "INC2", "comment": "x", "devices": [ids::WIN10]}),
        )
        .await,
    );
    assert_eq!(kind, "MdeOffboard.Retryable");
    assert_eq!(statuses(&body), ["failed"]);
}

#[tokio::test]
async fn a_secret_that_cannot_be_read_is_a_configuration_error() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (runtime, _child) = start(&fake, &[("SECRET_ID", "no-such-secret")]).await;
    let (kind, body) = error(invoke(&runtime, event_file("invoke.json")).await);
    assert_eq!(kind, "MdeOffboard.ConfigError");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert_eq!(fake.calls().len(), 0);
}

#[tokio::test]
async fn events_of_unknown_shape_fail_cleanly_and_the_function_keeps_serving() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (runtime, mut child) = start(&fake, &[]).await;
    for event in [
        json!({}),
        json!([1, 2, 3]),
        json!("text"),
        json!({"Records": [{"eventSource": "aws:sns", "Sns": {}}]}),
        json!({"detail-type": "x", "source": "y"}),
        // HTTP-looking shapes lambda_http cannot turn into a request.
        json!({"requestContext": {"http": {"method": "POST"}}, "rawPath": 7}),
        json!({"httpMethod": "NOT A METHOD", "path": "/v1/offboard", "requestContext": {}, "headers": {"bad header": "x"}}),
    ] {
        let (kind, body) = error(invoke(&runtime, event.clone()).await);
        assert_eq!(kind, "MdeOffboard.UnknownEvent", "{event}");
        assert_eq!(body["error"]["code"], "unknown_event", "{event}");
    }
    // The warm-up may have fetched its token by now; no Defender call.
    assert_eq!(fake.count(Api::AnyDefender), 0);
    assert!(child.try_wait().unwrap().is_none(), "the function died");
    // Still serving.
    let ok = answer(invoke(&runtime, event_file("invoke.json")).await);
    assert_eq!(statuses(&ok), ["offboard_requested", "ambiguous"]);
}

#[tokio::test]
async fn an_sqs_batch_is_served_by_the_same_function_without_mde_mode() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (runtime, _child) = start(&fake, &[]).await;
    // A message written by hand, not by the function: never acted on, and
    // handed back so that it ends in the dead-letter queue.
    let event = json!({"Records": [{
        "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
        "body": json!({"ticket": "INC1", "comment": "x", "device": ids::WIN11, "dry_run": false, "source": "jira"}).to_string(),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183", "SenderId": "AIDAIENQZJOLO23YVJ4VO", "ApproximateFirstReceiveTimestamp": "1545082649185"},
        "messageAttributes": {},
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:mde-offboard",
        "awsRegion": "us-east-1"
    }]});
    let out = answer(invoke(&runtime, event).await);
    assert_eq!(
        out["batchItemFailures"],
        json!([{"itemIdentifier": "059f36b4-87a3-44ab-83d2-661975830a7d"}])
    );
    assert_eq!(fake.count(Api::Offboard), 0);
}

/// The doors (contract, "Doors"): the queue worker serves SQS batches
/// only, and the HTTP function serves EventBridge events and direct
/// invocations only where `DIRECT_EVENTS` names them. A refused event fails
/// `MdeOffboard.Refused`, and nothing is called.
#[tokio::test]
async fn the_worker_serves_sqs_batches_only() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (runtime, mut child) = start(&fake, &[("MDE_MODE", "worker")]).await;
    let (http, _) =
        signed_lambda_event("/v1/offboard", &event_file("generic.body.json").to_string());
    for event in [
        event_file("invoke.json"),
        event_file("eventbridge.json"),
        http,
    ] {
        let (kind, body) = error(invoke(&runtime, event.clone()).await);
        assert_eq!(kind, "MdeOffboard.Refused", "{event}");
        assert_eq!(body["error"]["code"], "not_a_worker_event", "{event}");
    }
    assert!(child.try_wait().unwrap().is_none(), "the function died");
    assert_eq!(fake.count(Api::AnyDefender), 0, "nothing called");
    // An SQS batch still reaches the worker.
    let sqs = json!({"Records": [{"messageId": "m1", "body": "{}", "eventSource": "aws:sqs"}]});
    let out = answer(invoke(&runtime, sqs).await);
    assert_eq!(out["batchItemFailures"], json!([{"itemIdentifier": "m1"}]));
}

#[tokio::test]
async fn direct_events_are_refused_unless_direct_events_names_them() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (runtime, _child) = start(&fake, &[("DIRECT_EVENTS", "")]).await;
    for event in [event_file("invoke.json"), event_file("eventbridge.json")] {
        let (kind, body) = error(invoke(&runtime, event.clone()).await);
        assert_eq!(kind, "MdeOffboard.Refused", "{event}");
        assert_eq!(body["error"]["code"], "event_kind_disabled", "{event}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("DIRECT_EVENTS"), "{message}");
    }
    assert_eq!(fake.count(Api::AnyDefender), 0, "nothing called");

    // One door open: that kind is served, the other still refused.
    let fake = FakeDefender::start(demo_machines()).await;
    let (runtime, _child) = start(&fake, &[("DIRECT_EVENTS", "eventbridge")]).await;
    let (kind, _) = error(invoke(&runtime, event_file("invoke.json")).await);
    assert_eq!(kind, "MdeOffboard.Refused");
    let ok = answer(invoke(&runtime, event_file("eventbridge.json")).await);
    assert!(!statuses(&ok).is_empty(), "{ok}");
}

/// A direct invocation and an EventBridge event's `detail`, read as a
/// generic body, are as strict as over HTTP: a field given twice or a field
/// the body does not define is refused, and nothing is called.
#[tokio::test]
async fn direct_generic_bodies_are_strict() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (runtime, _child) = start(&fake, &[]).await;
    let twice = format!(
        r#"{{"ticket": "INC1", "comment": "retired", "devices": ["{}"], "dry_run": true, "dry_run": false}}"#,
        ids::WIN11
    );
    let unknown = format!(
        r#"{{"ticket": "INC1", "comment": "retired", "devices": ["{}"], "dryRun": true}}"#,
        ids::WIN11
    );
    let bridged = format!(
        r#"{{"version": "0", "id": "e-dup-1", "detail-type": "Offboard Devices", "source": "mde-offboard",
            "account": "123456789012", "time": "2026-11-25T09:00:00Z", "region": "us-east-1", "resources": [],
            "detail": {}}}"#,
        twice
    );
    for (payload, code) in [
        (twice.as_str(), "invalid_json"),
        (unknown.as_str(), "unknown_field"),
        (bridged.as_str(), "invalid_json"),
    ] {
        let out = runtime
            .invoke_raw(payload, Duration::from_secs(20))
            .await
            .expect("the runtime answered");
        let (kind, body) = error(out);
        assert_eq!(kind, "MdeOffboard.InvalidRequest", "{payload}");
        assert_eq!(body["error"]["code"], code, "{payload}");
    }
    assert_eq!(fake.count(Api::Offboard), 0, "nothing offboarded");
}

/// An Auto Scaling termination hook's event through the built binary: the
/// SDK client made from the environment (`AWS_ENDPOINT_URL_AUTO_SCALING`),
/// the machine found by its tag, offboarded, and, without a queue to wait
/// on, the lifecycle action completed with CONTINUE at once. Without
/// `EC2_DEVICE_MATCH` the action is completed all the same, then the
/// invocation fails as a configuration error naming it.
#[tokio::test]
async fn an_auto_scaling_lifecycle_event_offboards_its_instance_and_lets_it_go() {
    let text = std::fs::read_to_string(format!(
        "{ROOT}/../shared/realworld/eventbridge/aws-lambda-go.autoscaling-event-terminate-action.json"
    ))
    .expect("the real EventBridge event");
    let event: Value = serde_json::from_str(&text).unwrap();
    let d = event["detail"].clone();
    let (group, hook, instance, token) = (
        d["AutoScalingGroupName"].as_str().unwrap(),
        d["LifecycleHookName"].as_str().unwrap(),
        d["EC2InstanceId"].as_str().unwrap(),
        d["LifecycleActionToken"].as_str().unwrap(),
    );
    let mut machines = demo_machines();
    machines.push(
        mde_testkit::FakeMachine::new(ids::DUP_A, "EC2AMAZ-4F2K9QX", "WindowsServer2022")
            .tagged(instance),
    );
    machines.retain(|m| m.id != ids::DUP_B);
    let fake = FakeDefender::start(machines).await;
    let asg = mde_testkit::FakeAutoScaling::start().await;
    asg.hold(group, hook, instance, token);
    let (runtime, _child) = start(
        &fake,
        &[
            ("AWS_ENDPOINT_URL_AUTO_SCALING", &asg.url()),
            ("EC2_DEVICE_MATCH", "tag"),
        ],
    )
    .await;
    let ok = answer(invoke(&runtime, event.clone()).await);
    assert_eq!(statuses(&ok), ["offboard_requested"], "{ok}");
    assert_eq!(ok["ticket"], format!("{group}/{instance}"));
    assert_eq!(ok["lifecycle"], "completed");
    assert_eq!(fake.accepted_offboards().len(), 1);
    let completed = asg.calls_of("CompleteLifecycleAction");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].status, 200);
    assert_eq!(completed[0].form["LifecycleActionResult"], "CONTINUE");
    assert_eq!(
        asg.action(token).unwrap().result.as_deref(),
        Some("CONTINUE")
    );

    // EC2_DEVICE_MATCH unset: let go first, then a configuration error.
    let fake = FakeDefender::start(demo_machines()).await;
    let asg = mde_testkit::FakeAutoScaling::start().await;
    asg.hold(group, hook, instance, token);
    let (runtime, _child) = start(&fake, &[("AWS_ENDPOINT_URL_AUTO_SCALING", &asg.url())]).await;
    let (kind, body) = error(invoke(&runtime, event).await);
    assert_eq!(kind, "MdeOffboard.ConfigError");
    assert_eq!(body["error"]["code"], "not_configured");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("EC2_DEVICE_MATCH"),
        "{body}"
    );
    assert_eq!(
        asg.action(token).unwrap().result.as_deref(),
        Some("CONTINUE")
    );
    assert_eq!(fake.accepted_offboards().len(), 0);
}
