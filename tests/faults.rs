//! The fault matrix: each dependency failing in each way it can. For every
//! case: the status, the body, what reached Defender, and that the next
//! request succeeds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mde_testkit::proxy::{FlakyProxy, Mode};
use mde_testkit::{Api, Fault, moto};
use serde_json::{Value, json};

fn body(devices: &[&str]) -> Value {
    json!({"ticket": "CHG0042", "comment": "Decommissioned", "devices": devices})
}

async fn through_proxy() -> (Harness, FlakyProxy) {
    let target = moto::moto()
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = FlakyProxy::start(target).await;
    let h = Harness::with(Options {
        secrets_endpoint: Some(proxy.url()),
        ..Default::default()
    })
    .await;
    (h, proxy)
}

#[tokio::test]
async fn secrets_manager_answering_503_is_a_503_and_recovers() {
    let (h, proxy) = through_proxy().await;
    proxy.set(Mode::Answer503);
    let (status, b, resp) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 503, "{b}");
    assert_eq!(b["error"]["code"], "secret_unavailable");
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(h.fake.count(Api::AnyDefender) + h.fake.count(Api::Login), 0);
    proxy.set(Mode::Up);
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
}

#[tokio::test]
async fn secrets_manager_unreachable_is_a_503_and_recovers() {
    let (h, proxy) = through_proxy().await;
    proxy.set(Mode::Drop);
    let started = Instant::now();
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 503, "{b}");
    assert_eq!(b["error"]["code"], "secret_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the SDK's retries stay inside a request"
    );
    proxy.set(Mode::Up);
    assert_eq!(h.offboard(&body(&[ids::WIN11])).await.0, 200);
}

#[tokio::test]
async fn a_secret_that_does_not_exist_is_a_500_naming_the_refusal() {
    let h = Harness::new().await;
    sm_client()
        .delete_secret()
        .secret_id(&h.secret_name)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 500, "{b}");
    assert_eq!(b["error"]["code"], "secret_refused");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ResourceNotFoundException")
    );
}

#[tokio::test]
async fn a_403_missing_role_is_named_and_not_retried() {
    let h = Harness::new().await;
    h.fake.fault(
        Api::Offboard,
        Fault::Status {
            status: 403,
            code: "Forbidden".into(),
        },
    );
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(
        status, 200,
        "a permission problem is not cured by a retry: {b}"
    );
    let detail = results(&b)[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("403") && detail.contains("Machine.Offboard"),
        "{detail}"
    );
    assert_eq!(h.fake.count(Api::Offboard), 1);
    assert_eq!(
        results(&h.offboard(&body(&[ids::WIN11])).await.1)[0]["status"],
        "offboard_requested"
    );
}

#[tokio::test]
async fn a_429_storm_holds_the_whole_instance_back_then_clears() {
    let h = Harness::new().await;
    h.fake.fault(
        Api::GetMachine,
        Fault::Throttle {
            retry_after_secs: 1,
        },
    );
    // Too short a deadline to wait 1 s: 503 with Retry-After.
    let req = with_deadline(
        signed("POST", "/v1/offboard", &body(&[ids::WIN11]).to_string()),
        Duration::from_millis(2000),
    );
    let (status, b, resp) = h.send(req).await;
    assert_eq!(status, 503, "{b}");
    assert_eq!(resp.headers()["retry-after"], "1");
    // Inside the Retry-After window the instance does not call Defender at all.
    let calls = h.fake.count(Api::AnyDefender);
    let req = with_deadline(
        signed("POST", "/v1/offboard", &body(&[ids::WIN10]).to_string()),
        Duration::from_millis(2000),
    );
    let (status, _, _) = h.send(req).await;
    assert_eq!(status, 503);
    assert_eq!(
        h.fake.count(Api::AnyDefender),
        calls,
        "held back by Retry-After"
    );
    // With time to wait, the next request waits out the window and succeeds.
    let (status, b, _) = h.offboard(&body(&[ids::WIN11, ids::WIN10])).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
}

#[tokio::test]
async fn a_retry_after_partial_success_never_offboards_twice() {
    let h = Harness::new().await;
    // The second device's offboard fails four times: 1 try + 3 retries.
    for _ in 0..4 {
        h.fake.fault_on(
            Api::Offboard,
            ids::SERVER2022,
            Fault::Status {
                status: 500,
                code: "InternalError".into(),
            },
        );
    }
    let (status, b, _) = h.offboard(&body(&[ids::WIN11, ids::SERVER2022])).await;
    assert_eq!(status, 503, "{b}");
    assert_eq!(h.fake.accepted_offboards().len(), 1);
    // The sender retries the whole request: done devices come back
    // already_pending, the rest are offboarded, nothing twice.
    let (status, b, _) = h.offboard(&body(&[ids::WIN11, ids::SERVER2022])).await;
    assert_eq!(status, 200, "{b}");
    let statuses: Vec<&str> = results(&b)
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["already_pending", "offboard_requested"]);
    let accepted: Vec<String> = h
        .fake
        .accepted_offboards()
        .iter()
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(accepted.len(), 2);
    assert_ne!(accepted[0], accepted[1], "one offboard per machine");
}

#[tokio::test]
async fn login_rejecting_the_scope_is_bad_credentials() {
    let h = Harness::with(Options {
        env: vec![(
            "MDE_SCOPE",
            "https://api-eu.securitycenter.microsoft.com/.default".into(),
        )],
        ..Default::default()
    })
    .await;
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 500, "{b}");
    assert_eq!(b["error"]["code"], "bad_credentials");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid_scope")
    );
}
