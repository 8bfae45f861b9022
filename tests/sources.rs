//! Every preset, from its `events/` file through the handler: a matching
//! event offboards, an event whose condition does not hold is ignored, a bad
//! signature and a missing secret are refused. The real upstream payloads in
//! `../shared/realworld/` (see its SOURCES.md) drive the preset tests: each
//! preset must do the right thing on what its tool really sends.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use lambda_http::Request;
use mde_offboard::intake::sources::Sources;
use mde_offboard::support::webhook_sig::{StandardWebhooks, secret_key};
use mde_testkit::hmac_hex;
use mde_testkit::{Api, GENERIC_WEBHOOK_SECRET};
use serde_json::{Value, json};

fn secret_of(source: &str) -> String {
    let s: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    let v = &s["webhook_secrets"][source];
    v.as_str().or(v[0].as_str()).unwrap().to_string()
}

/// A payload from `../shared/realworld/`, as found upstream.
fn realworld(path: &str) -> Value {
    let full = format!("{}/../shared/realworld/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Writes `at` where the preset's freshness window reads the time, as the
/// sender does when it delivers; the samples and real payloads are old.
fn stamped(source: &str, mut body: Value, at: SystemTime) -> Value {
    if let Some(w) = Sources::default()
        .get(source)
        .and_then(|d| d.freshness.clone())
    {
        w.stamp(&mut body, at);
    }
    body
}

/// The event file with its body replaced (when given), stamped now and
/// signed the way the tool signs, with `key`.
fn event(file: &str, body: Option<&Value>, key: &str) -> Request {
    event_with(file, body, key, Some(SystemTime::now()), &[])
}

/// As `event`; `at` (when given) stamps the body's time, and `headers`
/// replace the file's.
fn event_with(
    file: &str,
    body: Option<&Value>,
    key: &str,
    at: Option<SystemTime>,
    headers_given: &[(&str, &str)],
) -> Request {
    let text =
        std::fs::read_to_string(format!("{}/events/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut ev: Value = serde_json::from_str(&text).unwrap();
    let source = ev["rawPath"]
        .as_str()
        .unwrap()
        .trim_start_matches("/v1/webhooks/")
        .to_string();
    let mut doc = match body {
        Some(b) => b.clone(),
        None => serde_json::from_str(ev["body"].as_str().unwrap()).unwrap(),
    };
    if let Some(at) = at {
        doc = stamped(&source, doc, at);
    }
    ev["body"] = json!(doc.to_string());
    let raw = ev["body"].as_str().unwrap().to_string();
    let headers = ev["headers"].as_object_mut().unwrap();
    for (k, v) in headers_given {
        headers.insert(k.to_string(), json!(v));
    }
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
            json!(
                StandardWebhooks::from_bytes(secret_key(key).unwrap_or_default()).sign(
                    &id,
                    now(),
                    raw.as_bytes()
                )
            ),
        );
    }
    lambda_http::request::from_str(&ev.to_string()).unwrap()
}

fn reason(b: &Value) -> &str {
    b["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason in {b}"))
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
async fn unknown_sources_are_404_and_unmapped_content_is_202_naming_the_pointer() {
    let h = Harness::new().await;
    let (status, b, _) = h.send(signed("POST", "/v1/webhooks/nagios", "{}")).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (404, Some("unknown_source"))
    );

    // No device, a device value that is no id or name, a list holding a
    // number: the sender cannot fix any of them, so none is a 4xx.
    for device in [
        None,
        Some(json!("two words")),
        Some(json!([42])),
        Some(json!(7)),
    ] {
        let mut body = body_of("jira.body.json");
        let fields = body["issue"]["fields"].as_object_mut().unwrap();
        match &device {
            None => {
                fields.remove("customfield_10071");
            }
            Some(d) => {
                fields.insert("customfield_10071".into(), d.clone());
            }
        }
        let (status, b, _) = h
            .send(event("jira.json", Some(&body), &secret_of("jira")))
            .await;
        assert_eq!(status, 202, "{device:?}: {b}");
        assert_eq!(b["status"], "ignored");
        assert!(
            reason(&b).contains("/issue/fields/customfield_10071"),
            "{device:?}: {b}"
        );
    }

    let mut body = body_of("servicenow.body.json");
    body.as_object_mut().unwrap().remove("number");
    let (status, b, _) = h
        .send(event(
            "servicenow.json",
            Some(&body),
            &secret_of("servicenow"),
        ))
        .await;
    assert_eq!(status, 202, "{b}");
    assert!(reason(&b).contains("/number"), "{b}");

    // A ticket that breaks the ticket rules is content too.
    let mut body = body_of("servicenow.body.json");
    body["number"] = json!("INC\u{7}1");
    let (status, b, _) = h
        .send(event(
            "servicenow.json",
            Some(&body),
            &secret_of("servicenow"),
        ))
        .await;
    assert_eq!(status, 202, "{b}");
    assert!(reason(&b).contains("/number"), "{b}");
    assert_eq!(h.fake.count(Api::AnyDefender), 0);

    // A body that is not JSON is a misconfigured sender: still 400.
    let req = request(
        "POST",
        "/v1/webhooks/servicenow",
        &[(
            "authorization",
            &format!("Bearer {}", secret_of("servicenow")),
        )],
        "state=Closed",
    );
    let (status, b, _) = h.send(req).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
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
    for (file, source, id_header) in [
        ("jira.json", "jira", "x-atlassian-webhook-identifier"),
        ("pagerduty.json", "pagerduty", "x-webhook-id"),
    ] {
        let body = stamped(
            source,
            body_of(&format!("{source}.body.json")),
            SystemTime::now(),
        );
        let send = |id: &'static str| {
            h.send(event_with(
                file,
                Some(&body),
                &secret_of(source),
                None,
                &[(id_header, id)],
            ))
        };
        let (status, first, _) = send("delivery-1").await;
        assert_eq!(status, 200, "{first}");
        let calls = h.fake.count(Api::AnyDefender);
        // The id header is not signed: whoever replays the body can change
        // it, so the body's hash is what keys the replay.
        let (status, again, resp) = send("delivery-2-forged").await;
        assert_eq!(status, 200);
        assert_eq!(again, first);
        assert_eq!(resp.headers()["x-mde-replay"], "true", "{file}");
        assert_eq!(h.fake.count(Api::AnyDefender), calls, "{file}");
    }
}

/// A real Jira payload, stamped now, with a device put in the preset's
/// field (the real ones carry none).
fn jira_real(file: &str) -> Value {
    let mut b = realworld(&format!("jira/{file}"));
    b["issue"]["fields"]["customfield_10071"] = json!("desktop-04.contoso.com");
    b
}

#[tokio::test]
async fn jira_acts_only_on_a_real_transition_into_done() {
    let h = Harness::new().await;
    for (file, ticket) in [
        ("mattermost-webhook-issue-updated-resolved.json", "TES-41"),
        (
            "mattermost-webhook-server-issue-updated-closed.json",
            "TES-4",
        ),
    ] {
        let (status, b, _) = h
            .send(event(
                "jira.json",
                Some(&jira_real(file)),
                &secret_of("jira"),
            ))
            .await;
        assert_eq!(status, 200, "{file}: {b}");
        assert_eq!(b["ticket"], ticket);
        assert_eq!(results(&b)[0]["machine_id"], ids::WIN10, "{file}");
    }
    let calls = h.fake.count(Api::AnyDefender);

    // The same Done issue, edited months later: only its labels change.
    let mut edited = jira_real("mattermost-webhook-issue-updated-resolved.json");
    edited["changelog"]["items"] = json!([{"field": "labels", "fieldtype": "jira", "fieldId": "labels",
        "from": null, "fromString": "", "to": null, "toString": "hardware-retirement"}]);
    let (status, b, _) = h
        .send(event("jira.json", Some(&edited), &secret_of("jira")))
        .await;
    assert_eq!(status, 202, "{b}");
    assert!(reason(&b).contains("/changelog/items/*/field"), "{b}");
    // No changelog at all (a comment, say) is no transition either.
    edited.as_object_mut().unwrap().remove("changelog");
    let (status, b, _) = h
        .send(event("jira.json", Some(&edited), &secret_of("jira")))
        .await;
    assert_eq!(status, 202, "{b}");

    // Real transitions elsewhere, or other events.
    for file in [
        "mattermost-webhook-issue-updated-started-working.json",
        "mattermost-webhook-issue-updated-reopened.json",
        "mattermost-webhook-cloud-issue-updated-custom-field.json",
        "mattermost-webhook-cloud-issue-created-many-fields.json",
        "mobitel-status-changed.json",
    ] {
        let (status, b, _) = h
            .send(event(
                "jira.json",
                Some(&jira_real(file)),
                &secret_of("jira"),
            ))
            .await;
        assert_eq!(status, 202, "{file}: {b}");
        assert_eq!(b["status"], "ignored", "{file}");
    }
    assert_eq!(h.fake.count(Api::AnyDefender), calls);
}

#[tokio::test]
async fn a_delivery_outside_the_freshness_window_is_401_stale() {
    let h = Harness::new().await;
    let body = jira_real("mattermost-webhook-issue-updated-resolved.json");
    // As captured: its 2019 timestamp makes it a replay of an old delivery.
    let (status, b, _) = h
        .send(event_with(
            "jira.json",
            Some(&body),
            &secret_of("jira"),
            None,
            &[],
        ))
        .await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (401, Some("stale")),
        "{b}"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/timestamp")
    );
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3601);
    let soon = SystemTime::now() + Duration::from_secs(400);
    for at in [an_hour_ago, soon] {
        let (status, b, _) = h
            .send(event_with(
                "jira.json",
                Some(&body),
                &secret_of("jira"),
                Some(at),
                &[],
            ))
            .await;
        assert_eq!(
            (status, b["error"]["code"].as_str()),
            (401, Some("stale")),
            "{b}"
        );
    }
    // Missing or unreadable time: refused, not waved through.
    for ts in [None, Some(json!("2019-1-30 15:51:34,870"))] {
        let mut b2 = body.clone();
        match ts {
            None => {
                b2.as_object_mut().unwrap().remove("timestamp");
            }
            Some(t) => b2["timestamp"] = t,
        }
        let (status, b, _) = h
            .send(event_with(
                "jira.json",
                Some(&b2),
                &secret_of("jira"),
                None,
                &[],
            ))
            .await;
        assert_eq!(
            (status, b["error"]["code"].as_str()),
            (401, Some("stale")),
            "{b}"
        );
    }
    // PagerDuty's /event/occurred_at, as in its docs (2020).
    let (status, b, _) = h
        .send(event_with(
            "pagerduty.json",
            Some(&pagerduty_real(json!(["srv-app-01.contoso.com"]))),
            &secret_of("pagerduty"),
            None,
            &[],
        ))
        .await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (401, Some("stale")),
        "{b}"
    );
    assert_eq!(h.fake.count(Api::AnyDefender), 0);
}

/// PagerDuty's documented webhook envelope carrying its documented
/// `incident_field_values` data, with the `mde_devices` field changed to
/// `value`.
fn pagerduty_real(value: Value) -> Value {
    let mut envelope = realworld("pagerduty/pd-docs-webhook-incident.priority_updated.json");
    let mut data = realworld("pagerduty/pd-docs-data-incident_field_values.json");
    let field = json!({"data_type": "string", "field_type": "multi_value", "id": "PMDE001",
        "name": "mde_devices", "namespace": "incidents", "type": "field_value", "value": value});
    data["custom_fields"]
        .as_array_mut()
        .unwrap()
        .push(field.clone());
    data["changed_custom_fields"] = json!([field]);
    envelope["event"]["event_type"] = json!("incident.custom_field_values.updated");
    envelope["event"]["data"] = data;
    envelope
}

#[tokio::test]
async fn pagerduty_real_field_update_acts_and_a_cleared_field_is_202() {
    let h = Harness::new().await;
    let (status, b, _) = h
        .send(event(
            "pagerduty.json",
            Some(&pagerduty_real(json!(["srv-app-01.contoso.com"]))),
            &secret_of("pagerduty"),
        ))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "PBAZLIU");
    assert_eq!(results(&b)[0]["machine_id"], ids::SERVER2022);
    let calls = h.fake.count(Api::AnyDefender);
    // A responder cleared the field: a 4xx here would count towards
    // PagerDuty disabling the subscription.
    for cleared in [json!(null), json!([]), json!("")] {
        let (status, b, _) = h
            .send(event(
                "pagerduty.json",
                Some(&pagerduty_real(cleared.clone())),
                &secret_of("pagerduty"),
            ))
            .await;
        assert_eq!(status, 202, "{cleared}: {b}");
        assert_eq!(b["status"], "ignored");
        assert!(reason(&b).contains("[name=mde_devices]/value"), "{b}");
    }
    // The documented example as is (only `environment` changed): ignored.
    let mut doc = pagerduty_real(json!(null));
    doc["event"]["data"] = realworld("pagerduty/pd-docs-data-incident_field_values.json");
    let (status, _, _) = h
        .send(event("pagerduty.json", Some(&doc), &secret_of("pagerduty")))
        .await;
    assert_eq!(status, 202);
    assert_eq!(h.fake.count(Api::AnyDefender), calls);
}

/// The real ServiceNow Table API record (an incident in state 7), with
/// `state` set and a machine id in `mde_machine_id`; its `cmdb_ci` is a
/// reference object, as the Table API returns it.
fn servicenow_real(state: &str) -> Value {
    let mut b = realworld("servicenow/sn-scripts-DummyRecords.incident-INC0000060.json");
    b["state"] = json!(state);
    b["incident_state"] = json!(state);
    b["mde_machine_id"] = json!(ids::WIN11);
    b
}

#[tokio::test]
async fn servicenow_real_incident_acts_on_6_and_7_never_on_3_2_or_8() {
    let h = Harness::new().await;
    for state in ["3", "2", "8", "On Hold", "1"] {
        let (status, b, _) = h
            .send(event(
                "servicenow.json",
                Some(&servicenow_real(state)),
                &secret_of("servicenow"),
            ))
            .await;
        assert_eq!(status, 202, "state {state}: {b}");
        assert!(reason(&b).contains("/state"), "{b}");
    }
    assert_eq!(
        h.fake.count(Api::AnyDefender),
        0,
        "On Hold offboards nothing"
    );
    for state in ["6", "7", "Resolved", "Closed"] {
        let (status, b, _) = h
            .send(event(
                "servicenow.json",
                Some(&servicenow_real(state)),
                &secret_of("servicenow"),
            ))
            .await;
        assert_eq!(status, 200, "state {state}: {b}");
        assert_eq!(b["ticket"], "INC0000060");
        assert_eq!(
            results(&b).len(),
            1,
            "the cmdb_ci reference names no device: {b}"
        );
        assert_eq!(results(&b)[0]["machine_id"], ids::WIN11);
    }
}

#[tokio::test]
async fn servicenow_other_tables_act_through_extends_and_when() {
    // As the README shows: change_request's closed state is 3.
    let sources = json!({"sources": {"servicenow-change": {"extends": "servicenow",
        "when": [{"pointer": "/sys_class_name", "in": ["change_request"]},
                 {"pointer": "/state", "in": ["3", "Closed"]}]}}});
    let h = Harness::with(Options {
        env: vec![("SOURCES", sources.to_string())],
        secret: {
            let mut s: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
            s["webhook_secrets"]["servicenow"] = json!(secret_of("servicenow"));
            s.to_string()
        },
        ..Default::default()
    })
    .await;
    let mut change = servicenow_real("3");
    change["sys_class_name"] = json!("change_request");
    let req = request(
        "POST",
        "/v1/webhooks/servicenow-change",
        &[(
            "authorization",
            &format!("Bearer {}", secret_of("servicenow")),
        )],
        &change.to_string(),
    );
    let (status, b, _) = h.send(req).await;
    assert_eq!(status, 200, "{b}");
    // The incident preset still never acts on 3.
    let (status, _, _) = h
        .send(event(
            "servicenow.json",
            Some(&change),
            &secret_of("servicenow"),
        ))
        .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn more_devices_than_max_devices_from_a_source_are_queued_or_ignored_never_422() {
    let many: Vec<String> = (0..30).map(|i| format!("host-{i}.contoso.com")).collect();
    let mut body = body_of("jira.body.json");
    body["issue"]["fields"]["customfield_10071"] = json!(many);

    let h = Harness::new().await;
    let (status, b, _) = h
        .send(event("jira.json", Some(&body), &secret_of("jira")))
        .await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(b["status"], "ignored");
    assert!(reason(&b).contains("MAX_DEVICES"), "{b}");
    assert_eq!(h.fake.count(Api::AnyDefender), 0);

    let queued = Harness::with(Options {
        queue_url: Some(new_queue().await),
        ..Default::default()
    })
    .await;
    let (status, b, _) = queued
        .send(event("jira.json", Some(&body), &secret_of("jira")))
        .await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(b["mode"], "queue", "{b}");
    assert_eq!(b["queued"].as_array().unwrap().len(), 30);
    assert_eq!(queued.fake.count(Api::AnyDefender), 0);
}

/// `jira-automation` (contract, "Sources"): Jira Automation's "Send web
/// request" with "Issue data" in either format (the issue at the top level,
/// or under `issue`), an api-key in `x-mde-token`, no changelog and no
/// freshness; it acts when the issue's status category is `done`.
#[tokio::test]
async fn jira_automation_acts_on_done_issues_in_either_format() {
    let h = Harness::new().await;
    let key = secret_of("jira_automation");
    let automation = body_of("jira-automation.body.json");
    let jira_format = json!({"issue": automation.clone()});
    for (n, body) in [automation.clone(), jira_format].iter().enumerate() {
        let (status, b, _) = h
            .send(request(
                "POST",
                "/v1/webhooks/jira-automation",
                &[("x-mde-token", &key)],
                &body.to_string(),
            ))
            .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["ticket"], "IT-77", "{b}");
        let expected = if n == 0 {
            "offboard_requested"
        } else {
            "already_pending"
        };
        assert_eq!(b["results"][0]["status"], expected, "{b}");
    }
    // Not done yet: ignored, nothing called.
    let calls = h.fake.count(Api::AnyDefender);
    let mut open = automation.clone();
    open["fields"]["status"]["statusCategory"]["key"] = json!("indeterminate");
    let (status, b, _) = h
        .send(request(
            "POST",
            "/v1/webhooks/jira-automation",
            &[("x-mde-token", &key)],
            &open.to_string(),
        ))
        .await;
    assert_eq!(
        (status, b["status"].as_str()),
        (202, Some("ignored")),
        "{b}"
    );
    assert_eq!(h.fake.count(Api::AnyDefender), calls);
    // Without the token: 401, nothing called.
    let (status, _, _) = h
        .send(request(
            "POST",
            "/v1/webhooks/jira-automation",
            &[],
            &automation.to_string(),
        ))
        .await;
    assert_eq!(status, 401);
    // The sample HTTP event (Jira format), with the rule's header value.
    let mut sample = body_of("jira-automation.json");
    sample["headers"]["x-mde-token"] = json!(key);
    let req = lambda_http::request::from_str(&sample.to_string()).unwrap();
    let (status, b, _) = h.send(req).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["results"][0]["status"], "already_pending", "{b}");
}
