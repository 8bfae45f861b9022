//! Test support for mde-offboard: local, stateful fakes of the services the
//! function talks to, a Lambda Runtime API endpoint, moto's Secrets Manager,
//! and builders for real-shaped events. None of it is in the Lambda binary.

pub mod autoscaling;
pub mod callback;
pub mod defender;
pub mod entra;
pub mod events;
pub mod ledger_table;
pub mod moto;
pub mod proxy;
pub mod python;
pub mod runtime;
pub mod secrets;
pub mod serial;
pub mod sts;
pub mod ticketing;
pub mod tls;

pub use autoscaling::{AsgCall, AsgFault, FakeAutoScaling};
pub use callback::{CallbackReceiver, Received};
pub use defender::{Api, Call, FakeDefender, FakeMachine, Fault, FederatedCredential};
pub use ledger_table::ledger_table_from_template;
pub use python::{PythonEnv, python_env};
pub use runtime::{FakeRuntime, Outcome};
pub use secrets::FakeSecretsManager;
pub use sts::{FakeSts, StsFault};
pub use ticketing::{FakeTicketing, Written};

/// The hex HMAC-SHA256 of `body` a sender signing with `secret` puts
/// after its prefix (GitHub-style `sha256=`, PagerDuty's `v1=`).
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Machine ids of the demo tenant, one per case a newcomer should see.
pub mod ids {
    pub const WIN11: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
    pub const SERVER2022: &str = "7f3c2a9d1b8e4f6a0c5d3e2b1a9f8e7d6c5b4a39";
    pub const LINUX: &str = "a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";
    pub const MACOS: &str = "b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
    pub const PROTECTED: &str = "c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    pub const DUP_A: &str = "d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
    pub const DUP_B: &str = "e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a";
    pub const WIN10: &str = "f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b";
}

/// The simulated tenant: Windows 11 and 10, a server, Linux, macOS, one
/// machine tagged `VIP`, and two machines sharing one name.
pub fn demo_machines() -> Vec<FakeMachine> {
    vec![
        FakeMachine::new(ids::WIN11, "laptop-17.contoso.com", "Windows11"),
        FakeMachine::new(ids::WIN10, "desktop-04.contoso.com", "Windows10"),
        FakeMachine::new(
            ids::SERVER2022,
            "srv-app-01.contoso.com",
            "WindowsServer2022",
        ),
        FakeMachine::new(ids::LINUX, "build-linux-02.contoso.com", "Linux"),
        FakeMachine::new(ids::MACOS, "mbp-design-03.contoso.com", "macOS"),
        FakeMachine::new(ids::PROTECTED, "dc-01.contoso.com", "WindowsServer2019").tagged("VIP"),
        FakeMachine::new(ids::DUP_A, "kiosk-01.contoso.com", "Windows10"),
        FakeMachine::new(ids::DUP_B, "kiosk-01.contoso.com", "Windows10"),
    ]
}

/// The webhook secret the tests and the local run sign with.
pub const GENERIC_WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The key the tests' secret seals queue messages with
/// (`webhook_secrets.queue`).
pub const QUEUE_SECRET: &str = "whsec_bWRlLW9mZmJvYXJkIHRlc3QgcXVldWUga2V5IDAwMDE=";

/// The secret of federated mode: no client secret at all.
pub fn federated_secret_json() -> String {
    let mut v: serde_json::Value = serde_json::from_str(&secret_json()).expect("json");
    v.as_object_mut().expect("object").remove("client_secret");
    v.to_string()
}

/// The secret's JSON as the contract lays it out, with the fake's client.
pub fn secret_json() -> String {
    serde_json::json!({
        "tenant_id": defender::TENANT_ID,
        "client_id": defender::CLIENT_ID,
        "client_secret": defender::CLIENT_SECRET,
        "webhook_secrets": {
            "generic": GENERIC_WEBHOOK_SECRET,
            "jira": "jira-webhook-secret-never-log",
            "jira_automation": "jira-automation-token-never-log",
            "pagerduty": ["pd-new-secret-never-log", "pd-old-secret-never-log"],
            "servicenow": "snow-bearer-token-never-log",
            "defender-incident": "xdr-bearer-token-never-log",
            "queue": QUEUE_SECRET,
        }
    })
    .to_string()
}
