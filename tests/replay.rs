//! Replays and the replay key (contract, "Standard Webhooks" and "The
//! ledger"): a signed `webhook-id` is used once per source on every route.
//! The same id with the same route and body is answered again
//! (`x-mde-replay: true`); with another route or body it is 409
//! `delivery_id_reused`, nothing is called, and nothing of the first answer
//! is shown. Answers are kept whatever their size, so a large queue-mode
//! delivery is answered from the ledger and never queued twice.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::*;
use futures_util::future::BoxFuture;
use lambda_http::Request;
use lambda_http::http::HeaderMap;
use mde_offboard::App;
use mde_offboard::adapters::dynamodb::DynamoLedger;
use mde_offboard::adapters::memory::ledger::InMemoryLedger;
use mde_offboard::domain::queue::{Queue, QueueError};
use mde_testkit::ledger_table::{ledger_table_from_template, moto_dynamodb};
use mde_testkit::{Api, GENERIC_WEBHOOK_SECRET};
use serde_json::{Value, json};

/// `req`'s exact headers (id, timestamp, signature) on another request:
/// what someone who captured a signed call can send.
fn replayed_as(headers: &HeaderMap, method: &str, path: &str, body: &str) -> Request {
    let mut r = request(method, path, &[], body);
    *r.headers_mut() = headers.clone();
    r
}

fn offboard_body(devices: &[&str]) -> String {
    json!({"ticket": "INC-51", "comment": "retired", "devices": devices}).to_string()
}

fn cancel_body() -> String {
    json!({"comment": "mistaken"}).to_string()
}

fn reused(status: u16, body: &Value) -> bool {
    status == 409 && body["error"]["code"] == "delivery_id_reused"
}

/// Two instances of the function sharing one ledger (each with its own
/// memory), and one fake Defender.
async fn two_instances() -> (Harness, App) {
    let ledger = Arc::new(InMemoryLedger::new());
    let h = Harness::new().await;
    let env = [
        ("SECRET_ID", h.secret_name.clone()),
        ("MDE_API_URL", h.fake.url()),
        ("MDE_LOGIN_URL", h.fake.url()),
    ];
    let config = mde_offboard::config::Config::from_lookup(|k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    let second = mde_offboard::init::Wiring::new(
        config,
        Arc::new(
            mde_offboard::adapters::secrets_manager::SecretsManagerSource::new(
                sm_client(),
                h.secret_name.clone(),
            ),
        ),
    )
    .build()
    .with_ledger(ledger.clone());
    let Harness {
        fake,
        app,
        secret_name,
    } = h;
    let first = Harness {
        fake,
        app: app.with_ledger(ledger),
        secret_name,
    };
    (first, second)
}

async fn send_to(
    app: &App,
    req: Request,
) -> (u16, Value, lambda_http::Response<lambda_http::Body>) {
    let resp = mde_offboard::inbound::http::handle(app, req).await;
    let status = resp.status().as_u16();
    let body = match resp.body() {
        lambda_http::Body::Text(t) => serde_json::from_str(t).unwrap(),
        _ => Value::Null,
    };
    (status, body, resp)
}

/// L5: the same signed id with another body, on the same instance (its
/// memory) and on another (the ledger): 409, Defender never sees the second
/// request, and the answer holds nothing of the first.
#[tokio::test]
async fn a_webhook_id_used_again_with_another_body_is_409_and_shows_nothing() {
    let (h, second) = two_instances().await;
    let first = signed("POST", "/v1/offboard", &offboard_body(&[ids::WIN11]));
    let headers = first.headers().clone();
    let id = headers["webhook-id"].to_str().unwrap().to_string();
    let ts: i64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, answer, _) = h.send(first).await;
    assert_eq!(status, 200, "{answer}");
    let calls = h.fake.count(Api::AnyDefender);

    // Another body signed with the same id (a SOAR re-run that keeps its
    // id, or two playbooks whose ids collide).
    let other = offboard_body(&[ids::WIN10]);
    let sig =
        mde_offboard::support::webhook_sig::StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
            .unwrap()
            .sign(&id, ts, other.as_bytes());
    let ts = ts.to_string();
    let again = || {
        request(
            "POST",
            "/v1/offboard",
            &[
                ("webhook-id", id.as_str()),
                ("webhook-timestamp", ts.as_str()),
                ("webhook-signature", sig.as_str()),
            ],
            &other,
        )
    };
    for (instance, app) in [("this one", &h.app), ("another", &second)] {
        let (status, body, resp) = send_to(app, again()).await;
        assert!(reused(status, &body), "{instance}: {status} {body}");
        assert!(!resp.headers().contains_key("x-mde-replay"));
        let text = body.to_string();
        for earlier in [ids::WIN11, "INC-51", "laptop-17", "action_id"] {
            assert!(!text.contains(earlier), "{instance}: {text}");
        }
    }
    assert_eq!(
        h.fake.count(Api::AnyDefender),
        calls,
        "Defender saw nothing of the second request"
    );
    // The first request itself is still answered again, on either.
    for app in [&h.app, &second] {
        let (status, body, resp) = send_to(
            app,
            replayed_as(
                &headers,
                "POST",
                "/v1/offboard",
                &offboard_body(&[ids::WIN11]),
            ),
        )
        .await;
        assert_eq!((status, &body), (200, &answer));
        assert_eq!(resp.headers()["x-mde-replay"], "true");
    }
}

/// M1/L5: a captured signed cancel of action A, sent to action B: 409, and
/// Defender sees no cancel of B. Sent to A again: the first answer, and
/// still one cancel. With the ledger and without it (memory only).
#[tokio::test]
async fn a_captured_signed_cancel_cannot_cancel_another_action() {
    for with_ledger in [true, false] {
        let h = Harness::new().await;
        let h = if with_ledger {
            Harness {
                app: h.app.with_ledger(Arc::new(InMemoryLedger::new())),
                ..h
            }
        } else {
            h
        };
        let (status, body, _) = h
            .send(signed(
                "POST",
                "/v1/offboard",
                &offboard_body(&[ids::WIN11, ids::SERVER2022]),
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let action = |i: usize| results(&body)[i]["action_id"].as_str().unwrap().to_string();
        let (a, b) = (action(0), action(1));

        let cancel_a = signed("POST", &format!("/v1/actions/{a}/cancel"), &cancel_body());
        let captured = cancel_a.headers().clone();
        let (status, first, _) = h.send(cancel_a).await;
        assert_eq!(
            (status, first["status"].as_str()),
            (200, Some("Cancelled")),
            "{first}"
        );

        let to_b = replayed_as(
            &captured,
            "POST",
            &format!("/v1/actions/{b}/cancel"),
            &cancel_body(),
        );
        let (status, body, _) = h.send(to_b).await;
        assert!(
            reused(status, &body),
            "ledger {with_ledger}: {status} {body}"
        );
        assert!(!body.to_string().contains(&a), "{body}");
        assert_eq!(h.fake.count(Api::Cancel), 1, "Defender saw no cancel of B");
        assert_eq!(h.fake.action(&b).unwrap()["status"], "Pending");

        let to_a = replayed_as(
            &captured,
            "POST",
            &format!("/v1/actions/{a}/cancel"),
            &cancel_body(),
        );
        let (status, body, resp) = h.send(to_a).await;
        assert_eq!((status, &body), (200, &first), "ledger {with_ledger}");
        assert_eq!(resp.headers()["x-mde-replay"], "true");
        assert_eq!(h.fake.count(Api::Cancel), 1);
    }
}

/// A refused call binds its id too: a signed cancel that was refused (an
/// isolation: 409 `not_an_offboard`, which is not kept as an answer)
/// cannot then be sent to an offboard.
#[tokio::test]
async fn a_refused_signed_cancel_cannot_be_sent_to_another_action_either() {
    for with_ledger in [true, false] {
        let h = Harness::new().await;
        let h = if with_ledger {
            Harness {
                app: h.app.with_ledger(Arc::new(InMemoryLedger::new())),
                ..h
            }
        } else {
            h
        };
        let (status, body, _) = h
            .send(signed(
                "POST",
                "/v1/offboard",
                &offboard_body(&[ids::WIN11]),
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let offboard = results(&body)[0]["action_id"].as_str().unwrap().to_string();
        let isolation = h.fake.add_action(ids::WIN10, "Isolate");

        let refused = signed(
            "POST",
            &format!("/v1/actions/{isolation}/cancel"),
            &cancel_body(),
        );
        let captured = refused.headers().clone();
        let (status, body, _) = h.send(refused).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("not_an_offboard"))
        );

        let to_offboard = replayed_as(
            &captured,
            "POST",
            &format!("/v1/actions/{offboard}/cancel"),
            &cancel_body(),
        );
        let (status, body, _) = h.send(to_offboard).await;
        assert!(
            reused(status, &body),
            "ledger {with_ledger}: {status} {body}"
        );
        assert_eq!(h.fake.count(Api::Cancel), 0, "Defender saw no cancel");
        // The refused call itself may be sent again: it is judged again.
        let again = replayed_as(
            &captured,
            "POST",
            &format!("/v1/actions/{isolation}/cancel"),
            &cancel_body(),
        );
        let (status, body, _) = h.send(again).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("not_an_offboard"))
        );
    }
}

/// A captured signed GET (its body is empty, so its signature fits any
/// path) sent to another action or to a ticket: 409, and Defender is not
/// asked; sent again to its own path: the first answer.
#[tokio::test]
async fn a_captured_signed_get_is_replayed_only_on_its_own_path() {
    let h = Harness::new().await;
    let h = Harness {
        app: h.app.with_ledger(Arc::new(InMemoryLedger::new())),
        ..h
    };
    let (_, body, _) = h
        .send(signed(
            "POST",
            "/v1/offboard",
            &offboard_body(&[ids::WIN11, ids::SERVER2022]),
        ))
        .await;
    let action = |i: usize| results(&body)[i]["action_id"].as_str().unwrap().to_string();
    let (a, b) = (action(0), action(1));

    let get_a = signed("GET", &format!("/v1/actions/{a}"), "");
    let captured = get_a.headers().clone();
    let (status, first, _) = h.send(get_a).await;
    assert_eq!(status, 200, "{first}");
    let reads = h.fake.count(Api::GetAction);

    for path in [format!("/v1/actions/{b}"), "/v1/tickets/INC-51".to_string()] {
        let (status, body, _) = h.send(replayed_as(&captured, "GET", &path, "")).await;
        assert!(reused(status, &body), "{path}: {status} {body}");
        assert!(!body.to_string().contains(&a), "{body}");
    }
    let (status, body, resp) = h
        .send(replayed_as(
            &captured,
            "GET",
            &format!("/v1/actions/{a}"),
            "",
        ))
        .await;
    assert_eq!((status, &body), (200, &first));
    assert_eq!(resp.headers()["x-mde-replay"], "true");
    assert_eq!(
        h.fake.count(Api::GetAction),
        reads,
        "Defender not asked again"
    );

    // A GET signed afresh for each call is simply answered.
    let (status, _, resp) = h.send(signed("GET", &format!("/v1/actions/{b}"), "")).await;
    assert_eq!(status, 200);
    assert!(!resp.headers().contains_key("x-mde-replay"));
}

/// An EventBridge event id used again for another event: refused as an
/// invalid request (no retry cures it), and nothing is called.
#[tokio::test]
async fn an_eventbridge_id_used_for_another_event_is_refused() {
    let h = Harness::new().await;
    let event = |devices: &[&str]| {
        json!({"version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602",
            "detail-type": "Offboard Devices", "source": "mde-offboard",
            "account": "123456789012", "time": "2026-11-25T10:00:00Z", "region": "us-east-1",
            "resources": [], "detail": {"ticket": "INC-52", "comment": "retired", "devices": devices, "dry_run": true}})
    };
    let ctx = lambda_http::Context::default();
    let first = event(&[ids::WIN11]);
    let answer =
        mde_offboard::inbound::direct::eventbridge(&h.app, &first.to_string(), &first, &ctx).await;
    assert_eq!(answer.map(|o| o.status).ok(), Some(200));
    let calls = h.fake.count(Api::AnyDefender);
    let other = event(&[ids::WIN10]);
    let e = mde_offboard::inbound::direct::eventbridge(&h.app, &other.to_string(), &other, &ctx)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "delivery_id_reused");
    let failed = mde_offboard::inbound::InvocationError::from(e);
    assert_eq!(failed.error_type, "MdeOffboard.InvalidRequest");
    assert_eq!(h.fake.count(Api::AnyDefender), calls);
}

/// Counts what the function puts on the queue.
#[derive(Default)]
struct CountingQueue(AtomicUsize);

impl Queue for CountingQueue {
    fn send_batch<'a>(
        &'a self,
        bodies: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<usize>, QueueError>> {
        self.0.fetch_add(bodies.len(), Ordering::SeqCst);
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A fresh instance of the function on the moto ledger `table`, queueing
/// into `queue`.
async fn instance(
    h: &Harness,
    table: &str,
    queue: Arc<CountingQueue>,
    env: &[(&str, &str)],
) -> App {
    let mut vars: Vec<(String, String)> = vec![
        ("SECRET_ID".into(), h.secret_name.clone()),
        ("MDE_API_URL".into(), h.fake.url()),
        ("MDE_LOGIN_URL".into(), h.fake.url()),
        (
            "QUEUE_URL".into(),
            "https://sqs.us-east-1.amazonaws.com/1/q".into(),
        ),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = mde_offboard::config::Config::from_lookup(|k| {
        vars.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    let secrets = Arc::new(
        mde_offboard::adapters::secrets_manager::SecretsManagerSource::new(
            sm_client(),
            h.secret_name.clone(),
        ),
    );
    mde_offboard::init::Wiring::new(config, secrets)
        .build()
        .with_queue(queue)
        .with_ledger(Arc::new(DynamoLedger::new(
            moto_dynamodb(),
            table.to_string(),
        )))
}

/// L4: a queue-mode delivery naming thousands of devices, answered by one
/// instance whose deadline then passes, is re-sent to a fresh instance on
/// the same table (moto): answered from the ledger, byte for byte, and
/// nothing is queued again. The contract's 5,000 devices (names as long as
/// the 256 KiB body allows: an answer of about 320 KB), and 20,000 short
/// names (an answer over the 350,000 bytes one item holds).
#[tokio::test]
async fn a_large_queue_mode_delivery_is_answered_from_the_ledger_and_never_queued_twice() {
    type Case = (
        usize,
        fn(usize) -> String,
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 2] = [
        (
            5_000,
            |i| format!("desktop-{i:05}.branch-office-emea.corp.contoso.com"),
            &[],
        ),
        (
            20_000,
            |i| format!("pc-{i:05}"),
            &[("MAX_QUEUED_DEVICES", "20000")],
        ),
    ];
    for (count, name, env) in cases {
        let h = Harness::new().await;
        let table = ledger_table_from_template().await;
        let queue = Arc::new(CountingQueue::default());
        let devices: Vec<String> = (0..count).map(name).collect();
        let body = json!({"ticket": "CHG-500", "comment": "fleet refresh",
            "devices": devices, "mode": "queue"})
        .to_string();
        assert!(body.len() <= 256 * 1024, "{}", body.len());

        let first = instance(&h, &table, queue.clone(), env).await;
        let budget = Duration::from_secs(5);
        let deadline = SystemTime::now() + budget;
        let req = signed("POST", "/v1/offboard", &body);
        let headers = req.headers().clone();
        let (status, answer, resp) = send_to(&first, with_deadline(req, budget)).await;
        assert_eq!(status, 202, "{count}: {answer}");
        assert_eq!(answer["queued"].as_array().unwrap().len(), count);
        assert_eq!(queue.0.load(Ordering::SeqCst), count);
        let lambda_http::Body::Text(text) = resp.body() else {
            panic!("no body")
        };
        if count == 20_000 {
            let len = text.len();
            assert!(len > 350_000, "an answer over one item's size: {len} bytes");
        }

        // Past the first invocation's deadline, on a fresh instance (no
        // memory of it, no queue cache): the ledger answers.
        while SystemTime::now() <= deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let fresh = instance(&h, &table, queue.clone(), env).await;
        let again = replayed_as(&headers, "POST", "/v1/offboard", &body);
        let (status, replayed, resp) = send_to(&fresh, again).await;
        assert_eq!(status, 202, "{count}: {replayed}");
        assert_eq!(
            resp.headers()
                .get("x-mde-replay")
                .map(|v| v.to_str().unwrap()),
            Some("true"),
            "{count}: answered from the ledger"
        );
        assert_eq!(replayed, answer);
        assert_eq!(
            queue.0.load(Ordering::SeqCst),
            count,
            "{count}: nothing queued again"
        );
    }
}
