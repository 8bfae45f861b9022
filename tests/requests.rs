//! Who may call and what they may send: authentication, routing and input
//! errors, each a JSON body with the contract's shape and the right status,
//! and never a Defender call.

mod common;

use common::*;
use mde_offboard::support::webhook_sig::StandardWebhooks;
use mde_testkit::{Api, GENERIC_WEBHOOK_SECRET};
use serde_json::{Value, json};

fn good() -> String {
    json!({"ticket": "INC1", "comment": "retired", "devices": [ids::WIN11]}).to_string()
}

fn assert_error(status: u16, b: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{b}");
    assert_eq!(b["error"]["code"], want_code, "{b}");
    assert!(
        !b["error"]["message"].as_str().unwrap_or("").is_empty(),
        "{b}"
    );
}

#[tokio::test]
async fn unsigned_and_badly_signed_requests_are_401() {
    let h = Harness::new().await;
    let body = good();
    let ts = now().to_string();
    let sig = StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
        .unwrap()
        .sign("msg_1", now(), body.as_bytes());
    let cases: Vec<(&str, lambda_http::Request)> = vec![
        ("no headers", request("POST", "/v1/offboard", &[], &body)),
        (
            "no signature",
            request(
                "POST",
                "/v1/offboard",
                &[("webhook-id", "msg_1"), ("webhook-timestamp", &ts)],
                &body,
            ),
        ),
        (
            "wrong secret",
            signed_with(
                "POST",
                "/v1/offboard",
                &body,
                "whsec_d3Jvbmcgc2VjcmV0",
                now(),
            ),
        ),
        (
            "stale",
            signed_with(
                "POST",
                "/v1/offboard",
                &body,
                GENERIC_WEBHOOK_SECRET,
                now() - 310,
            ),
        ),
        (
            "future",
            signed_with(
                "POST",
                "/v1/offboard",
                &body,
                GENERIC_WEBHOOK_SECRET,
                now() + 310,
            ),
        ),
        (
            "other id",
            request(
                "POST",
                "/v1/offboard",
                &[
                    ("webhook-id", "msg_2"),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &sig),
                ],
                &body,
            ),
        ),
        (
            "body changed",
            request(
                "POST",
                "/v1/offboard",
                &[
                    ("webhook-id", "msg_1"),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &sig),
                ],
                &body.replace("INC1", "INC2"),
            ),
        ),
    ];
    for (name, req) in cases {
        let (status, b, _) = h.send(req).await;
        assert_error(status, &b, 401, "unauthorized");
        assert!(
            !b.to_string().contains(&sig[3..]),
            "{name}: the answer echoes the signature"
        );
    }
    // Inside the tolerance it passes: the refusals above are the check, not an accident.
    let (status, b, _) = h
        .send(signed_with(
            "POST",
            "/v1/offboard",
            &body,
            GENERIC_WEBHOOK_SECRET,
            now() - 290,
        ))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(h.fake.count(Api::Offboard), 1);
}

#[tokio::test]
async fn a_rotated_secret_accepts_old_and_new() {
    let mut secret: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    secret["webhook_secrets"]["generic"] =
        json!(["whsec_bmV3LXNlY3JldC0xMjM0NTY=", GENERIC_WEBHOOK_SECRET]);
    let h = Harness::with(Options {
        secret: secret.to_string(),
        ..Default::default()
    })
    .await;
    for key in ["whsec_bmV3LXNlY3JldC0xMjM0NTY=", GENERIC_WEBHOOK_SECRET] {
        let (status, b, _) = h
            .send(signed_with("POST", "/v1/offboard", &good(), key, now()))
            .await;
        assert_eq!(status, 200, "{b}");
    }
}

#[tokio::test]
async fn without_a_generic_webhook_secret_every_call_is_refused() {
    let mut secret: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    secret["webhook_secrets"]
        .as_object_mut()
        .unwrap()
        .remove("generic");
    let h = Harness::with(Options {
        secret: secret.to_string(),
        ..Default::default()
    })
    .await;
    let (status, b, _) = h.send(signed("POST", "/v1/offboard", &good())).await;
    assert_error(status, &b, 401, "unauthorized");
}

#[tokio::test]
async fn routes_and_methods() {
    let h = Harness::new().await;
    let (status, b, _) = h.send(signed("POST", "/v1/nothing", &good())).await;
    assert_error(status, &b, 404, "not_found");
    let (status, b, _) = h.send(signed("GET", "/", "")).await;
    assert_error(status, &b, 404, "not_found");
    let (status, b, resp) = h.send(signed("GET", "/v1/offboard", "")).await;
    assert_error(status, &b, 405, "method_not_allowed");
    assert_eq!(resp.headers()["allow"], "POST");
    let (status, b, _) = h.send(signed("DELETE", "/v1/actions/abc", "")).await;
    assert_error(status, &b, 405, "method_not_allowed");
}

#[tokio::test]
async fn bodies_over_256_kib_are_413() {
    let h = Harness::new().await;
    let big = json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11], "pad": "x".repeat(256 * 1024)}).to_string();
    let (status, b, _) = h.send(signed("POST", "/v1/offboard", &big)).await;
    assert_error(status, &b, 413, "payload_too_large");
}

#[tokio::test]
async fn input_errors_name_the_field() {
    let h = Harness::new().await;
    let too_many: Vec<String> = (0..26).map(|i| format!("pc-{i}.contoso.com")).collect();
    let cases: Vec<(String, u16, &str, &str)> = vec![
        ("not json".into(), 400, "invalid_json", ""),
        ("[1,2]".into(), 400, "wrong_type", "body"),
        (
            json!({"comment": "c", "devices": [ids::WIN11]}).to_string(),
            400,
            "missing_field",
            "ticket",
        ),
        (
            json!({"ticket": 5, "comment": "c", "devices": [ids::WIN11]}).to_string(),
            400,
            "wrong_type",
            "ticket",
        ),
        (
            json!({"ticket": "T", "devices": [ids::WIN11]}).to_string(),
            400,
            "missing_field",
            "comment",
        ),
        (
            json!({"ticket": "T", "comment": "c"}).to_string(),
            400,
            "missing_field",
            "devices",
        ),
        (
            json!({"ticket": "T", "comment": "c", "devices": ids::WIN11}).to_string(),
            400,
            "wrong_type",
            "devices",
        ),
        (
            json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11, 3]}).to_string(),
            400,
            "wrong_type",
            "devices[1]",
        ),
        (
            json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11], "dry_run": "yes"})
                .to_string(),
            400,
            "wrong_type",
            "dry_run",
        ),
        (
            json!({"ticket": "", "comment": "c", "devices": [ids::WIN11]}).to_string(),
            422,
            "invalid_value",
            "ticket",
        ),
        (
            json!({"ticket": "T", "comment": "c".repeat(1001), "devices": [ids::WIN11]})
                .to_string(),
            422,
            "invalid_value",
            "comment",
        ),
        (
            json!({"ticket": "T", "comment": "a\u{7}b", "devices": [ids::WIN11]}).to_string(),
            422,
            "invalid_value",
            "comment",
        ),
        (
            json!({"ticket": "T", "comment": "c", "devices": []}).to_string(),
            422,
            "invalid_value",
            "devices",
        ),
        (
            json!({"ticket": "T", "comment": "c", "devices": ["has space"]}).to_string(),
            422,
            "invalid_value",
            "devices[0]",
        ),
        (
            json!({"ticket": "T", "comment": "c", "devices": too_many}).to_string(),
            422,
            "too_many_devices",
            "devices",
        ),
        (
            json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11], "mode": "queue"})
                .to_string(),
            422,
            "queue_not_configured",
            "mode",
        ),
        (
            json!({"ticket": "T", "comment": "c", "devices": [ids::WIN11], "mode": "later"})
                .to_string(),
            422,
            "invalid_value",
            "mode",
        ),
    ];
    for (body, want_status, want_code, field) in cases {
        let (status, b, _) = h.send(signed("POST", "/v1/offboard", &body)).await;
        assert_error(status, &b, want_status, want_code);
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{body}: {msg}");
    }
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
    // It keeps serving after all of that.
    let (status, _, _) = h.send(signed("POST", "/v1/offboard", &good())).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rest_api_and_alb_events_work_too() {
    let h = Harness::new().await;
    let body = good();
    let id = "msg_rest";
    let ts = now();
    let sig = StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
        .unwrap()
        .sign(id, ts, body.as_bytes());
    let rest = json!({
        "resource": "/v1/offboard", "path": "/v1/offboard", "httpMethod": "POST",
        "headers": {"webhook-id": id, "webhook-timestamp": ts.to_string(), "webhook-signature": sig, "content-type": "application/json"},
        "multiValueHeaders": {"webhook-id": [id], "webhook-timestamp": [ts.to_string()], "webhook-signature": [sig], "content-type": ["application/json"]},
        "queryStringParameters": null, "multiValueQueryStringParameters": null, "pathParameters": null, "stageVariables": null,
        "requestContext": {"accountId": "123456789012", "resourceId": "abc", "stage": "prod", "requestId": "r1", "identity": {"sourceIp": "198.51.100.7"},
            "resourcePath": "/v1/offboard", "httpMethod": "POST", "apiId": "api1", "path": "/prod/v1/offboard"},
        "body": body, "isBase64Encoded": false
    });
    let req = lambda_http::request::from_str(&rest.to_string()).unwrap();
    let (status, b, _) = h.send(req).await;
    assert_eq!(status, 200, "REST API: {b}");

    let alb = json!({
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/mde/1"}},
        "httpMethod": "POST", "path": "/v1/offboard", "queryStringParameters": {},
        "headers": {"webhook-id": "msg_alb", "webhook-timestamp": ts.to_string(),
            "webhook-signature": StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET).unwrap().sign( "msg_alb", ts, body.as_bytes()),
            "content-type": "application/json", "x-forwarded-for": "192.0.2.1"},
        "body": body, "isBase64Encoded": false
    });
    let req = lambda_http::request::from_str(&alb.to_string()).unwrap();
    let (status, b, _) = h.send(req).await;
    assert_eq!(status, 200, "ALB: {b}");
    assert_eq!(results(&b)[0]["status"], "already_pending");
}

/// The built-in source `reader` (contract, "Routes"): a key for auditors
/// that the `GET` routes accept and the routes that act never do.
#[tokio::test]
async fn a_reader_key_reads_and_never_acts() {
    let mut secret: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    secret["webhook_secrets"]["reader"] = json!("auditors-read-only-key-2026");
    let sources = json!({"sources": {"reader": {"auth": {
        "scheme": "api-key", "header": "x-reader-key", "secret": "reader"}}}});
    let h = Harness::with(Options {
        secret: secret.to_string(),
        env: vec![("SOURCES", sources.to_string())],
        ..Default::default()
    })
    .await;
    // An offboard to read back.
    let (status, b, _) = h
        .offboard(&json!({"ticket": "INC-R", "comment": "retired", "devices": [ids::WIN11]}))
        .await;
    assert_eq!(status, 200, "{b}");
    let action = b["results"][0]["action_id"].as_str().unwrap().to_string();

    let key = [("x-reader-key", "auditors-read-only-key-2026")];
    let (status, b, _) = h
        .send(request("GET", &format!("/v1/actions/{action}"), &key, ""))
        .await;
    assert_eq!(
        (status, b["action_id"].as_str()),
        (200, Some(action.as_str())),
        "{b}"
    );
    let offboards = h.fake.count(Api::Offboard);
    for (method, path, body) in [
        ("POST", "/v1/offboard".to_string(), good()),
        (
            "POST",
            format!("/v1/actions/{action}/cancel"),
            json!({"comment": "no"}).to_string(),
        ),
    ] {
        let (status, b, _) = h.send(request(method, &path, &key, &body)).await;
        assert_error(status, &b, 401, "unauthorized");
    }
    assert_eq!(h.fake.count(Api::Offboard), offboards, "nothing offboarded");
    assert_eq!(h.fake.count(Api::Cancel), 0, "nothing cancelled");
    // A wrong reader key reads nothing.
    let (status, b, _) = h
        .send(request(
            "GET",
            &format!("/v1/actions/{action}"),
            &[("x-reader-key", "guessed-wrong-key-000000")],
            "",
        ))
        .await;
    assert_error(status, &b, 401, "unauthorized");
}

/// Unicode's format characters (general category Cf) are refused in every
/// value a person reads later, the tag characters that can smuggle text
/// invisibly (U+E0000-E007F) and the soft hyphen included.
#[tokio::test]
async fn every_format_character_is_refused() {
    let h = Harness::new().await;
    for (field, value) in [
        ("comment", "retired \u{E0041}\u{E0042}"),
        ("comment", "re\u{00AD}tired"),
        ("ticket", "INC\u{2064}1"),
        ("comment", "retired \u{FFF9}annotated\u{FFFB}"),
    ] {
        let mut body = json!({"ticket": "INC1", "comment": "retired", "devices": [ids::WIN11]});
        body[field] = json!(value);
        let (status, b, _) = h.offboard(&body).await;
        assert_error(status, &b, 422, "invalid_value");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(field),
            "{b}"
        );
    }
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

/// A callback is sent to HTTPS's port only, on an allowed host.
#[tokio::test]
async fn a_callback_url_on_another_port_is_refused() {
    let h = Harness::with(Options {
        env: vec![("CALLBACK_HOSTS", "hooks.example.com".into())],
        ..Default::default()
    })
    .await;
    let body = json!({"ticket": "INC1", "comment": "retired", "devices": [ids::WIN11],
        "callback_url": "https://hooks.example.com:8443/mde"});
    let (status, b, _) = h.offboard(&body).await;
    assert_error(status, &b, 422, "callback_not_allowed");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("443"),
        "{b}"
    );
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

/// Defender's answers are read with a size cap: a 5 MiB answer is a failed
/// device, not a 5 MiB buffer.
#[tokio::test]
async fn an_oversized_defender_answer_is_refused_not_buffered() {
    let h = Harness::new().await;
    h.fake.fault(
        Api::GetMachine,
        mde_testkit::Fault::Answer {
            status: 200,
            headers: vec![],
            body: format!(
                "{{\"id\": \"{}\", \"pad\": \"{}\"}}",
                ids::WIN11,
                "x".repeat(5 << 20)
            ),
        },
    );
    let (status, b, _) = h
        .offboard(&json!({"ticket": "INC1", "comment": "retired", "devices": [ids::WIN11]}))
        .await;
    assert_eq!(status, 503, "{b}");
    let detail = b["results"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("over 4194304 bytes"), "{b}");
    assert_eq!(h.fake.count(Api::Offboard), 0);
}
