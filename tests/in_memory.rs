//! The ingest path and the domain over in-memory ports: a Defender that
//! lives in a map and a fixed secret. No network, no moto: the request is
//! built from an events/ fixture, as lambda_http would hand it over.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use lambda_http::{Body, Request};
use mde_offboard::App;
use mde_offboard::config::Config;
use mde_offboard::domain::defender::{Defender, DefenderError, Machine, MachineAction};
use mde_offboard::domain::limits::Deadline;
use mde_offboard::domain::model::{DeviceName, MachineId};
use mde_offboard::domain::secret::StaticSecret;
use mde_offboard::support::webhook_sig::StandardWebhooks;
use mde_testkit::{GENERIC_WEBHOOK_SECRET, secret_json};
use serde_json::{Value, json};
use std::sync::Arc;

const LAPTOP: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
const DC: &str = "c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

/// Machines by id; offboards recorded, a second one is `already_pending`.
#[derive(Default)]
struct MemoryDefender {
    machines: HashMap<String, Machine>,
    offboarded: Mutex<Vec<(String, String)>>,
}

impl MemoryDefender {
    fn with(machines: &[(&str, &str, &str, &[&str])]) -> Self {
        let machines = machines
            .iter()
            .map(|(id, name, platform, tags)| {
                let m: Machine = serde_json::from_value(json!({
                    "id": id, "computerDnsName": name, "osPlatform": platform,
                    "osBuild": 22631, "machineTags": tags, "healthStatus": "Active"
                }))
                .unwrap();
                (id.to_string(), m)
            })
            .collect();
        Self {
            machines,
            ..Default::default()
        }
    }
}

fn ready<'a, T: Send + 'a>(v: Result<T, DefenderError>) -> BoxFuture<'a, Result<T, DefenderError>> {
    Box::pin(async move { v })
}

impl Defender for MemoryDefender {
    fn find_by_name<'a>(
        &'a self,
        name: &'a DeviceName,
        _: &'a Deadline,
    ) -> BoxFuture<'a, Result<Vec<Machine>, DefenderError>> {
        let found = self
            .machines
            .values()
            .filter(|m| {
                m.computer_dns_name
                    .as_deref()
                    .is_some_and(|n| name.matches(n))
            })
            .cloned()
            .collect();
        ready(Ok(found))
    }
    fn get_machine<'a>(
        &'a self,
        id: &'a MachineId,
        _: &'a Deadline,
    ) -> BoxFuture<'a, Result<Machine, DefenderError>> {
        ready(
            self.machines
                .get(id.as_str())
                .cloned()
                .ok_or(DefenderError::NotFound),
        )
    }
    fn offboard<'a>(
        &'a self,
        id: &'a MachineId,
        comment: &'a str,
        _: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>> {
        let mut done = self.offboarded.lock().unwrap();
        if done.iter().any(|(m, _)| m == id.as_str()) {
            return ready(Err(DefenderError::Refused {
                status: 400,
                code: "ActiveRequestAlreadyExists".into(),
            }));
        }
        done.push((id.as_str().to_string(), comment.to_string()));
        let action = serde_json::from_value(json!({
            "id": format!("action-{}", done.len()), "type": "Offboard",
            "status": "Pending", "machineId": id.as_str()
        }))
        .unwrap();
        ready(Ok(action))
    }
    fn get_action<'a>(
        &'a self,
        _: &'a str,
        _: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>> {
        ready(Err(DefenderError::NotFound))
    }
    fn cancel_action<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>> {
        ready(Err(DefenderError::NotFound))
    }
}

fn app(defender: Arc<MemoryDefender>) -> App {
    let env: HashMap<&str, &str> = [
        ("SECRET_ID", "in-memory"),
        ("PROTECTED_TAGS", "VIP"),
        ("MDE_API_URL", "http://127.0.0.1:9"),
        ("MDE_LOGIN_URL", "http://127.0.0.1:9"),
    ]
    .into();
    let config = Config::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
    mde_offboard::init::Wiring::new(config, Arc::new(StaticSecret(secret_json())))
        .defender(defender)
        .build()
}

/// events/generic.json with this body, signed now.
fn signed_fixture(body: &Value, id: &str) -> Request {
    let mut event: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/events/generic.json"))
            .unwrap(),
    )
    .unwrap();
    let body = body.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sig = StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
        .unwrap()
        .sign(id, now, body.as_bytes());
    event["headers"]["webhook-id"] = json!(id);
    event["headers"]["webhook-timestamp"] = json!(now.to_string());
    event["headers"]["webhook-signature"] = json!(sig);
    event["body"] = json!(body);
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

async fn send(app: &App, req: Request) -> (u16, Value) {
    let resp = mde_offboard::inbound::http::handle(app, req).await;
    let status = resp.status().as_u16();
    let body = match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        _ => Value::Null,
    };
    (status, body)
}

#[tokio::test]
async fn the_whole_ingest_path_runs_over_in_memory_ports() {
    let defender = Arc::new(MemoryDefender::with(&[
        (LAPTOP, "laptop-17.contoso.com", "Windows11", &[]),
        (DC, "dc-01.contoso.com", "WindowsServer2022", &["VIP"]),
    ]));
    let app = app(defender.clone());
    let body = json!({"ticket": "INC1", "comment": "retired",
        "devices": [LAPTOP, "DC-01.contoso.com", "nobody.contoso.com"]});

    let (status, answer) = send(&app, signed_fixture(&body, "msg_mem_1")).await;
    assert_eq!(status, 200, "{answer}");
    let statuses: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["offboard_requested", "protected", "not_found"]);
    let sent = defender.offboarded.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, LAPTOP);
    assert!(sent[0].1.contains("INC1") && sent[0].1.contains("retired"));

    // The same delivery again is a replay: no second offboard.
    let (status, again) = send(&app, signed_fixture(&body, "msg_mem_1")).await;
    assert_eq!((status, &again), (200, &answer));
    assert_eq!(defender.offboarded.lock().unwrap().len(), 1);

    // A new delivery naming the same machine: already pending.
    let (_, third) = send(&app, signed_fixture(&body, "msg_mem_2")).await;
    assert_eq!(third["results"][0]["status"], "already_pending");

    // A typo is refused before anything is called.
    let typo = json!({"ticket": "INC1", "comment": "x", "devices": [LAPTOP], "dryRun": true});
    let (status, err) = send(&app, signed_fixture(&typo, "msg_mem_3")).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("unknown_field"))
    );
    assert_eq!(defender.offboarded.lock().unwrap().len(), 1);
}
