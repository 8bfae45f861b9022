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
    let (status, b) = recovered(&h, &proxy).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
}

/// After an outage, the failure is remembered for a few seconds (so a
/// flood does not become a flood of GetSecretValue calls): the first
/// request after recovery is still refused without a fetch, and a later
/// one goes through.
async fn recovered(h: &Harness, proxy: &FlakyProxy) -> (u16, serde_json::Value) {
    let fetches = proxy.secret_fetches();
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 503, "inside the failure window: {b}");
    assert_eq!(
        proxy.secret_fetches(),
        fetches,
        "no fetch inside the window"
    );
    let until = Instant::now() + mde_offboard::domain::secret::SECRET_FAILURE_TTL * 3;
    loop {
        let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
        if status != 503 || Instant::now() > until {
            return (status, b);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    assert_eq!(recovered(&h, &proxy).await.0, 200);
}

#[tokio::test]
async fn a_secret_that_does_not_exist_is_a_500_whose_detail_stays_in_the_log() {
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
    // Contract v3 (and the security review's L7, I2): Secrets Manager's own
    // text stays in the log; the caller learns the kind of the problem.
    let message = b["error"]["message"].as_str().unwrap();
    assert!(!message.contains("ResourceNotFoundException"), "{message}");
    assert!(message.contains("log says why"), "{message}");
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

/// A second fake standing for wherever a redirect points: it must see nothing.
async fn elsewhere() -> mde_testkit::FakeDefender {
    mde_testkit::FakeDefender::start(mde_testkit::demo_machines()).await
}

#[tokio::test]
async fn a_login_redirect_is_not_followed_and_the_secret_never_leaves() {
    let h = Harness::new().await;
    let other = elsewhere().await;
    let target = format!(
        "{}/{}/oauth2/v2.0/token",
        other.url(),
        mde_testkit::defender::TENANT_ID
    );
    for status in [307, 308, 302] {
        h.fake.fault(Api::Login, Fault::redirect(status, &target));
        let (code, b, _) = h.offboard(&body(&[ids::WIN11])).await;
        assert_eq!(code, 500, "{b}");
        assert_eq!(b["error"]["code"], "login_redirected");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&status.to_string()) && msg.contains("MDE_LOGIN_URL"),
            "{msg}"
        );
    }
    assert!(
        other.calls().is_empty(),
        "the redirect target received {:?}",
        other.calls()
    );
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
    assert_eq!(h.offboard(&body(&[ids::WIN11])).await.0, 200);
}

#[tokio::test]
async fn a_defender_redirect_is_not_followed_with_the_bearer_token() {
    let h = Harness::new().await;
    let other = elsewhere().await;
    let target = format!("{}/api/machines/{}", other.url(), ids::WIN11);
    h.fake.fault(Api::GetMachine, Fault::redirect(307, &target));
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 200, "not curable by a retry: {b}");
    let r = &results(&b)[0];
    assert_eq!(r["status"], "failed");
    assert!(
        r["detail"].as_str().unwrap().contains("never followed"),
        "{r}"
    );
    assert!(other.calls().is_empty(), "{:?}", other.calls());
    assert!(h.fake.accepted_offboards().is_empty());
}

#[tokio::test]
async fn any_retry_after_is_read_safely_and_capped_at_an_hour() {
    for (value, want) in [
        ("1e20", "3600"),
        ("18446744073709551615", "3600"),
        ("99999999999999999999999", "3600"),
        ("Fri, 31 Dec 9999 23:59:59 GMT", "3600"),
        ("-1", "5"),
        ("NaN", "5"),
        ("inf", "5"),
        ("soon", "5"),
    ] {
        let h = Harness::new().await;
        h.fake.fault(Api::GetMachine, Fault::throttle_raw(value));
        let req = with_deadline(
            signed("POST", "/v1/offboard", &body(&[ids::WIN11]).to_string()),
            Duration::from_millis(2500),
        );
        let (status, b, resp) = h.send(req).await;
        assert_eq!(status, 503, "Retry-After {value:?}: {b}");
        assert_eq!(resp.headers()["retry-after"], want, "Retry-After {value:?}");
        assert_eq!(results(&b)[0]["status"], "failed");
        assert!(h.fake.accepted_offboards().is_empty());
    }
}

#[tokio::test]
async fn a_huge_expires_in_is_capped_and_reused() {
    for v in [json!(u64::MAX), json!("18446744073709551615"), json!(1e300)] {
        let h = Harness::new().await;
        h.fake.set_raw_expires_in(v.clone());
        for _ in 0..2 {
            let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
            assert_eq!(status, 200, "expires_in {v}: {b}");
        }
        assert_eq!(h.fake.count(Api::Login), 1, "expires_in {v}");
    }
}

#[tokio::test]
async fn a_negative_expires_in_is_used_once_and_never_cached() {
    let h = Harness::new().await;
    h.fake.set_raw_expires_in(json!(-1));
    let mut logins = 0;
    for _ in 0..2 {
        let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
        assert_eq!(status, 200, "{b}");
        // Read as 3599 before: the already-expired token was cached an hour.
        assert!(h.fake.count(Api::Login) > logins, "a new token per request");
        logins = h.fake.count(Api::Login);
    }
}
