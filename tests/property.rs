//! No body, however malformed, makes the function panic or answer 500: a
//! property test over signed arbitrary bodies on every route.

mod common;

use common::*;
use mde_offboard::support::webhook_sig::StandardWebhooks;
use mde_testkit::GENERIC_WEBHOOK_SECRET;
use mde_testkit::hmac_hex;
use proptest::prelude::*;
use serde_json::{Value, json};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "[0-9a-fA-F]{40}".prop_map(Value::from),
        Just(json!(ids::WIN11)),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("ticket".to_string()),
                    Just("comment".to_string()),
                    Just("devices".to_string()),
                    Just("dry_run".to_string()),
                    Just("mode".to_string()),
                    Just("issue".to_string()),
                    Just("event".to_string()),
                    Just("alerts".to_string()),
                    ".{0,10}".prop_map(|s| s),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_body() -> impl Strategy<Value = String> {
    prop_oneof![
        arb_json().prop_map(|v| v.to_string()),
        // Bodies that are close to valid: the generic shape with odd values.
        (arb_json(), arb_json(), arb_json(), arb_json()).prop_map(|(t, c, d, r)| {
            json!({"ticket": t, "comment": c, "devices": d, "dry_run": r}).to_string()
        }),
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn key(source: &str) -> String {
    let s: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    let v = &s["webhook_secrets"][source];
    v.as_str().or(v[0].as_str()).unwrap().to_string()
}

#[test]
fn no_body_makes_it_panic_or_answer_500() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(Harness::with(Options {
        env: vec![("DRY_RUN", "true".into()), ("PROTECTED_TAGS", "vip".into())],
        ..Default::default()
    }));
    let config = ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(body in arb_body(), route in 0usize..6)| {
        let ts = now();
        let req = match route {
            0 => signed("POST", "/v1/offboard", &body),
            1 => request("POST", "/v1/webhooks/jira", &[("x-hub-signature", &format!("sha256={}", hmac_hex(&key("jira"), body.as_bytes())))], &body),
            2 => request("POST", "/v1/webhooks/pagerduty", &[("x-pagerduty-signature", &format!("v1={}", hmac_hex(&key("pagerduty"), body.as_bytes())))], &body),
            3 => request("POST", "/v1/webhooks/servicenow", &[("authorization", &format!("Bearer {}", key("servicenow")))], &body),
            4 => request("POST", "/v1/webhooks/defender-incident", &[("authorization", &format!("Bearer {}", key("defender-incident")))], &body),
            _ => request("POST", "/v1/offboard", &[("webhook-id", "x"), ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", &StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET).unwrap().sign( "x", ts, body.as_bytes()))], &body),
        };
        let (status, answer, _) = rt.block_on(h.send(req));
        prop_assert!(status < 500, "HTTP {} for {:?}: {}", status, body, answer);
        if status >= 400 {
            prop_assert!(answer["error"]["code"].is_string(), "{}", answer);
        }
    });
}
