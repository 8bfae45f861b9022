//! `mde-bench --bulk`: 5,000 queued devices through two worker instances
//! and the HTTP function at once, against the fake Defender with its
//! limits on (100 calls a minute and 1,500 an hour per API, answered 429
//! over them), on a scaled clock, with the ledger (moto's DynamoDB behind
//! a proxy that counts calls and lets one through at a time) and the queue
//! (SQS in a moto server of its own, behind another). The bench plays Lambda: each instance is a
//! `bootstrap` process under a Runtime API of its own, and the event
//! source mapping is a loop per worker that receives up to ten messages,
//! invokes the worker with them, and deletes those it did not hand back.
//! Meanwhile the HTTP function is sent a 10-device offboard every ten
//! scaled minutes, as tickets keep arriving during a decommission.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use mde_offboard::support::webhook_sig::StandardWebhooks;
use mde_testkit::serial::SerialProxy;
use mde_testkit::tls::addr_of;
use mde_testkit::{
    Api, FakeDefender, FakeMachine, FakeRuntime, GENERIC_WEBHOOK_SECRET, Outcome, events, moto,
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub struct BulkArgs {
    pub exe: String,
    pub devices: usize,
    /// What stands for a minute (an hour is 60 of them).
    pub minute: Duration,
}

fn machine(i: usize) -> String {
    format!("{:040x}", 0xb0_0000_0000usize + i)
}

fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "bench",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

fn signed(seq: usize, body: &str) -> Value {
    let id = format!("msg_bulk_{}_{seq}", std::process::id());
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sig = StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET)
        .unwrap()
        .sign(&id, ts, body.as_bytes());
    let ts = ts.to_string();
    events::http_api_v2(
        "POST",
        "/v1/offboard",
        &[
            ("webhook-id", &id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        body,
    )
}

struct World {
    /// SQS's own moto server (see `moto::another`).
    _sqs_moto: moto::Moto,
    fake: FakeDefender,
    ddb: SerialProxy,
    sqs: SerialProxy,
    table: String,
    queue_url: String,
    secret_id: String,
}

fn spawn(w: &World, runtime: &FakeRuntime, a: &BulkArgs, worker: bool) -> Child {
    let mut c = Command::new(&a.exe);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(runtime.lambda_env())
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto::moto().endpoint)
        .env("AWS_ENDPOINT_URL_DYNAMODB", w.ddb.url())
        .env("AWS_ENDPOINT_URL_SQS", w.sqs.url())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("SECRET_ID", &w.secret_id)
        .env("MDE_API_URL", w.fake.url())
        .env("MDE_LOGIN_URL", w.fake.url())
        .env("LEDGER_TABLE", &w.table)
        .env("QUEUE_URL", &w.queue_url)
        .env("RATE_LIMIT_PER_MINUTE", "100")
        .env("RATE_LIMIT_MINUTE_MS", a.minute.as_millis().to_string())
        .env("RUST_LOG", "warn");
    if worker {
        c.env("MDE_MODE", "worker");
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", a.exe))
}

/// Calls of `api` the fake let through, as times from `start`, sorted.
fn times(fake: &FakeDefender, api: Api, start: std::time::Instant) -> Vec<Duration> {
    let mut t: Vec<Duration> = fake
        .calls()
        .iter()
        .filter(|c| c.api == api && (200..300).contains(&c.status))
        .map(|c| c.at.saturating_duration_since(start))
        .collect();
    t.sort();
    t
}

fn most_in(times: &[Duration], w: Duration) -> usize {
    let mut most = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while j < times.len() && times[j] < times[i] + w {
            j += 1;
        }
        most = most.max(j - i);
    }
    most
}

pub async fn run(a: BulkArgs) -> Vec<(String, f64)> {
    let moto_addr = addr_of(&moto::moto().endpoint);
    let extra = 2_000;
    let fake = FakeDefender::start(
        (0..a.devices + extra)
            .map(|i| FakeMachine::new(&machine(i), &format!("bulk-{i}.contoso.com"), "Windows11"))
            .collect(),
    )
    .await;
    fake.limit(100, 1500, a.minute);
    let table = mde_testkit::ledger_table::ledger_table_from_template().await;
    let sqs_moto = moto::another();
    let queue_url = sqs_client(&sqs_moto.endpoint)
        .create_queue()
        .queue_name(format!("mde-bench-bulk-{}", std::process::id()))
        .send()
        .await
        .expect("create the queue")
        .queue_url
        .expect("a queue URL");
    let secret_id = format!("mde-offboard/bench-bulk-{}", std::process::id());
    crate::secrets_client()
        .create_secret()
        .name(&secret_id)
        .secret_string(mde_testkit::secret_json())
        .send()
        .await
        .expect("create the secret");
    let w = Arc::new(World {
        fake,
        ddb: SerialProxy::start(moto_addr).await,
        sqs: SerialProxy::start(addr_of(&sqs_moto.endpoint)).await,
        table,
        queue_url,
        secret_id,
        _sqs_moto: sqs_moto,
    });
    let http = FakeRuntime::start().await;
    let workers = [FakeRuntime::start().await, FakeRuntime::start().await];
    let mut children = vec![spawn(&w, &http, &a, false)];
    for r in &workers {
        children.push(spawn(&w, r, &a, true));
    }
    let invocations = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let fake_start = std::time::Instant::now();

    let done = Arc::new(AtomicBool::new(false));
    // The HTTP function queues the devices, 250 to a request, keeping at
    // most about 750 on the queue (moto's SQS slows down as a queue grows;
    // a sender posting a decommission in parts does the same). A 503 is
    // retried: the same warm instance queues only what is missing.
    let queued_all = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    {
        let (w, http, invocations, queued_all) = (
            w.clone(),
            http.clone(),
            invocations.clone(),
            queued_all.clone(),
        );
        let devices = a.devices;
        let minute = a.minute;
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            for chunk in (0..devices).collect::<Vec<_>>().chunks(250) {
                while chunk[0] >= w.fake.accepted_offboards().len() + 500 {
                    tokio::time::sleep(minute).await;
                }
                let devices: Vec<String> = chunk.iter().map(|i| machine(*i)).collect();
                let body = json!({"ticket": "CHG-BULK", "comment": "Data centre decommission", "devices": devices, "mode": "queue"}).to_string();
                for attempt in 0.. {
                    seq += 1;
                    let out = http.invoke(signed(seq, &body), Duration::from_secs(29)).await;
                    invocations.fetch_add(1, Ordering::SeqCst);
                    match out {
                        Some(Outcome::Response(v)) if v["statusCode"] == 202 => break,
                        Some(Outcome::Response(v)) if v["statusCode"] == 503 && attempt < 5 => {
                            eprintln!("bulk: queueing answered 503, retrying");
                        }
                        other => panic!("queueing answered {other:?}"),
                    }
                }
            }
            queued_all.store(true, Ordering::SeqCst);
        }));
    }
    let esm_sqs = sqs_client(&w.sqs.url());
    for runtime in workers.clone() {
        let (w, done, sqs, invocations) = (
            w.clone(),
            done.clone(),
            esm_sqs.clone(),
            invocations.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let got = sqs
                    .receive_message()
                    .queue_url(&w.queue_url)
                    .max_number_of_messages(10)
                    .visibility_timeout(5)
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .send()
                    .await;
                let Ok(got) = got else { continue };
                let messages = got.messages.unwrap_or_default();
                if messages.is_empty() {
                    // The event source mapping's next poll (a short poll:
                    // the proxy lets one call through at a time).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let records: Vec<Value> = messages
                    .iter()
                    .map(|m| {
                        let attrs: serde_json::Map<String, Value> = m
                            .attributes()
                            .map(|a| {
                                a.iter()
                                    .map(|(k, v)| (k.as_str().to_string(), Value::from(v.as_str())))
                                    .collect()
                            })
                            .unwrap_or_default();
                        json!({
                            "messageId": m.message_id(),
                            "receiptHandle": m.receipt_handle(),
                            "body": m.body(),
                            "attributes": attrs,
                            "messageAttributes": {},
                            "md5OfBody": m.md5_of_body(),
                            "eventSource": "aws:sqs",
                            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:mde-offboard",
                            "awsRegion": "us-east-1"
                        })
                    })
                    .collect();
                let out = runtime
                    .invoke(json!({"Records": records}), Duration::from_secs(30))
                    .await;
                invocations.fetch_add(1, Ordering::SeqCst);
                let failed: HashSet<String> = match out {
                    Some(Outcome::Response(v)) => v["batchItemFailures"]
                        .as_array()
                        .map(|f| {
                            f.iter()
                                .filter_map(|x| x["itemIdentifier"].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    _ => messages
                        .iter()
                        .filter_map(|m| m.message_id().map(str::to_string))
                        .collect(),
                };
                let entries: Vec<DeleteMessageBatchRequestEntry> = messages
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| !failed.contains(m.message_id().unwrap_or("")))
                    .map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or(""))
                            .build()
                            .expect("entry")
                    })
                    .collect();
                if !entries.is_empty() {
                    let _ = sqs
                        .delete_message_batch()
                        .queue_url(&w.queue_url)
                        .set_entries(Some(entries))
                        .send()
                        .await;
                }
            }
        }));
    }
    // The HTTP function at the same time: 10 more devices every ten
    // scaled minutes.
    {
        let (done, invocations, http) = (done.clone(), invocations.clone(), http.clone());
        let minute = a.minute;
        let first = a.devices;
        tasks.push(tokio::spawn(async move {
            let mut next = first;
            let mut seq = 1_000_000;
            while !done.load(Ordering::SeqCst) && next + 10 <= first + extra {
                let devices: Vec<String> = (next..next + 10).map(machine).collect();
                next += 10;
                seq += 1;
                let body = json!({"ticket": "INC-LIVE", "comment": "Retired", "devices": devices})
                    .to_string();
                let _ = http
                    .invoke(signed(seq, &body), Duration::from_secs(29))
                    .await;
                invocations.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(minute * 10).await;
            }
        }));
    }
    // Until every queued device was offboarded (or a long time passed).
    let queued: HashSet<String> = (0..a.devices)
        .map(|i| format!("/api/machines/{}/offboard", machine(i)))
        .collect();
    let limit = a.minute * 60 * (a.devices as u32 / 1000 + 3);
    loop {
        tokio::time::sleep(a.minute).await;
        let offboarded = w
            .fake
            .accepted_offboards()
            .iter()
            .filter(|c| queued.contains(&c.path))
            .count();
        if offboarded >= a.devices || started.elapsed() > limit {
            break;
        }
        if started.elapsed().as_secs().is_multiple_of(30) {
            eprintln!(
                "bulk: {offboarded} of {} after {:?}",
                a.devices,
                started.elapsed()
            );
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    for mut c in children {
        let _ = c.kill().await;
    }
    let accepted = w.fake.accepted_offboards();
    let from_queue = accepted.iter().filter(|c| queued.contains(&c.path)).count();
    let total = accepted.len();
    let hour = a.minute * 60;
    let hours = elapsed.as_secs_f64() / hour.as_secs_f64();
    let offboard_times = times(&w.fake, Api::Offboard, fake_start);
    let lookup_times = times(&w.fake, Api::GetMachine, fake_start);
    let ddb: usize = w.ddb.calls().values().sum();
    let sqs: usize = w.sqs.calls().values().sum();
    let n = total.max(1) as f64;
    eprintln!("bulk: DynamoDB calls by operation {:?}", w.ddb.calls());
    eprintln!("bulk: SQS calls by operation {:?}", w.sqs.calls());
    vec![
        ("devices queued".into(), a.devices as f64),
        ("queued devices offboarded".into(), from_queue as f64),
        (
            "devices offboarded through the HTTP function meanwhile".into(),
            (total - from_queue) as f64,
        ),
        (
            "a minute stands for (ms)".into(),
            a.minute.as_millis() as f64,
        ),
        ("elapsed (scaled hours)".into(), hours),
        (
            "devices offboarded per scaled hour".into(),
            total as f64 / hours,
        ),
        (
            "per scaled hour, % of Defender's 1,500".into(),
            total as f64 / hours / 15.0,
        ),
        (
            "offboard calls in the busiest scaled hour".into(),
            most_in(&offboard_times, hour) as f64,
        ),
        (
            "offboard calls in the busiest scaled minute".into(),
            most_in(&offboard_times, a.minute) as f64,
        ),
        (
            "machine reads in the busiest scaled minute".into(),
            most_in(&lookup_times, a.minute) as f64,
        ),
        ("429s received".into(), w.fake.throttled() as f64),
        ("DynamoDB calls per device".into(), ddb as f64 / n),
        (
            "SQS calls per device (function and event source mapping)".into(),
            sqs as f64 / n,
        ),
        (
            "Lambda invocations per device".into(),
            invocations.load(Ordering::SeqCst) as f64 / n,
        ),
    ]
}
