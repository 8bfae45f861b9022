//! Every preset, from its `events/` file through the handler: a matching
//! event offboards, an event whose condition does not hold is ignored, a bad
//! signature and a missing secret are refused.

mod common;

use common::*;
use lambda_http::Request;
use mde_offboard::auth::{hmac_hex, standard_sign};
use mde_testkit::{Api, GENERIC_WEBHOOK_SECRET};
use serde_json::{Value, json};

fn secret_of(source: &str) -> String {
    let s: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    let v = &s["webhook_secrets"][source];
    v.as_str().or(v[0].as_str()).unwrap().to_string()
}

/// The event file with its body replaced (when given) and signed the way
/// the tool signs, with `key`.
fn event(file: &str, body: Option<&Value>, key: &str) -> Request {
    let text =
        std::fs::read_to_string(format!("{}/events/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut ev: Value = serde_json::from_str(&text).unwrap();
    if let Some(b) = body {
        ev["body"] = json!(b.to_string());
    }
    let raw = ev["body"].as_str().unwrap().to_string();
    let headers = ev["headers"].as_object_mut().unwrap();
    if headers.contains_key("x-hub-signature") {
        headers.insert(
            "x-hub-signature".into(),
            json!(format!("sha256={}", hmac_hex(key, raw.as_bytes()))),
        );
    }
    if headers.contains_key("x-pagerduty-signature") {
        // PagerDuty sends one v1= value per active secret.
        let other = hmac_hex("some-other-secret", raw.as_bytes());
        headers.insert(
            "x-pagerduty-signature".into(),
            json!(format!("v1={other},v1={}", hmac_hex(key, raw.as_bytes()))),
        );
    }
    if headers.contains_key("authorization") {
        headers.insert("authorization".into(), json!(format!("Bearer {key}")));
    }
    if headers.contains_key("webhook-signature") {
        let id = headers["webhook-id"].as_str().unwrap().to_string();
        headers.insert("webhook-timestamp".into(), json!(now().to_string()));
        headers.insert(
            "webhook-signature".into(),
            json!(standard_sign(key, &id, now(), raw.as_bytes())),
        );
    }
    lambda_http::request::from_str(&ev.to_string()).unwrap()
}

fn body_of(file: &str) -> Value {
    let text =
        std::fs::read_to_string(format!("{}/events/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn generic_event_file_runs_through_the_handler() {
    let h = Harness::new().await;
    let (status, b, _) = h
        .send(event("generic.json", None, GENERIC_WEBHOOK_SECRET))
        .await;
    assert_eq!(status, 200, "{b}");
    let statuses: Vec<&str> = results(&b)
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "offboard_requested",
            "ambiguous",
            "unsupported_os",
            "protected",
            "not_found"
        ]
    );
    let raw: Value = body_of("generic.body.json");
    let (_, b, _) = h.offboard(&raw).await;
    assert_eq!(results(&b)[0]["status"], "already_pending");
}

#[tokio::test]
async fn jira_done_offboards_the_device_field() {
    let h = Harness::new().await;
    let (status, b, _) = h.send(event("jira.json", None, &secret_of("jira"))).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "IT-42");
    let r = &results(&b)[0];
    assert_eq!(r["status"], "offboard_requested");
    assert_eq!(r["machine_id"], ids::WIN10);
    let sent: Value = serde_json::from_str(&h.fake.accepted_offboards()[0].body).unwrap();
    let comment = sent["Comment"].as_str().unwrap();
    assert!(
        comment.contains("IT-42") && comment.contains("Retire desktop-04"),
        "{comment}"
    );
}

#[tokio::test]
async fn jira_in_progress_is_ignored_without_a_defender_call() {
    let h = Harness::new().await;
    let mut body = body_of("jira.body.json");
    body["issue"]["fields"]["status"]["statusCategory"]["key"] = json!("indeterminate");
    let (status, b, _) = h
        .send(event("jira.json", Some(&body), &secret_of("jira")))
        .await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(b["status"], "ignored");
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("/issue/fields/status/statusCategory/key")
    );
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

#[tokio::test]
async fn pagerduty_custom_field_offboards_and_accepts_either_signature() {
    let h = Harness::new().await;
    // The secret holds a new and an old PagerDuty secret; sign with the old.
    let (status, b, _) = h
        .send(event("pagerduty.json", None, "pd-old-secret-never-log"))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "Q2W8L1RZ3XK4PQ");
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
    assert_eq!(results(&b)[0]["machine_id"], ids::SERVER2022);
}

#[tokio::test]
async fn pagerduty_other_field_changes_are_ignored() {
    let h = Harness::new().await;
    let mut body = body_of("pagerduty.body.json");
    body["event"]["data"]["changed_custom_fields"][0]["name"] = json!("environment");
    let (status, b, _) = h
        .send(event(
            "pagerduty.json",
            Some(&body),
            &secret_of("pagerduty"),
        ))
        .await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

#[tokio::test]
async fn servicenow_closed_offboards_the_ci() {
    let h = Harness::new().await;
    let (status, b, _) = h
        .send(event("servicenow.json", None, &secret_of("servicenow")))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "INC0012345");
    assert_eq!(results(&b).len(), 1, "the empty mde_machine_id is skipped");
    assert_eq!(results(&b)[0]["machine_id"], ids::WIN11);
    let mut body = body_of("servicenow.body.json");
    body["state"] = json!("In Progress");
    let (status, _, _) = h
        .send(event(
            "servicenow.json",
            Some(&body),
            &secret_of("servicenow"),
        ))
        .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn defender_incident_offboards_the_device_evidence_once() {
    let h = Harness::new().await;
    let (status, b, _) = h
        .send(event(
            "defender-incident.json",
            None,
            &secret_of("defender-incident"),
        ))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "2972395");
    // Device and file evidence name the same machine: one device.
    assert_eq!(results(&b).len(), 1, "{b}");
    assert_eq!(results(&b)[0]["machine_id"], ids::WIN10);
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
}

#[tokio::test]
async fn a_sentinel_incident_with_host_entities_works_too() {
    let h = Harness::new().await;
    let sentinel = json!({"object": {"properties": {"incidentNumber": 4711, "title": "Ransomware on host", "status": "Active",
    "relatedEntities": [
        {"kind": "Host", "properties": {"hostName": "srv-app-01", "dnsDomain": "contoso.com", "osFamily": "Windows",
            "additionalData": {"MdatpDeviceId": ids::SERVER2022}, "friendlyName": "srv-app-01"}},
        {"kind": "Account", "properties": {"accountName": "jdoe", "friendlyName": "jdoe"}}
    ]}}});
    let (status, b, _) = h
        .send(event(
            "defender-incident.json",
            Some(&sentinel),
            &secret_of("defender-incident"),
        ))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "4711", "a number renders as text");
    assert_eq!(results(&b)[0]["machine_id"], ids::SERVER2022);
}

#[tokio::test]
async fn every_preset_refuses_a_bad_signature() {
    let h = Harness::new().await;
    for file in [
        "jira.json",
        "pagerduty.json",
        "servicenow.json",
        "defender-incident.json",
    ] {
        let (status, b, _) = h.send(event(file, None, "not-the-secret")).await;
        assert_eq!(status, 401, "{file}: {b}");
        assert_eq!(b["error"]["code"], "unauthorized");
    }
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

#[tokio::test]
async fn a_source_without_its_secret_refuses_every_call() {
    let mut secret: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    for k in ["jira", "pagerduty", "servicenow", "defender-incident"] {
        secret["webhook_secrets"].as_object_mut().unwrap().remove(k);
    }
    let h = Harness::with(Options {
        secret: secret.to_string(),
        ..Default::default()
    })
    .await;
    for (file, key) in [
        ("jira.json", "jira-webhook-secret-never-log"),
        ("pagerduty.json", "pd-new-secret-never-log"),
        ("servicenow.json", "snow-bearer-token-never-log"),
        ("defender-incident.json", "xdr-bearer-token-never-log"),
    ] {
        let (status, _, _) = h.send(event(file, None, key)).await;
        assert_eq!(status, 401, "{file}");
    }
    // An empty bearer token against a missing secret is refused too.
    let (status, _, _) = h.send(event("servicenow.json", None, "")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn unknown_sources_are_404_and_mapping_errors_422() {
    let h = Harness::new().await;
    let (status, b, _) = h.send(signed("POST", "/v1/webhooks/nagios", "{}")).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (404, Some("unknown_source"))
    );

    let mut body = body_of("jira.body.json");
    body["issue"]["fields"]
        .as_object_mut()
        .unwrap()
        .remove("customfield_10071");
    let (status, b, _) = h
        .send(event("jira.json", Some(&body), &secret_of("jira")))
        .await;
    assert_eq!(status, 422, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/issue/fields/customfield_10071")
    );

    let mut body = body_of("servicenow.body.json");
    body.as_object_mut().unwrap().remove("number");
    let (status, b, _) = h
        .send(event(
            "servicenow.json",
            Some(&body),
            &secret_of("servicenow"),
        ))
        .await;
    assert_eq!(status, 422, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("/number"));
}

#[tokio::test]
async fn sources_from_the_environment_replace_presets_and_add_new_ones() {
    let sources = json!({"sources": {
        "tines": {"auth": {"scheme": "standard-webhooks", "secret": "generic"},
                  "ticket": "/case/id", "devices": ["/case/hosts"],
                  "comment": "Tines case {ticket}: {/case/name}"},
        "jira": {"extends": "jira", "devices": ["/issue/fields/customfield_20000"]}
    }});
    let h = Harness::with(Options {
        env: vec![("SOURCES", sources.to_string())],
        ..Default::default()
    })
    .await;
    let body =
        json!({"case": {"id": 77, "name": "Lost laptop", "hosts": ["LAPTOP-17.contoso.com"]}})
            .to_string();
    let (status, b, _) = h.send(signed("POST", "/v1/webhooks/tines", &body)).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "77");
    assert_eq!(results(&b)[0]["machine_id"], ids::WIN11);

    let mut jira = body_of("jira.body.json");
    jira["issue"]["fields"]["customfield_20000"] = json!(["srv-app-01.contoso.com"]);
    let (status, b, _) = h
        .send(event("jira.json", Some(&jira), &secret_of("jira")))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(results(&b).len(), 1);
    assert_eq!(results(&b)[0]["machine_id"], ids::SERVER2022);
}

#[tokio::test]
async fn a_redelivered_jira_or_pagerduty_event_is_answered_from_memory() {
    let h = Harness::new().await;
    for (file, source) in [("jira.json", "jira"), ("pagerduty.json", "pagerduty")] {
        let (status, first, _) = h.send(event(file, None, &secret_of(source))).await;
        assert_eq!(status, 200, "{first}");
        let calls = h.fake.count(Api::AnyDefender);
        // Same delivery id header (X-Atlassian-Webhook-Identifier, X-Webhook-Id), same body.
        let (status, again, resp) = h.send(event(file, None, &secret_of(source))).await;
        assert_eq!(status, 200);
        assert_eq!(again, first);
        assert_eq!(resp.headers()["x-mde-replay"], "true", "{file}");
        assert_eq!(h.fake.count(Api::AnyDefender), calls, "{file}");
    }
}
