//! Cancel through the Defender port's HTTP adapter against the stateful
//! fake: a pending offboard is cancelled once; a final one is refused in
//! Defender's error shape; an unknown one is not found.

use std::sync::Arc;
use std::time::Duration;

use mde_offboard::domain::secret::{SecretCache, StaticSecret};

use mde_offboard::adapters::defender_http::HttpDefender;
use mde_offboard::adapters::entra::TokenProvider;
use mde_offboard::domain::defender::{Defender, DefenderError};
use mde_offboard::domain::limits::{Deadline, Limiters};
use mde_offboard::domain::model::MachineId;
use mde_testkit::defender::SCOPE;
use mde_testkit::{Api, FakeDefender, demo_machines, ids};

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
