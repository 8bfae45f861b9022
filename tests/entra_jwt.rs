//! The `entra-jwt` scheme through the HTTP route: a Logic App or Sentinel
//! playbook with a managed identity presents an access token Entra ID
//! issued it, and the function checks it against the keys the tenant
//! publishes. The fake tenant (`FakeDefender`) serves those keys at
//! `/{tenant}/discovery/v2.0/keys`; tokens are signed with a test key made
//! at test time (`mde_testkit::entra`).

mod common;

use common::*;
use lambda_http::Request;
use mde_testkit::defender::TENANT_ID;
use mde_testkit::entra::{
    AUDIENCE_ID, AUDIENCE_URI, CALLER_OID, OTHER_TENANT, TestKey, hs256_token, unix_now,
    unsigned_token, v1_claims, v2_claims,
};
use mde_testkit::{Api, Fault};
use serde_json::{Value, json};

/// The message every 401 carries, whatever the reason.
const REFUSED: &str = "the request could not be authenticated; the function's log says why.";

fn scheme() -> Value {
    json!({"scheme": "entra-jwt", "audiences": [AUDIENCE_URI, AUDIENCE_ID], "principals": [CALLER_OID]})
}

/// `defender-incident` as its preset maps it, with the secretless scheme;
/// the generic route with Standard Webhooks or a token.
fn sources() -> String {
    json!({"sources": {
        "defender-incident": {"extends": "defender-incident", "auth": scheme()},
        "generic": {"auth": [{"scheme": "standard-webhooks", "secret": "generic"}, scheme()]}
    }})
    .to_string()
}

async fn harness() -> Harness {
    Harness::with(Options {
        env: vec![("PROTECTED_TAGS", "vip".into()), ("SOURCES", sources())],
        ..Options::default()
    })
    .await
}

/// `events/defender-incident.json` as a Logic App with a managed identity
/// sends it: the incident, `Authorization: Bearer <token>`.
fn incident(token: &str) -> Request {
    let text = std::fs::read_to_string(format!(
        "{}/events/defender-incident.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut ev: Value = serde_json::from_str(&text).unwrap();
    ev["headers"]["authorization"] = json!(format!("Bearer {token}"));
    lambda_http::request::from_str(&ev.to_string()).unwrap()
}

fn generic(token: &str, ticket: &str) -> Request {
    let body =
        json!({"ticket": ticket, "comment": "Retired by the playbook", "devices": [ids::WIN11]});
    request(
        "POST",
        "/v1/offboard",
        &[("authorization", &format!("Bearer {token}"))],
        &body.to_string(),
    )
}

fn v1() -> Value {
    v1_claims(TENANT_ID, AUDIENCE_URI)
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

#[tokio::test]
async fn a_playbook_token_offboards_the_incident_device_and_the_keys_are_fetched_once() {
    let h = harness().await;
    let key = TestKey::shared();
    let (status, b, _) = h.send(incident(&key.token(&v1()))).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "2972395");
    assert_eq!(results(&b)[0]["machine_id"], ids::WIN10);
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
    let keys_call = h
        .fake
        .calls()
        .into_iter()
        .find(|c| c.api == Api::Keys)
        .expect("the keys were fetched");
    assert_eq!(
        keys_call.path,
        format!("/{TENANT_ID}/discovery/v2.0/keys"),
        "the tenant's v2.0 keys endpoint on MDE_LOGIN_URL"
    );

    // A v2.0 token (the app's client id as audience) on the generic route;
    // the keys are the cached ones.
    let v2 = v2_claims(&h.fake.url(), TENANT_ID, AUDIENCE_ID);
    let (status, b, _) = h.send(generic(&key.token(&v2), "INC-2")).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
    assert_eq!(h.fake.count(Api::Keys), 1, "the keys come from the cache");
    // Standard Webhooks still opens the generic route beside the token.
    let (status, _, _) = h
        .offboard(&json!({"ticket": "INC-3", "comment": "c", "devices": [ids::SERVER2022]}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_refused_token_is_401_with_the_fixed_sentence_and_nothing_is_called() {
    let h = harness().await;
    let key = TestKey::shared();
    let now = unix_now();
    let impostor = TestKey::generate(key.kid());
    let cases: Vec<(&str, String)> = vec![
        ("a signature by another key", impostor.token(&v1())),
        ("alg none", unsigned_token(&v1())),
        (
            "HS256 keyed with the public key",
            hs256_token(key.kid(), &key.public_der(), &v1()),
        ),
        ("expired", key.token(&with(v1(), "exp", json!(now - 600)))),
        (
            "not yet valid",
            key.token(&with(v1(), "nbf", json!(now + 600))),
        ),
        (
            "another API's audience",
            key.token(&with(v1(), "aud", json!("https://management.azure.com/"))),
        ),
        (
            "another tenant's token",
            key.token(&v1_claims(OTHER_TENANT, AUDIENCE_URI)),
        ),
        (
            "a caller not in principals",
            key.token(&with(
                v1(),
                "oid",
                json!("0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"),
            )),
        ),
        ("not a JWT", "not-a-jwt".into()),
    ];
    for (what, token) in cases {
        let (status, b, _) = h.send(incident(&token)).await;
        assert_eq!(status, 401, "{what}: {b}");
        assert_eq!(b["error"]["code"], "unauthorized", "{what}");
        assert_eq!(b["error"]["message"], REFUSED, "{what}");
        let (status, _, _) = h.send(generic(&token, "INC-9")).await;
        assert_eq!(status, 401, "{what} on the generic route");
    }
    assert_eq!(h.fake.count(Api::AnyDefender), 0, "nothing was called");
    assert_eq!(h.fake.count(Api::Login), 0, "not even a token fetched");
    assert_eq!(
        h.fake.count(Api::Keys),
        1,
        "one fetch served every check; alg none and HS256 fetch nothing"
    );
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_then_is_refused_until_a_minute_passes() {
    let h = harness().await;
    let rolled = TestKey::generate("rolled-key-2");
    // Cold: the one fetch does not publish the kid.
    let (status, _, _) = h.send(incident(&rolled.token(&v1()))).await;
    assert_eq!(status, 401);
    assert_eq!(h.fake.count(Api::Keys), 1);
    // The tenant rolls its keys; within the minute nothing is refetched, so
    // random kids cannot turn requests into fetches.
    h.fake
        .publish_keys(&[TestKey::shared().clone(), rolled.clone()]);
    for _ in 0..3 {
        let (status, _, _) = h.send(incident(&rolled.token(&v1()))).await;
        assert_eq!(status, 401);
    }
    assert_eq!(h.fake.count(Api::Keys), 1);
    // A known kid is unaffected.
    let (status, b, _) = h.send(incident(&TestKey::shared().token(&v1()))).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
}

#[tokio::test]
async fn keys_that_cannot_be_fetched_are_503_with_retry_after_never_an_acceptance() {
    let key = TestKey::shared();
    for fault in [
        Fault::Status {
            status: 500,
            code: "ServerError".into(),
        },
        Fault::redirect(302, "https://login.example.net/keys"),
        Fault::Answer {
            status: 200,
            headers: vec![],
            body: "<html>maintenance</html>".into(),
        },
    ] {
        let h = harness().await;
        h.fake.fault(Api::Keys, fault.clone());
        let (status, b, resp) = h.send(incident(&key.token(&v1()))).await;
        assert_eq!(status, 503, "{fault:?}: {b}");
        assert_eq!(b["error"]["code"], "auth_unavailable");
        assert!(resp.headers().get("retry-after").is_some(), "{fault:?}");
        let message = b["error"]["message"].as_str().unwrap();
        for hint in ["keys", "Entra", "500", "302", "login"] {
            assert!(!message.contains(hint), "{message}");
        }
        assert_eq!(h.fake.count(Api::AnyDefender), 0, "nothing called");
        // A token that could never pass is still 401, without a fetch.
        let (status, _, _) = h.send(incident(&unsigned_token(&v1()))).await;
        assert_eq!(status, 401);
        // Another scheme of the source still admits its callers.
        let (status, _, _) = h
            .offboard(&json!({"ticket": "INC-4", "comment": "c", "devices": [ids::WIN11]}))
            .await;
        assert_eq!(status, 200, "{fault:?}");
    }
}

#[tokio::test]
async fn a_request_without_a_token_is_refused_before_the_secret_or_keys_are_read() {
    let h = harness().await;
    let mut ev: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/events/defender-incident.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    ev["headers"]
        .as_object_mut()
        .unwrap()
        .remove("authorization");
    let (status, b, _) = h
        .send(lambda_http::request::from_str(&ev.to_string()).unwrap())
        .await;
    assert_eq!(
        (status, b["error"]["message"].as_str()),
        (401, Some(REFUSED))
    );
    assert_eq!(h.fake.count(Api::Keys), 0);
}

/// The whole path as a service principal takes it: a client-credentials
/// token from the tenant's token endpoint for `api://mde-offboard/.default`,
/// then the call. The same fake tenant issues the token and publishes the
/// key that signed it.
#[tokio::test]
async fn a_token_from_the_tenants_token_endpoint_is_admitted() {
    use mde_testkit::entra::{CALLER_APPID, CALLER_SECRET};
    let h = harness().await;
    let url = format!("{}/{TENANT_ID}/oauth2/v2.0/token", h.fake.url());
    let login = async |secret: &str, scope: &str| {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", CALLER_APPID),
            ("client_secret", secret),
            ("scope", scope),
        ];
        let r = reqwest::Client::new()
            .post(&url)
            .form(&form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, answer) = login(CALLER_SECRET, "api://mde-offboard/.default").await;
    assert_eq!(status, 200, "{answer}");
    let token = answer["access_token"].as_str().unwrap();
    let (status, b, _) = h.send(incident(token)).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
    // Entra ID's refusals at the token endpoint, as it answers them.
    assert_eq!(login("wrong", "api://mde-offboard/.default").await.0, 401);
    let (status, e) = login(CALLER_SECRET, "api://another-app/.default").await;
    assert_eq!((status, e["error_codes"][0].as_u64()), (400, Some(500011)));
}
