//! Cancel through the Defender port's HTTP adapter against the stateful
//! fake: a pending offboard is cancelled once; a final one is refused in
//! Defender's error shape; an unknown one is not found.

mod common;

use std::sync::Arc;
use std::time::Duration;

use mde_offboard::domain::secret::{SecretCache, StaticSecret};

use common::ids;
use mde_offboard::adapters::defender_http::HttpDefender;
use mde_offboard::adapters::entra::TokenProvider;
use mde_offboard::domain::defender::{Defender, DefenderError};
use mde_offboard::domain::limits::{Deadline, Limiters};
use mde_offboard::domain::model::MachineId;
use mde_testkit::defender::SCOPE;
use mde_testkit::{Api, FakeDefender, demo_machines};

fn adapter(fake: &FakeDefender) -> HttpDefender {
    let http = reqwest::Client::new();
    let secrets = Arc::new(SecretCache::new(
        Arc::new(StaticSecret(mde_testkit::secret_json())),
        Duration::from_secs(300),
    ));
    let tokens = Arc::new(TokenProvider::new(http.clone(), fake.url(), SCOPE.into()));
    HttpDefender::new(
        http,
        fake.url(),
        secrets,
        tokens,
        Arc::new(Limiters::default()),
    )
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(30))
}

#[tokio::test]
async fn a_pending_offboard_is_cancelled_and_then_is_final() {
    let fake = FakeDefender::start(demo_machines()).await;
    let d = adapter(&fake);
    let id = MachineId::parse(ids::WIN11).unwrap();
    let action = d.offboard(&id, "INC-1: left", &deadline()).await.unwrap();
    let cancelled = d
        .cancel_action(&action.id, "INC-1: mistaken", &deadline())
        .await
        .unwrap();
    assert_eq!(cancelled.id, action.id);
    assert_eq!(cancelled.status.as_deref(), Some("Cancelled"));
    let call = fake
        .calls()
        .into_iter()
        .find(|c| c.api == Api::Cancel)
        .expect("a cancel call");
    assert_eq!(call.method, "POST");
    assert_eq!(
        call.path,
        format!("/api/machineactions/{}/cancel", action.id)
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&call.body).unwrap(),
        serde_json::json!({"Comment": "INC-1: mistaken"})
    );
    assert_eq!(
        fake.action(&action.id).unwrap()["cancellationComment"],
        "INC-1: mistaken"
    );
    // No longer pending: the machine can be offboarded again.
    assert_eq!(fake.pending_action(ids::WIN11), None);
    let again = d.cancel_action(&action.id, "twice", &deadline()).await;
    assert!(
        matches!(again, Err(DefenderError::Refused { status: 400, .. })),
        "{again:?}"
    );
    assert_eq!(fake.count(Api::Cancel), 2);
}

#[tokio::test]
async fn a_succeeded_action_is_not_cancelled() {
    let fake = FakeDefender::start(demo_machines()).await;
    let d = adapter(&fake);
    let id = MachineId::parse(ids::WIN10).unwrap();
    let action = d.offboard(&id, "INC-2: left", &deadline()).await.unwrap();
    fake.set_action_status(&action.id, "Succeeded");
    let r = d.cancel_action(&action.id, "too late", &deadline()).await;
    assert!(
        matches!(r, Err(DefenderError::Refused { status: 400, .. })),
        "{r:?}"
    );
    assert_eq!(fake.action(&action.id).unwrap()["status"], "Succeeded");
}

#[tokio::test]
async fn an_unknown_action_is_not_found() {
    let fake = FakeDefender::start(demo_machines()).await;
    let d = adapter(&fake);
    let r = d
        .cancel_action("00000000-0000-0000-0000-000000000000", "x", &deadline())
        .await;
    assert_eq!(r.unwrap_err(), DefenderError::NotFound);
    assert_eq!(fake.count(Api::Cancel), 1);
}

/// The cancel route (contract, "Routes"): offboards only, and with the
/// ledger only an offboard this deployment requested; anything else is
/// refused before Defender sees a cancel.
mod route {
    use std::sync::Arc;

    use super::common::{Harness, signed};
    use mde_offboard::adapters::memory::ledger::InMemoryLedger;
    use mde_testkit::{Api, ids};
    use serde_json::json;

    fn cancel(action_id: &str) -> lambda_http::Request {
        signed(
            "POST",
            &format!("/v1/actions/{action_id}/cancel"),
            &json!({"comment": "mistaken"}).to_string(),
        )
    }

    #[tokio::test]
    async fn an_isolation_is_not_cancelled() {
        let h = Harness::new().await;
        let isolation = h.fake.add_action(ids::WIN11, "Isolate");
        let (status, body, _) = h.send(cancel(&isolation)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("not_an_offboard")),
            "{body}"
        );
        assert_eq!(h.fake.count(Api::Cancel), 0, "Defender saw no cancel");
        assert_eq!(h.fake.action(&isolation).unwrap()["status"], "Pending");
    }

    #[tokio::test]
    async fn with_the_ledger_only_this_deployments_offboards_are_cancelled() {
        let Harness {
            fake,
            app,
            secret_name,
        } = Harness::new().await;
        let h = Harness {
            fake,
            app: app.with_ledger(Arc::new(InMemoryLedger::new())),
            secret_name,
        };
        // An offboard someone started elsewhere (the portal, another tool).
        let machine = h.fake.add_action(ids::WIN11, "Offboard");
        let (status, body, _) = h.send(cancel(&machine)).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(h.fake.count(Api::Cancel), 0, "Defender saw no cancel");

        // One this deployment requested is cancelled.
        let (status, body, _) = h
            .offboard(
                &json!({"ticket": "INC-9", "comment": "retired", "devices": [ids::SERVER2022]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let ours = body["results"][0]["action_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, body, _) = h.send(cancel(&ours)).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("Cancelled")),
            "{body}"
        );
        assert_eq!(h.fake.count(Api::Cancel), 1);
    }
}
