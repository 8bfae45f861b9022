//! The README's main command, as a newcomer runs it: start `mde-local`
//! against the simulated tenant, send signed sample events with its `send`
//! helper, read the results.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> String {
    format!("{}/..", env!("CARGO_MANIFEST_DIR"))
}

/// Starts the local run on a free port and returns it with its base URL,
/// read from the line it prints when it listens.
fn start() -> (Server, String) {
    start_with(&[])
}

fn start_with(args: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mde-local"))
        .args(["--port", "0"])
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mde-local");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let url = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(url);
            }
        }
    });
    let server = Server(child);
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("mde-local printed where it listens");
    (server, url)
}

fn send(url: &str, file: &str) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_mde-local"))
        .args(["send", file, "--url", url])
        .current_dir(root())
        .output()
        .expect("run mde-local send");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text.split_once('\n').map(|(_, j)| j).unwrap_or("");
    (
        out.status.success(),
        serde_json::from_str(json).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

fn call(url: &str, args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_mde-local"))
        .args(args)
        .args(["--url", url])
        .current_dir(root())
        .output()
        .expect("run mde-local");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text.split_once('\n').map(|(_, j)| j).unwrap_or("");
    (
        out.status.success(),
        serde_json::from_str(json).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

#[test]
fn the_local_run_keeps_a_ledger_of_tickets_and_cancels() {
    let (_server, url) = start();
    let (ok, first) = send(&url, "events/generic.json");
    assert!(ok, "{first}");
    let action = first["results"][0]["action_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, ticket) = call(&url, &["get", "/v1/tickets/INC0012345"]);
    assert!(ok, "{ticket}");
    let devices = ticket["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{ticket}");
    assert_eq!(devices[0]["action_id"], action.as_str());
    assert_eq!(devices[0]["action_status"], "Pending");
    let (ok, cancelled) = call(
        &url,
        &[
            "post",
            &format!("/v1/actions/{action}/cancel"),
            r#"{"comment": "named by mistake"}"#,
        ],
    );
    assert!(ok, "{cancelled}");
    assert_eq!(cancelled["status"], "Cancelled");
    let (_, ticket) = call(&url, &["get", "/v1/tickets/INC0012345"]);
    assert_eq!(
        ticket["devices"][0]["action_status"], "Cancelled",
        "{ticket}"
    );
}

fn statuses(v: &serde_json::Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_newcomer_sees_every_outcome() {
    let (_server, url) = start();
    let (ok, first) = send(&url, "events/generic.json");
    assert!(ok, "{first}");
    assert_eq!(
        statuses(&first),
        [
            "offboard_requested",
            "ambiguous",
            "unsupported_os",
            "protected",
            "not_found"
        ]
    );
    let (_, again) = send(&url, "events/generic.json");
    assert_eq!(statuses(&again)[0], "already_pending");
    let (_, dry) = send(&url, "events/generic-dry-run.json");
    assert_eq!(statuses(&dry), ["would_offboard", "would_offboard"]);
    for preset in ["jira", "pagerduty", "servicenow", "defender-incident"] {
        let (ok, v) = send(&url, &format!("events/{preset}.json"));
        assert!(ok, "{preset}: {v}");
        assert!(
            v["results"].as_array().is_some_and(|r| !r.is_empty()),
            "{preset}: {v}"
        );
    }
}

/// The health check against the local tenant: ok as it comes; failing,
/// naming the check, when its consent is missing or the secret is wrong.
#[test]
fn the_health_check_passes_locally_and_names_what_breaks() {
    let check = |v: &serde_json::Value, name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    let (_s, url) = start();
    let (ok, v) = call(&url, &["get", "/v1/health"]);
    assert!(ok, "{v}");
    assert_eq!(v["status"], "ok", "{v}");

    let (_s, url) = start_with(&["--roles", "Machine.Read.All"]);
    let (_, v) = call(&url, &["get", "/v1/health"]);
    assert_eq!(v["status"], "failing", "{v}");
    let p = check(&v, "permissions");
    assert_eq!(p["ok"], false);
    assert!(
        p["detail"].as_str().unwrap().contains("Machine.Offboard"),
        "{p}"
    );

    let (_s, url) = start_with(&["--client-secret", "expired-secret-value"]);
    let (_, v) = call(&url, &["get", "/v1/health"]);
    assert_eq!(v["status"], "failing", "{v}");
    let t = check(&v, "token");
    assert_eq!(t["ok"], false);
    assert!(
        t["detail"].as_str().unwrap().contains("AADSTS7000215"),
        "{t}"
    );
}

/// `--tenants`: two simulated tenants; each request names one and sees
/// only that tenant's machines.
#[test]
fn the_local_run_simulates_two_tenants() {
    let (_s, url) = start_with(&["--tenants"]);
    let offboard = |tenant: &str, device: &str| {
        let body = serde_json::json!({"ticket": "INC-9", "comment": "retired",
            "devices": [device], "tenant": tenant});
        call(&url, &["post", "/v1/offboard", &body.to_string()]).1
    };
    let fab = "fa0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b";
    assert_eq!(
        offboard("fabrikam", fab)["results"][0]["status"],
        "offboard_requested"
    );
    assert_eq!(
        offboard("contoso", fab)["results"][0]["status"],
        "not_found"
    );
    let (_, v) = call(&url, &["get", "/v1/health"]);
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(
        v["checks"].as_array().unwrap().len(),
        8,
        "four checks per tenant: {v}"
    );
}
