//! The durable ledger end to end: two built `bootstrap` processes, each
//! under its own Runtime API endpoint as two Lambda instances are, sharing
//! one table in moto (created from template.yaml's `LedgerTable`, reached
//! through the standard `AWS_ENDPOINT_URL_DYNAMODB` override) and one fake
//! Defender. Written against the contract's "The ledger" section and the
//! cancel and tickets routes.
//!
//! moto does not serialise conditional writes to an item as DynamoDB does,
//! so the processes reach it through `SerialProxy` (one request at a time);
//! the outage test puts a `FlakyProxy` in front instead.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use mde_offboard::support::webhook_sig::StandardWebhooks;
use mde_testkit::proxy::{FlakyProxy, Mode};
use mde_testkit::serial::SerialProxy;
use mde_testkit::{
    Api, FakeDefender, FakeRuntime, Fault, GENERIC_WEBHOOK_SECRET, Outcome, demo_machines, events,
    ledger_table_from_template, moto,
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

const BUDGET: Duration = Duration::from_secs(20);

fn moto_addr() -> std::net::SocketAddr {
    moto::moto()
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("moto's address")
}

/// One function instance: the binary and the Runtime API it polls.
struct Instance {
    runtime: FakeRuntime,
    child: Child,
    stdout: tokio::task::JoinHandle<String>,
}

fn drain(
    mut r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s).await;
        s
    })
}

impl Instance {
    /// Starts `bootstrap` against `fake`, with the ledger at `dynamodb`
    /// (table `table`) when given, and `extra` variables.
    async fn start(
        fake: &FakeDefender,
        ledger: Option<(&str, &str)>,
        extra: &[(&str, &str)],
    ) -> Self {
        let runtime = FakeRuntime::start().await;
        let secret = put_secret(&mde_testkit::secret_json()).await;
        let mut c = Command::new(env!("CARGO_BIN_EXE_bootstrap"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(runtime.lambda_env())
            .env("SECRET_ID", &secret)
            .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto::moto().endpoint)
            .env("MDE_API_URL", fake.url())
            .env("MDE_LOGIN_URL", fake.url());
        if let Some((table, endpoint)) = ledger {
            c.env("LEDGER_TABLE", table)
                .env("AWS_ENDPOINT_URL_DYNAMODB", endpoint);
        }
        c.envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = c.spawn().expect("start bootstrap");
        let stdout = drain(child.stdout.take().expect("stdout"));
        Self {
            runtime,
            child,
            stdout,
        }
    }

    async fn send(&self, event: Value) -> Answer {
        self.send_within(event, BUDGET).await
    }

    /// Invokes with a Lambda deadline `budget` from now.
    async fn send_within(&self, event: Value, budget: Duration) -> Answer {
        Answer::of(self.runtime.invoke(event, budget).await)
    }

    /// Stops the process and returns what it wrote to stdout.
    async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.stdout.await.unwrap_or_default()
    }
}

/// An HTTP answer as the Runtime API received it.
#[derive(Debug)]
struct Answer {
    status: u16,
    raw_body: String,
    body: Value,
    headers: Value,
}

impl Answer {
    fn of(outcome: Option<Outcome>) -> Self {
        match outcome {
            Some(Outcome::Response(v)) => {
                let raw_body = v["body"].as_str().unwrap_or_default().to_string();
                Self {
                    status: v["statusCode"].as_u64().unwrap_or(0) as u16,
                    body: serde_json::from_str(&raw_body).unwrap_or(Value::Null),
                    raw_body,
                    headers: v["headers"].clone(),
                }
            }
            other => panic!("no HTTP answer from the runtime: {other:?}"),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers[name].as_str()
    }

    fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    fn statuses(&self) -> Vec<&str> {
        self.body["results"]
            .as_array()
            .map(|r| r.iter().filter_map(|d| d["status"].as_str()).collect())
            .unwrap_or_default()
    }

    /// Retry-After as whole seconds; the test fails if it is missing.
    fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric Retry-After on {self:?}"))
    }
}

/// A signed delivery whose `webhook-id` is `id`: the same id (and the same
/// signature) sent twice is the same delivery.
fn delivery(method: &str, path: &str, id: &str, body: &str) -> Value {
    let ts = now();
    let sig = StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
        .unwrap()
        .sign(id, ts, body.as_bytes());
    let ts = ts.to_string();
    events::http_api_v2(
        method,
        path,
        &[
            ("webhook-id", id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        body,
    )
}

fn fresh_id(what: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "msg_ledger_{what}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

fn offboard(ticket: &str, devices: &[&str]) -> Value {
    let body = json!({"ticket": ticket, "comment": "Laptop retired", "devices": devices});
    delivery(
        "POST",
        "/v1/offboard",
        &fresh_id("offboard"),
        &body.to_string(),
    )
}

/// `GET` routes are signed over the empty body, like `GET /v1/actions`.
fn get(path: &str) -> Value {
    delivery("GET", path, &fresh_id("get"), "")
}

fn cancel(action_id: &str, body: &str) -> Value {
    delivery(
        "POST",
        &format!("/v1/actions/{action_id}/cancel"),
        &fresh_id("cancel"),
        body,
    )
}

/// Waits (polling, bounded) until the fake has taken the queued fault, that
/// is until a process's offboard call is being held there.
async fn until_held(fake: &FakeDefender) {
    let start = Instant::now();
    while fake.faults_left() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the offboard never reached the fake Defender"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Offboard calls that reached the fake, whatever it answered.
fn offboard_calls(fake: &FakeDefender) -> usize {
    fake.count(Api::Offboard)
}

/// Two instances sharing one new ledger table behind a serialising proxy.
async fn two_instances(
    fake: &FakeDefender,
    extra: &[(&str, &str)],
) -> (Instance, Instance, SerialProxy, String) {
    let table = ledger_table_from_template().await;
    let proxy = SerialProxy::start(moto_addr()).await;
    let url = proxy.url();
    let a = Instance::start(fake, Some((&table, &url)), extra).await;
    let b = Instance::start(fake, Some((&table, &url)), extra).await;
    (a, b, proxy, table)
}

fn emf_sum(stdout: &str, metric: &str) -> f64 {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l.get("_aws").is_some())
        .filter_map(|l| l[metric].as_f64())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_answered_by_one_instance_is_replayed_by_the_other() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (a, b, _proxy, _table) = two_instances(&fake, &[]).await;
    let body =
        json!({"ticket": "INC-REPLAY", "comment": "Laptop retired", "devices": [ids::WIN11]})
            .to_string();
    let id = fresh_id("replay");

    let first = a.send(delivery("POST", "/v1/offboard", &id, &body)).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.statuses(), ["offboard_requested"]);
    assert_eq!(first.header("x-mde-replay"), None);

    let second = b.send(delivery("POST", "/v1/offboard", &id, &body)).await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(
        second.header("x-mde-replay"),
        Some("true"),
        "the other instance processed the delivery again: {second:?}"
    );
    assert_eq!(second.raw_body, first.raw_body);
    assert_eq!(
        offboard_calls(&fake),
        1,
        "exactly one offboard reaches Defender"
    );
    assert_eq!(fake.count(Api::GetMachine), 1, "the replay calls nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_while_the_first_runs_is_409_in_progress_with_retry_after() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (a, b, _proxy, _table) = two_instances(&fake, &[]).await;
    let body = json!({"ticket": "INC-DUP", "comment": "Laptop retired", "devices": [ids::WIN10]})
        .to_string();
    let id = fresh_id("dup");
    fake.fault(Api::Offboard, Fault::Delay(Duration::from_secs(4)));

    let event = delivery("POST", "/v1/offboard", &id, &body);
    let first = tokio::spawn(async move {
        let answer = a.send(event).await;
        (answer, a)
    });
    until_held(&fake).await;
    let dup = b.send(delivery("POST", "/v1/offboard", &id, &body)).await;
    assert_eq!(dup.status, 409, "{dup:?}");
    assert_eq!(dup.error_code(), Some("in_progress"), "{dup:?}");
    let wait = dup.retry_after();
    assert!(
        (1..=BUDGET.as_secs()).contains(&wait),
        "Retry-After {wait} s"
    );

    let (first, _a) = first.await.unwrap();
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.statuses(), ["offboard_requested"]);
    assert_eq!(offboard_calls(&fake), 1);

    // Once the first is done, the duplicate is its replay.
    let later = b.send(delivery("POST", "/v1/offboard", &id, &body)).await;
    assert_eq!(later.header("x-mde-replay"), Some("true"), "{later:?}");
    assert_eq!(later.raw_body, first.raw_body);
    assert_eq!(offboard_calls(&fake), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_instance_died_proceeds_elsewhere_after_its_deadline() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (a, b, _proxy, _table) = two_instances(&fake, &[]).await;
    let body =
        json!({"ticket": "INC-DIED", "comment": "Laptop retired", "devices": [ids::SERVER2022]})
            .to_string();
    let id = fresh_id("died");
    // Held far longer than the test: the killed instance's call never
    // completes in the fake.
    fake.fault(Api::Offboard, Fault::Delay(Duration::from_secs(120)));

    // Short, so the test waits little for the record to expire; long
    // enough that the instance is killed before it gives up on the held
    // call itself (1.5 s before the deadline) and answers.
    let short = Duration::from_secs(5);
    let started = Instant::now();
    let event = delivery("POST", "/v1/offboard", &id, &body);
    let runtime = a.runtime.clone();
    let lost = tokio::spawn(async move { runtime.invoke(event, short).await });
    until_held(&fake).await;
    let _ = a.stop().await;

    // Before the dead invocation's deadline the record still holds it.
    let early = b.send(delivery("POST", "/v1/offboard", &id, &body)).await;
    assert!(started.elapsed() < short, "the test itself was too slow");
    assert_eq!(early.status, 409, "{early:?}");
    assert_eq!(early.error_code(), Some("in_progress"));
    let wait = early.retry_after();
    assert!((1..=short.as_secs()).contains(&wait), "{early:?}");
    // Waiting out the Retry-After the function gave, as a sender does.
    tokio::time::sleep(Duration::from_secs(wait)).await;

    let retry = b.send(delivery("POST", "/v1/offboard", &id, &body)).await;
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(retry.header("x-mde-replay"), None);
    assert_eq!(retry.statuses(), ["offboard_requested"]);
    assert_eq!(fake.accepted_offboards().len(), 1);
    assert_eq!(lost.await.unwrap(), None, "the killed instance answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_budget_holds_across_two_instances() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (a, b, _proxy, _table) = two_instances(&fake, &[("MAX_OFFBOARDS_PER_HOUR", "3")]).await;
    let (one, two) = tokio::join!(
        a.send(offboard("INC-B1", &[ids::WIN11, ids::WIN10])),
        b.send(offboard("INC-B2", &[ids::SERVER2022, ids::DUP_A])),
    );
    let three = a.send(offboard("INC-B3", &[ids::DUP_B])).await;

    let mut requested = 0;
    let mut exceeded = Vec::new();
    for answer in [&one, &two, &three] {
        assert_eq!(answer.status, 200, "{answer:?}");
        for r in answer.body["results"].as_array().unwrap() {
            match r["status"].as_str() {
                Some("offboard_requested") => requested += 1,
                Some("budget_exceeded") => {
                    exceeded.push(r["machine_id"].as_str().unwrap_or_default().to_string());
                    assert!(
                        r.get("action_id").is_none_or(Value::is_null),
                        "nothing was sent for {r}"
                    );
                }
                other => panic!("unexpected status {other:?} in {answer:?}"),
            }
        }
    }
    assert_eq!(
        (requested, exceeded.len()),
        (3, 2),
        "{one:?}\n{two:?}\n{three:?}"
    );
    assert!(
        fake.accepted_offboards().len() <= 3,
        "more than the budget reached Defender"
    );
    assert_eq!(offboard_calls(&fake), 3);
    for machine in &exceeded {
        assert!(
            !fake
                .calls()
                .iter()
                .any(|c| c.api == Api::Offboard && c.path.contains(machine.as_str())),
            "an offboard was sent for {machine}, over the budget"
        );
    }

    let out = format!("{}{}", a.stop().await, b.stop().await);
    assert_eq!(emf_sum(&out, "BudgetExceeded"), 2.0, "{out}");
}

/// The review's L3: the budget counts offboards Defender accepted. With a
/// budget of 2, two devices that come back `already_pending` and one that
/// comes back `failed` leave it whole for the next request, on another
/// instance; and what was accepted is still counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_defender_did_not_accept_leave_the_budget_whole() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (a, b, _proxy, _table) = two_instances(&fake, &[("MAX_OFFBOARDS_PER_HOUR", "2")]).await;
    for machine in [ids::WIN11, ids::WIN10] {
        fake.fault_on(
            Api::Offboard,
            machine,
            Fault::Status {
                status: 400,
                code: "ActiveRequestAlreadyExists".into(),
            },
        );
    }
    fake.fault_on(
        Api::Offboard,
        ids::SERVER2022,
        Fault::Status {
            status: 400,
            code: "InvalidRequest".into(),
        },
    );
    let pending = a
        .send(offboard("INC-L3-1", &[ids::WIN11, ids::WIN10]))
        .await;
    assert_eq!(pending.status, 200, "{pending:?}");
    assert_eq!(pending.statuses(), ["already_pending", "already_pending"]);
    let failed = a.send(offboard("INC-L3-2", &[ids::SERVER2022])).await;
    assert_eq!(failed.statuses(), ["failed"], "{failed:?}");

    let next = b
        .send(offboard("INC-L3-3", &[ids::DUP_A, ids::DUP_B]))
        .await;
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(
        next.statuses(),
        ["offboard_requested", "offboard_requested"],
        "the budget was spent on offboards Defender never accepted"
    );
    // Those two are counted: the hour is spent.
    let over = a.send(offboard("INC-L3-4", &[ids::WIN11])).await;
    assert_eq!(over.statuses(), ["budget_exceeded"], "{over:?}");
    assert_eq!(fake.accepted_offboards().len(), 2);

    let out = format!("{}{}", a.stop().await, b.stop().await);
    assert_eq!(emf_sum(&out, "BudgetExceeded"), 1.0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_table_fails_offboards_closed_and_lets_dry_runs_and_polls_through() {
    let fake = FakeDefender::start(demo_machines()).await;
    let table = ledger_table_from_template().await;
    let proxy = FlakyProxy::start(moto_addr()).await;
    let url = proxy.url();
    let a = Instance::start(&fake, Some((&table, &url)), &[]).await;

    // While the table is up, an offboard to poll later.
    let done = a.send(offboard("INC-DOWN-0", &[ids::WIN11])).await;
    assert_eq!(done.status, 200, "{done:?}");
    let action = done.body["results"][0]["action_id"]
        .as_str()
        .expect("an action id")
        .to_string();

    let id = fresh_id("down");
    let body = json!({"ticket": "INC-DOWN", "comment": "Laptop retired", "devices": [ids::WIN10]})
        .to_string();
    for mode in [Mode::Drop, Mode::Answer503] {
        proxy.set(mode);
        let before = offboard_calls(&fake);
        let refused = a.send(delivery("POST", "/v1/offboard", &id, &body)).await;
        assert_eq!(refused.status, 503, "{mode:?}: {refused:?}");
        assert_eq!(refused.error_code(), Some("ledger_unavailable"), "{mode:?}");
        assert!(refused.retry_after() >= 1);
        assert_eq!(
            offboard_calls(&fake),
            before,
            "{mode:?}: Defender was called"
        );

        let dry = json!({"ticket": "INC-DOWN", "comment": "Checking", "devices": [ids::WIN10], "dry_run": true});
        let dry = a
            .send(delivery(
                "POST",
                "/v1/offboard",
                &fresh_id("dry"),
                &dry.to_string(),
            ))
            .await;
        assert_eq!(dry.status, 200, "{mode:?}: {dry:?}");
        assert_eq!(dry.statuses(), ["would_offboard"]);

        let poll = a.send(get(&format!("/v1/actions/{action}"))).await;
        assert_eq!(poll.status, 200, "{mode:?}: {poll:?}");
        assert_eq!(poll.body["action_id"], action.as_str());
    }

    // The refused delivery was not kept: once the table is back it proceeds.
    proxy.set(Mode::Up);
    let back = a.send(delivery("POST", "/v1/offboard", &id, &body)).await;
    assert_eq!(back.status, 200, "{back:?}");
    assert_eq!(back.header("x-mde-replay"), None);
    assert_eq!(back.statuses(), ["offboard_requested"]);
}

fn device<'v>(ticket: &'v Value, machine_id: &str) -> &'v Value {
    ticket["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|r| r["machine_id"] == machine_id))
        .unwrap_or_else(|| panic!("no record of {machine_id} in {ticket}"))
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| humantime::parse_rfc3339(s).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tickets_offboards_are_read_back_by_any_instance() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (a, b, _proxy, _table) = two_instances(&fake, &[]).await;
    // WIN10 already has a pending offboard from another ticket.
    let earlier = a.send(offboard("INC-EARLIER", &[ids::WIN10])).await;
    assert_eq!(earlier.statuses(), ["offboard_requested"], "{earlier:?}");

    let mixed = a
        .send(offboard(
            "INC-MIXED",
            &[ids::WIN11, ids::WIN10, ids::LINUX, "kiosk-01.contoso.com"],
        ))
        .await;
    assert_eq!(
        mixed.statuses(),
        [
            "offboard_requested",
            "already_pending",
            "unsupported_os",
            "ambiguous"
        ],
        "{mixed:?}"
    );
    let action = mixed.body["results"][0]["action_id"].as_str().unwrap();

    let read = b.send(get("/v1/tickets/INC-MIXED")).await;
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.body["ticket"], "INC-MIXED");
    let devices = read.body["devices"].as_array().expect("devices");
    assert_eq!(
        devices.len(),
        2,
        "only offboard_requested and already_pending are kept: {read:?}"
    );
    let requested = device(&read.body, ids::WIN11);
    assert_eq!(requested["device"], ids::WIN11);
    assert_eq!(requested["status"], "offboard_requested");
    assert_eq!(requested["action_id"], action);
    assert_eq!(requested["action_status"], "Pending");
    assert!(is_rfc3339(&requested["requested_at"]), "{requested}");
    assert!(is_rfc3339(&requested["updated_at"]), "{requested}");
    let pending = device(&read.body, ids::WIN10);
    assert_eq!(pending["status"], "already_pending");
    for key in ["action_id", "action_status", "requested_at", "updated_at"] {
        assert!(pending.get(key).is_some(), "{key} missing: {pending}");
    }

    // A ticket the ledger knows nothing of: an empty list, not an error.
    let none = a.send(get("/v1/tickets/INC-NOTHING")).await;
    assert_eq!(none.status, 200, "{none:?}");
    assert_eq!(none.body, json!({"ticket": "INC-NOTHING", "devices": []}));

    // Without LEDGER_TABLE the route does not exist.
    let plain = Instance::start(&fake, None, &[]).await;
    let no_ledger = plain.send(get("/v1/tickets/INC-MIXED")).await;
    assert_eq!(no_ledger.status, 404, "{no_ledger:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_offboard_is_cancelled_and_a_final_one_is_not() {
    let fake = FakeDefender::start(demo_machines()).await;
    let (a, b, _proxy, _table) = two_instances(&fake, &[]).await;
    let done = a
        .send(offboard("INC-CANCEL", &[ids::WIN11, ids::WIN10]))
        .await;
    assert_eq!(
        done.statuses(),
        ["offboard_requested", "offboard_requested"],
        "{done:?}"
    );
    let pending = done.body["results"][0]["action_id"].as_str().unwrap();
    let succeeded = done.body["results"][1]["action_id"].as_str().unwrap();

    let cancelled = b
        .send(cancel(pending, r#"{"comment": "Wrong laptop"}"#))
        .await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    assert_eq!(cancelled.body["action_id"], pending);
    assert_eq!(cancelled.body["machine_id"], ids::WIN11);
    assert_eq!(cancelled.body["status"], "Cancelled");
    assert_eq!(fake.action(pending).unwrap()["status"], "Cancelled");
    assert_eq!(fake.count(Api::Cancel), 1);

    let ticket = a.send(get("/v1/tickets/INC-CANCEL")).await;
    assert_eq!(ticket.status, 200, "{ticket:?}");
    assert_eq!(
        device(&ticket.body, ids::WIN11)["action_status"],
        "Cancelled"
    );
    assert_eq!(device(&ticket.body, ids::WIN10)["action_status"], "Pending");

    fake.set_action_status(succeeded, "Succeeded");
    let refused = a
        .send(cancel(succeeded, r#"{"comment": "Too late"}"#))
        .await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert_eq!(refused.error_code(), Some("not_cancellable"));
    assert_eq!(fake.action(succeeded).unwrap()["status"], "Succeeded");

    let unknown = a
        .send(cancel(
            "9e5bc9d7-0000-4ab7-9782-d50480024a4e",
            r#"{"comment": "Who?"}"#,
        ))
        .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");

    let calls = fake.count(Api::Cancel);
    let no_comment = a.send(cancel(pending, "{}")).await;
    assert_eq!(no_comment.status, 400, "{no_comment:?}");
    assert_eq!(
        fake.count(Api::Cancel),
        calls,
        "a cancel without a comment reached Defender"
    );
}
