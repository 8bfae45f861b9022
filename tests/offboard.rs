//! The generic route through the handler, against the fake Defender and
//! login APIs and moto's Secrets Manager.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mde_testkit::{Api, Fault};
use serde_json::{Value, json};

fn body(devices: &[&str]) -> Value {
    json!({"ticket": "INC0012345", "comment": "Laptop retired, disk wiped", "devices": devices})
}

#[tokio::test]
async fn offboards_a_machine_by_id() {
    let h = Harness::new().await;
    let (status, b, resp) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(b["ticket"], "INC0012345");
    assert_eq!(b["dry_run"], false);
    let r = &results(&b)[0];
    assert_eq!(r["status"], "offboard_requested");
    assert_eq!(r["device"], ids::WIN11);
    assert_eq!(r["machine_id"], ids::WIN11);
    let action = r["action_id"].as_str().unwrap();
    assert_eq!(h.fake.pending_action(ids::WIN11).as_deref(), Some(action));
    let sent = h.fake.accepted_offboards();
    assert_eq!(sent.len(), 1);
    let comment: Value = serde_json::from_str(&sent[0].body).unwrap();
    let comment = comment["Comment"].as_str().unwrap();
    assert!(
        comment.contains("INC0012345") && comment.contains("Laptop retired, disk wiped"),
        "{comment}"
    );
    // Given by id: one read and one offboard, nothing else.
    assert_eq!(h.fake.count(Api::AnyDefender), 2);
}

#[tokio::test]
async fn resolves_a_name_case_insensitively() {
    let h = Harness::new().await;
    let (status, b, _) = h.offboard(&body(&["LAPTOP-17.Contoso.com"])).await;
    assert_eq!(status, 200, "{b}");
    let r = &results(&b)[0];
    assert_eq!(r["status"], "offboard_requested");
    assert_eq!(r["device"], "LAPTOP-17.Contoso.com");
    assert_eq!(r["machine_id"], ids::WIN11);
    let list = h
        .fake
        .calls()
        .into_iter()
        .find(|c| c.api == Api::ListMachines)
        .unwrap();
    assert!(
        list.query
            .unwrap()
            .contains("computerDnsName%20eq%20%27LAPTOP-17.Contoso.com%27")
    );
}

#[tokio::test]
async fn a_name_with_a_quote_is_escaped_for_odata() {
    let h = Harness::new().await;
    h.fake.add_machine(mde_testkit::FakeMachine::new(
        "0123456789abcdef0123456789abcdef01234567",
        "o'brien-pc.contoso.com",
        "Windows11",
    ));
    let (_, b, _) = h.offboard(&body(&["o'brien-pc.contoso.com"])).await;
    assert_eq!(results(&b)[0]["status"], "offboard_requested", "{b}");
}

#[tokio::test]
async fn a_repeat_is_already_pending_and_sends_nothing_new() {
    let h = Harness::new().await;
    let (_, first, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(results(&first)[0]["status"], "offboard_requested");
    let (status, again, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 200);
    assert_eq!(results(&again)[0]["status"], "already_pending");
    assert_eq!(h.fake.accepted_offboards().len(), 1);
}

#[tokio::test]
async fn refusals_send_no_offboard() {
    let h = Harness::new().await;
    let (status, b, _) = h
        .offboard(&body(&[
            "kiosk-01.contoso.com",
            ids::LINUX,
            ids::MACOS,
            ids::PROTECTED,
            "nobody.contoso.com",
            "ffffffffffffffffffffffffffffffffffffffff",
        ]))
        .await;
    assert_eq!(status, 200, "{b}");
    let statuses: Vec<&str> = results(&b)
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "ambiguous",
            "unsupported_os",
            "unsupported_os",
            "protected",
            "not_found",
            "not_found"
        ]
    );
    let ambiguous = results(&b)[0]["detail"].as_str().unwrap();
    assert!(
        ambiguous.contains(ids::DUP_A) && ambiguous.contains(ids::DUP_B),
        "{ambiguous}"
    );
    assert!(results(&b)[3]["detail"].as_str().unwrap().contains("VIP"));
    assert_eq!(h.fake.count(Api::Offboard), 0);
}

#[tokio::test]
async fn defender_refusing_the_platform_is_unsupported_os() {
    // The policy lets Windows Server 2016 through (the unified agent can be
    // offboarded); Defender has the last word.
    let h = Harness::new().await;
    h.fake.add_machine(mde_testkit::FakeMachine::new(
        "1111111111111111111111111111111111111111",
        "old-srv.contoso.com",
        "WindowsServer2016",
    ));
    h.fake.fault(
        Api::Offboard,
        Fault::Status {
            status: 400,
            code: "OsPlatformNotSupported".into(),
        },
    );
    let (_, b, _) = h
        .offboard(&body(&["1111111111111111111111111111111111111111"]))
        .await;
    assert_eq!(results(&b)[0]["status"], "unsupported_os", "{b}");
}

#[tokio::test]
async fn dry_run_from_the_body_checks_everything_and_sends_nothing() {
    let h = Harness::new().await;
    let mut b = body(&[ids::WIN11, ids::LINUX]);
    b["dry_run"] = json!(true);
    let (status, out, _) = h.offboard(&b).await;
    assert_eq!(status, 200);
    assert_eq!(out["dry_run"], true);
    assert_eq!(results(&out)[0]["status"], "would_offboard");
    assert_eq!(results(&out)[1]["status"], "unsupported_os");
    assert_eq!(h.fake.count(Api::Offboard), 0);
    assert_eq!(h.fake.count(Api::GetMachine), 2);
}

#[tokio::test]
async fn dry_run_from_the_environment_cannot_be_turned_off_by_the_body() {
    let h = Harness::with(Options {
        env: vec![("DRY_RUN", "true".into())],
        ..Default::default()
    })
    .await;
    let mut b = body(&[ids::WIN11]);
    b["dry_run"] = json!(false);
    let (_, out, _) = h.offboard(&b).await;
    assert_eq!(out["dry_run"], true);
    assert_eq!(results(&out)[0]["status"], "would_offboard");
    assert_eq!(h.fake.count(Api::Offboard), 0);
}

#[tokio::test]
async fn both_documented_success_codes_are_accepted() {
    for code in [200, 201] {
        let h = Harness::new().await;
        h.fake.set_offboard_status(code);
        let (_, b, _) = h.offboard(&body(&[ids::WIN11])).await;
        assert_eq!(
            results(&b)[0]["status"],
            "offboard_requested",
            "HTTP {code}: {b}"
        );
    }
}

#[tokio::test]
async fn a_device_named_twice_is_offboarded_once_and_answered_twice() {
    let h = Harness::new().await;
    let upper = ids::WIN11.to_uppercase();
    let (_, b, _) = h.offboard(&body(&[ids::WIN11, &upper])).await;
    let r = results(&b);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["status"], "offboard_requested");
    assert_eq!(r[1]["status"], "offboard_requested");
    assert_eq!(r[1]["device"], upper.as_str());
    assert_eq!(h.fake.count(Api::Offboard), 1);
}

#[tokio::test]
async fn one_failing_device_does_not_stop_the_others() {
    let h = Harness::new().await;
    h.fake.fault(
        Api::GetMachine,
        Fault::Status {
            status: 403,
            code: "Forbidden".into(),
        },
    );
    let (status, b, _) = h.offboard(&body(&[ids::SERVER2022])).await;
    assert_eq!(status, 200);
    assert_eq!(results(&b)[0]["status"], "failed");
    assert!(
        results(&b)[0]["detail"]
            .as_str()
            .unwrap()
            .contains("Machine.Offboard")
    );

    h.fake.fault(
        Api::Offboard,
        Fault::Status {
            status: 400,
            code: "InvalidRequestBody".into(),
        },
    );
    let (status, b, _) = h.offboard(&body(&[ids::WIN11, ids::WIN10])).await;
    assert_eq!(status, 200, "a refusal a retry cannot cure is not a 503");
    let statuses: Vec<&str> = results(&b)
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains(&"failed") && statuses.contains(&"offboard_requested"),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_429_that_fits_before_the_deadline_is_waited_out() {
    let h = Harness::new().await;
    h.fake.fault(
        Api::Offboard,
        Fault::Throttle {
            retry_after_secs: 1,
        },
    );
    let started = Instant::now();
    let (status, b, _) = h
        .send(with_deadline(
            signed("POST", "/v1/offboard", &body(&[ids::WIN11]).to_string()),
            Duration::from_secs(20),
        ))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
    assert_eq!(h.fake.count(Api::Offboard), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
}

#[tokio::test]
async fn a_429_past_the_deadline_is_a_503_with_retry_after_and_the_retry_succeeds() {
    let h = Harness::new().await;
    h.fake.fault(
        Api::Offboard,
        Fault::Throttle {
            retry_after_secs: 120,
        },
    );
    let started = Instant::now();
    let req = with_deadline(
        signed(
            "POST",
            "/v1/offboard",
            &body(&[ids::WIN11, ids::LINUX]).to_string(),
        ),
        Duration::from_secs(5),
    );
    let (status, b, resp) = h.send(req).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered before the deadline"
    );
    assert_eq!(status, 503, "{b}");
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 119, "{retry_after}");
    assert_eq!(results(&b)[0]["status"], "failed");
    assert_eq!(results(&b)[1]["status"], "unsupported_os");
    assert_eq!(h.fake.count(Api::Offboard), 1);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let h = Harness::new().await;
    h.fake.fault(
        Api::Offboard,
        Fault::Status {
            status: 503,
            code: "ServiceUnavailable".into(),
        },
    );
    h.fake.fault(
        Api::Offboard,
        Fault::Status {
            status: 500,
            code: "InternalError".into(),
        },
    );
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
    assert_eq!(h.fake.count(Api::Offboard), 3);
}

#[tokio::test]
async fn a_server_error_storm_is_a_503_and_the_retry_is_safe() {
    let h = Harness::new().await;
    for _ in 0..4 {
        h.fake.fault(
            Api::Offboard,
            Fault::Status {
                status: 502,
                code: "BadGateway".into(),
            },
        );
    }
    let (status, b, resp) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 503, "{b}");
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(results(&b)[0]["status"], "failed");
    assert_eq!(h.fake.count(Api::Offboard), 4, "one try and three retries");
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 200);
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
}

#[tokio::test]
async fn a_slow_defender_is_cut_off_before_the_lambda_deadline() {
    let h = Harness::new().await;
    h.fake
        .fault(Api::GetMachine, Fault::Delay(Duration::from_secs(8)));
    let started = Instant::now();
    let req = with_deadline(
        signed("POST", "/v1/offboard", &body(&[ids::WIN11]).to_string()),
        Duration::from_secs(4),
    );
    let (status, b, _) = h.send(req).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{b}");
    assert_eq!(results(&b)[0]["status"], "failed");
}

#[tokio::test]
async fn a_stale_token_is_refreshed_once() {
    let h = Harness::new().await;
    h.offboard(&body(&[ids::WIN10])).await;
    assert_eq!(h.fake.count(Api::Login), 1);
    h.fake.revoke_tokens();
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
    assert_eq!(h.fake.count(Api::Login), 2);
}

#[tokio::test]
async fn a_401_with_a_fresh_token_is_a_named_failure() {
    let h = Harness::new().await;
    h.fake.fault(
        Api::GetMachine,
        Fault::Status {
            status: 401,
            code: "Unauthorized".into(),
        },
    );
    h.fake.fault(
        Api::GetMachine,
        Fault::Status {
            status: 401,
            code: "Unauthorized".into(),
        },
    );
    let (_, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(results(&b)[0]["status"], "failed");
    assert!(results(&b)[0]["detail"].as_str().unwrap().contains("401"));
    assert_eq!(h.fake.count(Api::Login), 2);
}

#[tokio::test]
async fn secret_and_token_are_reused_by_a_warm_instance() {
    let h = Harness::new().await;
    h.offboard(&body(&[ids::WIN11])).await;
    // Deleting the secret proves the second request does not fetch it.
    sm_client()
        .delete_secret()
        .secret_id(&h.secret_name)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let (status, b, _) = h.offboard(&body(&[ids::WIN10])).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(h.fake.count(Api::Login), 1);
}

#[tokio::test]
async fn an_expired_secret_cache_fetches_again() {
    let h = Harness::with(Options {
        env: vec![("SECRET_TTL_SECONDS", "1".into())],
        ..Default::default()
    })
    .await;
    h.offboard(&body(&[ids::WIN11])).await;
    sm_client()
        .delete_secret()
        .secret_id(&h.secret_name)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the 1 s TTL run out
    let (status, b, _) = h.offboard(&body(&[ids::WIN10])).await;
    assert_eq!(status, 500, "{b}");
    assert_eq!(b["error"]["code"], "secret_refused");
}

#[tokio::test]
async fn a_malformed_secret_is_bad_secret_naming_the_key() {
    let h = Harness::with(Options {
        secret: json!({"tenant_id": mde_testkit::defender::TENANT_ID, "client_id": "abc",
            "webhook_secrets": {"generic": mde_testkit::GENERIC_WEBHOOK_SECRET}})
        .to_string(),
        ..Default::default()
    })
    .await;
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 500, "{b}");
    assert_eq!(b["error"]["code"], "bad_secret");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(msg.contains("client_secret"), "{msg}");
    assert!(!msg.contains("whsec_"), "{msg}");
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

#[tokio::test]
async fn refused_client_credentials_are_bad_credentials() {
    let mut secret: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    secret["client_secret"] = json!("an-old-rotated-secret");
    let h = Harness::with(Options {
        secret: secret.to_string(),
        ..Default::default()
    })
    .await;
    let (status, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 500, "{b}");
    assert_eq!(b["error"]["code"], "bad_credentials");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("invalid_client") && msg.contains("AADSTS7000215"),
        "{msg}"
    );
    assert!(!msg.contains("an-old-rotated-secret"));
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

#[tokio::test]
async fn login_down_is_a_503_and_the_next_call_recovers() {
    let h = Harness::new().await;
    h.fake.fault(
        Api::Login,
        Fault::Status {
            status: 503,
            code: "temporarily_unavailable".into(),
        },
    );
    let (status, b, resp) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 503, "{b}");
    assert_eq!(b["error"]["code"], "login_unavailable");
    assert!(resp.headers().contains_key("retry-after"));
    let (status, _, _) = h.offboard(&body(&[ids::WIN11])).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_action_route_reports_defender_status() {
    let h = Harness::new().await;
    let (_, b, _) = h.offboard(&body(&[ids::WIN11])).await;
    let action = results(&b)[0]["action_id"].as_str().unwrap().to_string();
    let (status, a, _) = h
        .send(signed("GET", &format!("/v1/actions/{action}"), ""))
        .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["action_id"], action.as_str());
    assert_eq!(a["machine_id"], ids::WIN11);
    assert_eq!(a["type"], "Offboard");
    assert_eq!(a["status"], "Pending");
    assert!(a["last_update"].is_string());
    h.fake.set_action_status(&action, "Succeeded");
    let (_, a, _) = h
        .send(signed("GET", &format!("/v1/actions/{action}"), ""))
        .await;
    assert_eq!(a["status"], "Succeeded");

    let (status, e, _) = h
        .send(signed(
            "GET",
            "/v1/actions/9e5bc9d7-0000-4ab7-9782-d50480024a4e",
            "",
        ))
        .await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["code"], "action_not_found");
    let unsigned = request("GET", &format!("/v1/actions/{action}"), &[], "");
    assert_eq!(h.send(unsigned).await.0, 401);
}

#[tokio::test]
async fn a_replayed_delivery_is_answered_from_memory() {
    let h = Harness::new().await;
    let b = body(&[ids::WIN11]).to_string();
    let req = || {
        signed_with(
            "POST",
            "/v1/offboard",
            &b,
            mde_testkit::GENERIC_WEBHOOK_SECRET,
            now(),
        )
    };
    let first = req();
    let headers = first.headers().clone();
    let (status, answer, _) = h.send(first).await;
    assert_eq!(status, 200);
    let calls = h.fake.count(Api::AnyDefender);
    // The same delivery again: same webhook-id, timestamp, signature, body.
    let mut again = request("POST", "/v1/offboard", &[], &b);
    *again.headers_mut() = headers.clone();
    let (status, replayed, resp) = h.send(again).await;
    assert_eq!(status, 200);
    assert_eq!(replayed, answer, "the first answer, not already_pending");
    assert_eq!(resp.headers()["x-mde-replay"], "true");
    assert_eq!(
        h.fake.count(Api::AnyDefender),
        calls,
        "Defender was not called again"
    );
    // A new delivery of the same body is a new request.
    let (_, fresh, _) = h.send(req()).await;
    assert_eq!(results(&fresh)[0]["status"], "already_pending");
}

#[tokio::test]
async fn a_retry_after_a_503_is_processed_again() {
    let h = Harness::new().await;
    for _ in 0..4 {
        h.fake.fault(
            Api::Offboard,
            Fault::Status {
                status: 503,
                code: "ServiceUnavailable".into(),
            },
        );
    }
    let b = body(&[ids::WIN11]).to_string();
    let first = signed("POST", "/v1/offboard", &b);
    let headers = first.headers().clone();
    assert_eq!(h.send(first).await.0, 503);
    let mut retry = request("POST", "/v1/offboard", &[], &b);
    *retry.headers_mut() = headers;
    let (status, answer, resp) = h.send(retry).await;
    assert_eq!(status, 200, "{answer}");
    assert!(!resp.headers().contains_key("x-mde-replay"));
    assert_eq!(results(&answer)[0]["status"], "offboard_requested");
}

#[tokio::test]
async fn a_misspelt_dry_run_is_refused_and_nothing_is_called() {
    let h = Harness::new().await;
    for key in ["dryRun", "dry-run", "DryRun", "dry_run ", "simulate"] {
        let mut b = body(&[ids::WIN11]);
        b[key] = json!(true);
        let (status, resp, _) = h.offboard(&b).await;
        assert_eq!(status, 400, "{key}: {resp}");
        assert_eq!(resp["error"]["code"], "unknown_field");
        assert!(
            resp["error"]["message"].as_str().unwrap().contains(key),
            "{resp}"
        );
    }
    assert_eq!(h.fake.count(Api::AnyDefender) + h.fake.count(Api::Login), 0);
}

#[tokio::test]
async fn a_field_given_twice_is_refused_whichever_copy_would_win() {
    let h = Harness::new().await;
    for raw in [
        format!(
            r#"{{"ticket":"INC1","comment":"c","devices":["{}"],"dry_run":true,"dry_run":false}}"#,
            ids::WIN11
        ),
        format!(
            r#"{{"ticket":"INC1","comment":"c","devices":["{}"],"devices":["{}"]}}"#,
            ids::WIN10,
            ids::WIN11
        ),
    ] {
        let (status, resp, _) = h.send(signed("POST", "/v1/offboard", &raw)).await;
        assert_eq!(status, 400, "{raw}: {resp}");
        assert_eq!(resp["error"]["code"], "invalid_json");
        let msg = resp["error"]["message"].as_str().unwrap();
        assert!(msg.contains("dry_run") || msg.contains("devices"), "{msg}");
        assert!(msg.contains("twice"), "{msg}");
    }
    assert_eq!(h.fake.count(Api::AnyDefender) + h.fake.count(Api::Login), 0);
}

#[tokio::test]
async fn invisible_formatting_in_a_value_is_422_naming_the_field() {
    let h = Harness::new().await;
    let cases = [
        ("ticket", json!("INC\u{202E}1"), "ticket"),
        ("comment", json!("retired\u{200B}"), "comment"),
        (
            "devices",
            json!(["laptop-17\u{2066}.contoso.com"]),
            "devices[0]",
        ),
        ("comment", json!("\u{FEFF}wiped"), "comment"),
    ];
    for (key, value, field) in cases {
        let mut b = body(&[ids::WIN11]);
        b[key] = value;
        let (status, resp, _) = h.offboard(&b).await;
        assert_eq!(status, 422, "{key}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("'{field}'")),
            "{resp}"
        );
    }
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

#[tokio::test]
async fn a_callback_url_must_be_https_on_a_listed_host() {
    let h = Harness::new().await;
    let mut b = body(&[ids::WIN11]);
    b["callback_url"] = json!("https://hooks.example.com/mde");
    let (status, resp, _) = h.offboard(&b).await;
    assert_eq!(status, 422, "no CALLBACK_HOSTS: {resp}");
    assert_eq!(resp["error"]["code"], "callback_not_allowed");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("callback_url")
    );

    let h = Harness::with(Options {
        env: vec![("CALLBACK_HOSTS", "hooks.example.com".into())],
        ..Default::default()
    })
    .await;
    for bad in [
        "http://hooks.example.com/mde",
        "https://other.example.com/mde",
    ] {
        b["callback_url"] = json!(bad);
        let (status, resp, _) = h.offboard(&b).await;
        assert_eq!(status, 422, "{bad}: {resp}");
        assert_eq!(resp["error"]["code"], "callback_not_allowed");
    }
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
    // A callback on a listed host, where nothing can track the offboard (no
    // ledger, no queue): contract v3 refuses it rather than promise it.
    b["callback_url"] = json!("https://hooks.example.com/mde");
    let (status, resp, _) = h.offboard(&b).await;
    assert_eq!(status, 422, "{resp}");
    assert_eq!(resp["error"]["code"], "tracking_unavailable");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("LEDGER_TABLE")
    );
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

#[tokio::test]
async fn supported_platforms_lets_linux_and_macos_through_only_when_listed() {
    let devices = [ids::LINUX, ids::MACOS, ids::WIN11];
    let h = Harness::new().await;
    let (status, b, _) = h.offboard(&body(&devices)).await;
    assert_eq!(status, 200, "{b}");
    let got: Vec<&str> = results(&b)
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ["unsupported_os", "unsupported_os", "offboard_requested"]
    );
    assert!(
        results(&b)[0]["detail"]
            .as_str()
            .unwrap()
            .contains("SUPPORTED_PLATFORMS")
    );

    let h = Harness::with(Options {
        env: vec![("SUPPORTED_PLATFORMS", "windows,macos,linux".into())],
        ..Default::default()
    })
    .await;
    let (status, b, _) = h.offboard(&body(&devices)).await;
    assert_eq!(status, 200, "{b}");
    let got: Vec<&str> = results(&b)
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "offboard_requested",
            "offboard_requested",
            "offboard_requested"
        ]
    );
}

/// `NAME_MATCH=host` (contract, "The generic body"): a short host name, as
/// ServiceNow and many SOAR tools hold a CI, matches `<name>.<any domain>`;
/// more than one match is ambiguous; names with a dot stay exact.
#[tokio::test]
async fn short_host_names_match_with_name_match_host() {
    let devices = ["LAPTOP-17", "kiosk-01", "desktop-04.contoso", "nosuch"];
    let exact = Harness::new().await;
    let (status, b, _) = exact.offboard(&body(&devices)).await;
    assert_eq!(status, 200, "{b}");
    let statuses = |b: &Value| -> Vec<String> {
        b["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        statuses(&b),
        ["not_found", "not_found", "not_found", "not_found"]
    );

    let host = Harness::with(Options {
        env: vec![("NAME_MATCH", "host".into())],
        ..Default::default()
    })
    .await;
    let (status, b, _) = host.offboard(&body(&devices)).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        statuses(&b),
        ["offboard_requested", "ambiguous", "not_found", "not_found"],
        "{b}"
    );
    assert_eq!(b["results"][0]["machine_id"], ids::WIN11);
    assert_eq!(host.fake.count(Api::Offboard), 1);
    // The query Defender documents: `startswith` beside the exact name.
    let asked = host
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.api == Api::ListMachines)
        .filter_map(|c| c.query)
        .collect::<Vec<_>>();
    assert!(asked.iter().any(|p| p.contains("startswith")), "{asked:?}");
}
