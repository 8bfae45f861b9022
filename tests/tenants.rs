//! Tenants (contract, "Tenants"): one deployment, several Defender
//! tenants. Each request names its tenant; a caller acts only where its
//! source allows; each tenant has its own token, limits, budget and
//! records; one tenant failing never stops another. Against the fake
//! Defender serving two tenants (each token sees only its tenant's
//! machines) and moto's Secrets Manager.

mod common;

use std::sync::Arc;

use common::*;
use mde_offboard::adapters::memory::ledger::InMemoryLedger;
use mde_testkit::defender::TENANT_ID;
use mde_testkit::{Api, FakeMachine, Fault};
use serde_json::{Value, json};

const FABRIKAM_ID: &str = "22222222-2222-2222-2222-222222222222";
const FAB_LAPTOP: &str = "fa0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b";

fn tenants_secret(extra: Value) -> String {
    let mut s: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    s["tenants"] = json!({
        "contoso": {"tenant_id": TENANT_ID},
        "fabrikam": {"tenant_id": FABRIKAM_ID},
    });
    if let (Some(obj), Some(more)) = (s["tenants"].as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    s.to_string()
}

async fn harness(sources: Option<&str>, extra_tenants: Value) -> Harness {
    let mut opts = Options {
        secret: tenants_secret(extra_tenants),
        ..Options::default()
    };
    if let Some(s) = sources {
        opts.env.push(("SOURCES", s.to_string()));
    }
    let h = Harness::with(opts).await;
    h.fake.add_tenant(FABRIKAM_ID);
    h.fake.add_machine(
        FakeMachine::new(FAB_LAPTOP, "laptop-09.fabrikam.com", "Windows11").in_tenant(FABRIKAM_ID),
    );
    h
}

fn body(tenant: Option<&str>, devices: &[&str]) -> Value {
    let mut b = json!({"ticket": "INC-77", "comment": "retired", "devices": devices});
    if let Some(t) = tenant {
        b["tenant"] = json!(t);
    }
    b
}

fn statuses(b: &Value) -> Vec<&str> {
    results(b)
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_request_acts_in_the_tenant_it_names_and_sees_only_its_machines() {
    let h = harness(None, json!({})).await;
    let (status, b, _) = h.offboard(&body(Some("fabrikam"), &[FAB_LAPTOP])).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(statuses(&b), ["offboard_requested"]);
    let offboards = h.fake.accepted_offboards();
    assert_eq!(offboards.len(), 1);
    assert_eq!(offboards[0].tenant.as_deref(), Some(FABRIKAM_ID));

    // Contoso's token does not see Fabrikam's machine, nor the reverse.
    let (_, b, _) = h.offboard(&body(Some("contoso"), &[FAB_LAPTOP])).await;
    assert_eq!(statuses(&b), ["not_found"]);
    let (_, b, _) = h.offboard(&body(Some("fabrikam"), &[ids::WIN10])).await;
    assert_eq!(statuses(&b), ["not_found"]);
    let (_, b, _) = h.offboard(&body(Some("contoso"), &[ids::WIN10])).await;
    assert_eq!(statuses(&b), ["offboard_requested"]);
    // Each tenant's own token, from its own tenant.
    let logins: Vec<_> = h
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.api == Api::Login)
        .map(|c| c.path)
        .collect();
    assert!(logins.iter().any(|p| p.contains(FABRIKAM_ID)), "{logins:?}");
    assert!(logins.iter().any(|p| p.contains(TENANT_ID)), "{logins:?}");
}

#[tokio::test]
async fn naming_no_tenant_or_an_unknown_one_is_422_and_calls_nothing() {
    let h = harness(None, json!({})).await;
    for (tenant, says) in [(None, "required"), (Some("nope"), "'nope'")] {
        let (status, b, _) = h.offboard(&body(tenant, &[ids::WIN10])).await;
        assert_eq!(
            (status, b["error"]["code"].as_str()),
            (422, Some("unknown_tenant")),
            "{b}"
        );
        let message = b["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("'tenant'") && message.contains(says),
            "{message}"
        );
    }
    assert_eq!(h.fake.calls().len(), 0);

    // Without `tenants`, naming one is refused too.
    let plain = Harness::new().await;
    let (status, b, _) = plain.offboard(&body(Some("contoso"), &[ids::WIN10])).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (422, Some("unknown_tenant"))
    );
    assert_eq!(plain.fake.calls().len(), 0);
}

/// A credential given to one customer can never act in, cancel in or read
/// another's tenant: 403, and Defender sees nothing.
#[tokio::test]
async fn a_source_allowed_one_tenant_naming_another_is_403_and_defender_sees_nothing() {
    let sources = r#"{"sources": {"generic": {"tenants": ["contoso"]}}}"#;
    let h = harness(Some(sources), json!({})).await;
    let (status, b, _) = h.offboard(&body(Some("fabrikam"), &[FAB_LAPTOP])).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (403, Some("tenant_not_allowed")),
        "{b}"
    );
    let action = "5382f7ea-7557-4ab7-9782-d50480024a4e";
    for (method, path, body) in [
        ("GET", format!("/v1/actions/{action}?tenant=fabrikam"), ""),
        (
            "POST",
            format!("/v1/actions/{action}/cancel?tenant=fabrikam"),
            r#"{"comment": "mistake"}"#,
        ),
        ("GET", "/v1/health?tenant=fabrikam".to_string(), ""),
    ] {
        let (status, b, _) = h.send(signed(method, &path, body)).await;
        assert_eq!(
            (status, b["error"]["code"].as_str()),
            (403, Some("tenant_not_allowed")),
            "{method} {path}: {b}"
        );
    }
    assert_eq!(h.fake.calls().len(), 0, "{:?}", h.fake.calls());

    // Its own tenant works, and its health check lists only that tenant.
    let (_, b, _) = h.offboard(&body(Some("contoso"), &[ids::WIN10])).await;
    assert_eq!(statuses(&b), ["offboard_requested"]);
    let (status, b, _) = h.send(signed("GET", "/v1/health", "")).await;
    assert_eq!(status, 200);
    let tenants: Vec<&str> = b["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["contoso"; 4], "{b}");
}

/// Defender counts per tenant: one tenant throttled does not slow another.
#[tokio::test]
async fn a_throttled_tenant_while_another_offboards_at_full_speed() {
    let h = harness(None, json!({})).await;
    for _ in 0..8 {
        h.fake.fault_for_tenant(
            FABRIKAM_ID,
            Api::AnyDefender,
            Fault::Throttle {
                retry_after_secs: 3600,
            },
        );
    }
    let (status, b, resp) = h.offboard(&body(Some("fabrikam"), &[FAB_LAPTOP])).await;
    assert_eq!(status, 503, "{b}");
    assert_eq!(statuses(&b), ["failed"]);
    assert!(resp.headers().get("retry-after").is_some());
    let (status, b, _) = h
        .offboard(&body(Some("contoso"), &[ids::WIN10, ids::WIN11]))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(statuses(&b), ["offboard_requested", "offboard_requested"]);
}

/// A broken tenant entry stops only that tenant.
#[tokio::test]
async fn a_malformed_tenant_entry_stops_only_its_tenant() {
    let h = harness(None, json!({"broken": {"client_id": "c"}})).await;
    let (status, b, _) = h.offboard(&body(Some("broken"), &[ids::WIN10])).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (500, Some("bad_secret"))
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tenants.broken.tenant_id"),
        "{b}"
    );
    let (_, b, _) = h.offboard(&body(Some("contoso"), &[ids::WIN10])).await;
    assert_eq!(statuses(&b), ["offboard_requested"]);
    let (_, b, _) = h.send(signed("GET", "/v1/health", "")).await;
    assert_eq!(b["status"], "failing");
    let failing: Vec<(&str, &str)> = b["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| (c["tenant"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    assert!(failing.iter().all(|(t, _)| *t == "broken"), "{failing:?}");
    assert!(failing.contains(&("broken", "secret")));
}

/// A ticket read for one tenant lists only that tenant's devices.
#[tokio::test]
async fn a_ticket_read_lists_only_its_tenants_devices() {
    let mut h = harness(None, json!({})).await;
    let app = std::mem::replace(&mut h.app, Harness::new().await.app);
    h.app = app.with_ledger(Arc::new(InMemoryLedger::new()));
    let (_, b, _) = h.offboard(&body(Some("fabrikam"), &[FAB_LAPTOP])).await;
    assert_eq!(statuses(&b), ["offboard_requested"]);
    let (_, b, _) = h.offboard(&body(Some("contoso"), &[ids::WIN10])).await;
    assert_eq!(statuses(&b), ["offboard_requested"]);
    for (tenant, machine) in [("contoso", ids::WIN10), ("fabrikam", FAB_LAPTOP)] {
        let (status, b, _) = h
            .send(signed(
                "GET",
                &format!("/v1/tickets/INC-77?tenant={tenant}"),
                "",
            ))
            .await;
        assert_eq!(status, 200, "{b}");
        let machines: Vec<&str> = b["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["machine_id"].as_str().unwrap())
            .collect();
        assert_eq!(machines, [machine], "{tenant}: {b}");
    }
    let (status, b, _) = h.send(signed("GET", "/v1/tickets/INC-77", "")).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (422, Some("unknown_tenant"))
    );
}

/// A webhook source's deliveries act in the source's tenant; one naming
/// none is ignored (202): its sender cannot fix its content.
#[tokio::test]
async fn a_source_acts_in_its_own_tenant() {
    let sources = r#"{"sources": {
        "fab-soar": {"auth": {"scheme": "api-key", "header": "x-api-key", "secret": "servicenow"},
                     "ticket": "/ticket", "devices": ["/devices"], "tenant": "fabrikam"},
        "nobody": {"auth": {"scheme": "api-key", "header": "x-api-key", "secret": "servicenow"},
                   "ticket": "/ticket", "devices": ["/devices"]}}}"#;
    let h = harness(Some(sources), json!({})).await;
    let key = "snow-bearer-token-never-log";
    let payload = json!({"ticket": "INC-78", "devices": [FAB_LAPTOP]}).to_string();
    let send = |source: &str| {
        request(
            "POST",
            &format!("/v1/webhooks/{source}"),
            &[("x-api-key", key)],
            &payload,
        )
    };
    let (status, b, _) = h.send(send("fab-soar")).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(statuses(&b), ["offboard_requested"]);
    let (status, b, _) = h.send(send("nobody")).await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(b["status"], "ignored");
    assert_eq!(h.fake.accepted_offboards().len(), 1);
}
