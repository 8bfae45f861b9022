//! The durable ledger against moto's DynamoDB over HTTP, through the real
//! SDK client with the function's time limits; the table is created from
//! template.yaml's `LedgerTable`, the definition a deploy uses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, KeyType, ProjectionType, TimeToLiveStatus};
use mde_offboard::adapters::aws;
use mde_offboard::adapters::dynamodb::DynamoLedger;
use mde_offboard::adapters::dynamodb::item::schema;
use mde_offboard::domain::ledger::{
    ANSWER_KEPT_FOR, ActionStatus, Begin, DeliveryClaims, DeviceRecord, DeviceRecords, Fingerprint,
    IdempotencyKey, LedgerError, MAX_STORED_BODY, OffboardBudget, RecordKey, RecordedOutcome,
    Report, StatusUpdate, StoredAnswer,
};
use mde_testkit::ledger_table::{ledger_table_definition, ledger_table_from_template};
use mde_testkit::moto;
use mde_testkit::proxy::{FlakyProxy, Mode};
use mde_testkit::serial::SerialProxy;

fn client_at(endpoint: &str) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    aws::SdkClient::with_limits(
        aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests")),
    )
}

fn client() -> aws_sdk_dynamodb::Client {
    client_at(&moto::moto().endpoint)
}

/// A new table in moto, made from the template; returns its name.
async fn new_table() -> String {
    ledger_table_from_template().await
}

async fn ledger() -> (DynamoLedger, String) {
    let table = new_table().await;
    (DynamoLedger::new(client(), table.clone()), table)
}

fn moto_addr() -> std::net::SocketAddr {
    moto::moto()
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

/// A client whose requests reach moto one at a time (see
/// `mde_testkit::serial`): DynamoDB applies writes to an item in order, and
/// moto does not, so concurrency tests go through it.
async fn serial_client() -> (aws_sdk_dynamodb::Client, SerialProxy) {
    let proxy = SerialProxy::start(moto_addr()).await;
    (client_at(&proxy.url()), proxy)
}

/// Synthetic times in the future: moto never expires them by TTL, and the
/// tests decide what "now" is.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn key(n: u8) -> IdempotencyKey {
    IdempotencyKey::from([n; 32])
}

/// The request a delivery key stands for, and another one.
const FP: Fingerprint = Fingerprint([0xf1; 32]);
const OTHER: Fingerprint = Fingerprint([0xf2; 32]);

fn answer() -> StoredAnswer {
    StoredAnswer {
        status: 200,
        body: r#"{"ticket":"INC-1","results":[]}"#.into(),
    }
}

fn record(ticket: &str, machine: &str, action: &str, t: u64) -> DeviceRecord {
    DeviceRecord {
        ticket: ticket.into(),
        machine_id: machine.into(),
        device: format!("{machine}.contoso.com"),
        status: RecordedOutcome::OffboardRequested,
        action_id: action.into(),
        action_status: ActionStatus::Pending,
        requested_at: at(t),
        updated_at: at(t),
        source: "generic".into(),
        tenant: None,
    }
}

#[test]
fn the_templates_table_definition_has_the_keys_the_adapter_writes() {
    let def = ledger_table_definition();
    let names: Vec<&str> = def["KeySchema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["AttributeName"].as_str().unwrap())
        .collect();
    assert_eq!(names, [schema::PK, schema::SK]);
    let gsi = &def["GlobalSecondaryIndexes"][0];
    assert_eq!(gsi["IndexName"], schema::BY_MACHINE);
    assert_eq!(gsi["KeySchema"][0]["AttributeName"], schema::GSI1_PK);
    assert_eq!(gsi["KeySchema"][1]["AttributeName"], schema::GSI1_SK);
    assert_eq!(gsi["Projection"]["ProjectionType"], "ALL");
    assert_eq!(
        def["TimeToLiveSpecification"]["AttributeName"],
        schema::EXPIRES_AT
    );
    assert_eq!(def["TimeToLiveSpecification"]["Enabled"], true);
    assert_eq!(def["BillingMode"], "PAY_PER_REQUEST");
    assert_eq!(
        def["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        true
    );
    assert_eq!(def["SSESpecification"]["SSEEnabled"], true);
}

/// What DynamoDB (moto) made of the template's definition is what the
/// adapter reads and writes: the keys, the index and the TTL attribute.
#[tokio::test]
async fn the_table_created_from_the_template_is_the_one_the_adapter_uses() {
    let table = new_table().await;
    let described = client()
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let keys: Vec<(&str, &KeyType)> = described
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name(), k.key_type()))
        .collect();
    assert_eq!(
        keys,
        [(schema::PK, &KeyType::Hash), (schema::SK, &KeyType::Range)]
    );
    let gsi = &described.global_secondary_indexes()[0];
    assert_eq!(gsi.index_name(), Some(schema::BY_MACHINE));
    let gsi_keys: Vec<&str> = gsi
        .key_schema()
        .iter()
        .map(|k| k.attribute_name())
        .collect();
    assert_eq!(gsi_keys, [schema::GSI1_PK, schema::GSI1_SK]);
    assert_eq!(
        gsi.projection().and_then(|p| p.projection_type()),
        Some(&ProjectionType::All)
    );
    let ttl = client()
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .unwrap();
    assert_eq!(ttl.attribute_name(), Some(schema::EXPIRES_AT));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
    // And the adapter works against it: a claim, then a machine-index read.
    let l = DynamoLedger::new(client(), table);
    assert_eq!(
        l.begin(&key(1), &FP, at(0), at(30)).await,
        Ok(Begin::Started)
    );
    l.record_device(&record("INC-T", "m1", "a1", 0))
        .await
        .unwrap();
    assert_eq!(l.machine_records("m1").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_delivery_is_claimed_completed_and_replayed_by_another_instance() {
    let (a, table) = ledger().await;
    let b = DynamoLedger::new(client(), table);
    assert_eq!(
        a.begin(&key(1), &FP, at(0), at(30)).await,
        Ok(Begin::Started)
    );
    assert_eq!(
        b.begin(&key(1), &FP, at(10), at(40)).await,
        Ok(Begin::InProgress {
            retry_after: Duration::from_secs(20)
        })
    );
    a.complete(&key(1), &FP, &answer(), at(10) + ANSWER_KEPT_FOR)
        .await
        .unwrap();
    assert_eq!(
        b.begin(&key(1), &FP, at(20), at(50)).await,
        Ok(Begin::Done(answer()))
    );
    assert_eq!(
        b.begin(&key(2), &FP, at(20), at(50)).await,
        Ok(Begin::Started)
    );
}

#[tokio::test]
async fn two_concurrent_claims_one_starts_one_waits() {
    let (_, table) = ledger().await;
    let (c, _proxy) = serial_client().await;
    let a = DynamoLedger::new(c.clone(), table.clone());
    let b = DynamoLedger::new(c, table);
    for n in 0..5u8 {
        let k = key(n);
        let (x, y) = tokio::join!(
            a.begin(&k, &FP, at(0), at(30)),
            b.begin(&k, &FP, at(0), at(30))
        );
        let mut got = [x.unwrap(), y.unwrap()];
        got.sort_by_key(|g| matches!(g, Begin::Started));
        assert!(
            matches!(got, [Begin::InProgress { .. }, Begin::Started]),
            "{got:?}"
        );
    }
}

#[tokio::test]
async fn a_claim_whose_holder_died_is_taken_over_after_its_deadline() {
    let (l, _) = ledger().await;
    l.begin(&key(1), &FP, at(0), at(30)).await.unwrap();
    assert!(matches!(
        l.begin(&key(1), &FP, at(30), at(60)).await,
        Ok(Begin::InProgress { .. })
    ));
    assert_eq!(
        l.begin(&key(1), &FP, at(31), at(61)).await,
        Ok(Begin::Started)
    );
}

#[tokio::test]
async fn an_answer_past_its_expiry_is_not_replayed_though_ttl_has_not_deleted_it() {
    let (l, table) = ledger().await;
    l.begin(&key(7), &FP, at(0), at(30)).await.unwrap();
    l.complete(&key(7), &FP, &answer(), at(100)).await.unwrap();
    let pk = format!("IDEM#{}", "07".repeat(32));
    let stored = client()
        .get_item()
        .table_name(&table)
        .key(schema::PK, AttributeValue::S(pk))
        .key(schema::SK, AttributeValue::S("IDEM".into()))
        .send()
        .await
        .unwrap();
    assert!(stored.item().is_some(), "the expired item is still there");
    assert_eq!(
        l.begin(&key(7), &FP, at(100), at(130)).await,
        Ok(Begin::Done(answer()))
    );
    assert_eq!(
        l.begin(&key(7), &FP, at(101), at(131)).await,
        Ok(Begin::Started)
    );
}

#[tokio::test]
async fn abandon_frees_a_claim_and_leaves_an_answer() {
    let (l, _) = ledger().await;
    l.begin(&key(1), &FP, at(0), at(30)).await.unwrap();
    l.abandon(&key(1)).await.unwrap();
    assert_eq!(
        l.begin(&key(1), &FP, at(1), at(31)).await,
        Ok(Begin::Started)
    );
    l.complete(&key(1), &FP, &answer(), at(1000)).await.unwrap();
    l.abandon(&key(1)).await.unwrap();
    l.abandon(&key(9)).await.unwrap();
    assert_eq!(
        l.begin(&key(1), &FP, at(2), at(32)).await,
        Ok(Begin::Done(answer()))
    );
}

/// The delivery's item as stored.
async fn idem_item(table: &str, n: u8, sk: &str) -> Option<HashMap<String, AttributeValue>> {
    client()
        .get_item()
        .table_name(table)
        .key(schema::PK, AttributeValue::S(format!("IDEM#{}", hex(n))))
        .key(schema::SK, AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

fn hex(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

#[tokio::test]
async fn a_key_used_for_another_request_is_reused_whatever_its_state() {
    let (a, table) = ledger().await;
    let b = DynamoLedger::new(client(), table);
    assert_eq!(
        a.begin(&key(1), &FP, at(0), at(30)).await,
        Ok(Begin::Started)
    );
    // Running: another request with the same key is not "in progress".
    assert_eq!(
        b.begin(&key(1), &OTHER, at(1), at(31)).await,
        Ok(Begin::Reused)
    );
    // Let go of (a 503): free for the same request, not for another.
    a.abandon(&key(1)).await.unwrap();
    assert_eq!(
        b.begin(&key(1), &OTHER, at(2), at(32)).await,
        Ok(Begin::Reused)
    );
    assert_eq!(
        b.begin(&key(1), &FP, at(3), at(33)).await,
        Ok(Begin::Started)
    );
    // Answered: replayed for the same request, never shown to another.
    b.complete(&key(1), &FP, &answer(), at(1000)).await.unwrap();
    assert_eq!(
        a.begin(&key(1), &OTHER, at(4), at(34)).await,
        Ok(Begin::Reused)
    );
    assert_eq!(
        a.begin(&key(1), &FP, at(5), at(35)).await,
        Ok(Begin::Done(answer()))
    );
    // A holder that died is taken over by its own request only.
    a.begin(&key(2), &FP, at(0), at(30)).await.unwrap();
    assert_eq!(
        b.begin(&key(2), &OTHER, at(31), at(61)).await,
        Ok(Begin::Reused)
    );
    assert_eq!(
        b.begin(&key(2), &FP, at(31), at(61)).await,
        Ok(Begin::Started)
    );
    // Expired, the key is free for anything.
    assert_eq!(
        a.begin(&key(1), &OTHER, at(1001), at(1031)).await,
        Ok(Begin::Started)
    );
}

#[tokio::test]
async fn items_written_before_fingerprints_still_replay_and_are_taken_over() {
    let (l, table) = ledger().await;
    let put = |n: u8, attrs: Vec<(&str, AttributeValue)>| {
        let mut item: HashMap<String, AttributeValue> = HashMap::from([
            (
                schema::PK.into(),
                AttributeValue::S(format!("IDEM#{}", hex(n))),
            ),
            (schema::SK.into(), AttributeValue::S("IDEM".into())),
        ]);
        item.extend(attrs.into_iter().map(|(k, v)| (k.to_string(), v)));
        client()
            .put_item()
            .table_name(&table)
            .set_item(Some(item))
            .send()
    };
    let num = |v: i64| AttributeValue::N(v.to_string());
    let text = |v: &str| AttributeValue::S(v.into());
    let expires = |t: SystemTime| num(t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64);
    // As the previous build wrote them: no `fingerprint`.
    put(
        3,
        vec![
            ("state", text("completed")),
            ("answer_status", num(200)),
            ("answer_body", text(&answer().body)),
            (schema::EXPIRES_AT, expires(at(1000))),
        ],
    )
    .await
    .unwrap();
    let until_ms = at(30).duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    put(
        4,
        vec![
            ("state", text("in_progress")),
            ("owner", text("0123")),
            ("in_progress_until_ms", num(until_ms)),
            (schema::EXPIRES_AT, expires(at(3630))),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        l.begin(&key(3), &FP, at(10), at(40)).await,
        Ok(Begin::Done(answer()))
    );
    assert!(matches!(
        l.begin(&key(4), &FP, at(10), at(40)).await,
        Ok(Begin::InProgress { .. })
    ));
    assert_eq!(
        l.begin(&key(4), &FP, at(31), at(61)).await,
        Ok(Begin::Started)
    );
}

#[tokio::test]
async fn a_small_answer_is_one_item_as_before_with_its_fingerprint_beside() {
    let (l, table) = ledger().await;
    l.begin(&key(5), &FP, at(0), at(30)).await.unwrap();
    l.complete(&key(5), &FP, &answer(), at(1000)).await.unwrap();
    let item = idem_item(&table, 5, "IDEM").await.unwrap();
    let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "answer_body",
            "answer_status",
            "expires_at",
            "fingerprint",
            "pk",
            "sk",
            "state"
        ]
    );
    assert_eq!(item["answer_body"], AttributeValue::S(answer().body));
    assert_eq!(item["answer_status"], AttributeValue::N("200".into()));
    assert_eq!(item["state"], AttributeValue::S("completed".into()));
    assert_eq!(item["fingerprint"], AttributeValue::S(hex(0xf1)));
    assert!(idem_item(&table, 5, "PART#0001").await.is_none());
}

/// L4: an answer over what one item holds (a queue-mode answer naming
/// thousands of devices) is kept in parts and replayed whole by another
/// instance, not refused (which let the delivery run again).
#[tokio::test]
async fn an_answer_over_an_items_size_is_kept_in_parts_and_replayed_whole() {
    let (a, table) = ledger().await;
    // Multi-byte characters across the cuts, and more than two parts.
    let devices: Vec<String> = (0..25_000)
        .map(|i| format!("{{\"device\":\"pc-{i:05}-\u{e9}t\u{e9}.contoso.com\"}}"))
        .collect();
    let big = StoredAnswer {
        status: 202,
        body: format!(
            r#"{{"ticket":"CHG1","mode":"queue","queued":[{}]}}"#,
            devices.join(",")
        ),
    };
    assert!(big.body.len() > 2 * MAX_STORED_BODY, "{}", big.body.len());
    a.begin(&key(6), &FP, at(0), at(30)).await.unwrap();
    a.complete(&key(6), &FP, &big, at(1000)).await.unwrap();

    let main = idem_item(&table, 6, "IDEM").await.unwrap();
    assert_eq!(main["answer_parts"], AttributeValue::N("3".into()));
    assert!(!main.contains_key("answer_body"));
    let mut joined = String::new();
    for part in ["PART#0001", "PART#0002", "PART#0003"] {
        let item = idem_item(&table, 6, part).await.expect(part);
        assert_eq!(item[schema::EXPIRES_AT], main[schema::EXPIRES_AT], "{part}");
        let AttributeValue::S(text) = &item["answer_body"] else {
            panic!("{part}")
        };
        assert!(text.len() <= MAX_STORED_BODY);
        joined.push_str(text);
    }
    assert_eq!(joined, big.body);

    // Another instance, after the first one's deadline: replayed whole.
    let b = DynamoLedger::new(client(), table.clone()).with_page_size(1);
    assert_eq!(
        b.begin(&key(6), &FP, at(40), at(70)).await,
        Ok(Begin::Done(big.clone()))
    );
    assert_eq!(
        b.begin(&key(6), &OTHER, at(41), at(71)).await,
        Ok(Begin::Reused)
    );

    // A part gone is an error, never a shortened answer.
    client()
        .delete_item()
        .table_name(&table)
        .key(schema::PK, AttributeValue::S(format!("IDEM#{}", hex(6))))
        .key(schema::SK, AttributeValue::S("PART#0002".into()))
        .send()
        .await
        .unwrap();
    assert!(matches!(
        b.begin(&key(6), &FP, at(42), at(72)).await,
        Err(LedgerError::Refused(_))
    ));
}

#[tokio::test]
async fn an_outcome_is_reported_by_the_first_finisher_only() {
    let (l, table) = ledger().await;
    let r = record("INC-R", "m1", "a1", 5);
    l.record_device(&r).await.unwrap();
    assert_eq!(
        l.report_outcome(&r.key(), ActionStatus::Succeeded, at(6))
            .await,
        Ok(Report::First(ActionStatus::Succeeded))
    );
    assert_eq!(
        l.report_outcome(&r.key(), ActionStatus::Succeeded, at(7))
            .await,
        Ok(Report::Already)
    );
    // The cancel route wrote the final status: it is the outcome, and it
    // is reported once.
    let c = record("INC-R", "m2", "a2", 5);
    l.record_device(&c).await.unwrap();
    l.update_action_status(&c.key(), ActionStatus::Cancelled, at(6))
        .await
        .unwrap();
    assert_eq!(
        l.report_outcome(&c.key(), ActionStatus::Cancelled, at(8))
            .await,
        Ok(Report::First(ActionStatus::Cancelled))
    );
    assert_eq!(
        l.report_outcome(&c.key(), ActionStatus::Cancelled, at(9))
            .await,
        Ok(Report::Already)
    );
    let missing = RecordKey {
        action_id: "nope".into(),
        ..r.key()
    };
    assert_eq!(
        l.report_outcome(&missing, ActionStatus::Failed, at(9))
            .await,
        Ok(Report::NotFound)
    );
    let got = l.ticket_records("INC-R").await.unwrap();
    assert_eq!(got.len(), 2, "no record made by the report");
    assert_eq!(
        (got[0].action_status, got[0].updated_at),
        (ActionStatus::Succeeded, at(6))
    );
    assert_eq!(
        (got[1].action_status, got[1].updated_at),
        (ActionStatus::Cancelled, at(6))
    );

    // Two finishers at once (a duplicate track message): one reports.
    let (sc, _proxy) = serial_client().await;
    let x = DynamoLedger::new(sc.clone(), table.clone());
    let y = DynamoLedger::new(sc, table);
    for i in 0..4 {
        let rec = record("INC-R2", &format!("m{i}"), &format!("a{i}"), 5);
        l.record_device(&rec).await.unwrap();
        let k = rec.key();
        let (p, q) = tokio::join!(
            x.report_outcome(&k, ActionStatus::Succeeded, at(10)),
            y.report_outcome(&k, ActionStatus::Succeeded, at(10))
        );
        let mut got = [p.unwrap(), q.unwrap()];
        got.sort_by_key(|g| matches!(g, Report::First(_)));
        assert_eq!(
            got,
            [Report::Already, Report::First(ActionStatus::Succeeded)]
        );
    }
}

#[tokio::test]
async fn a_tickets_records_come_back_from_one_paginated_query() {
    let (_, table) = ledger().await;
    let l = DynamoLedger::new(client(), table).with_page_size(2);
    for (i, m) in ["m5", "m3", "m1", "m4", "m2"].iter().enumerate() {
        l.record_device(&record("INC-1", m, &format!("a-{m}"), i as u64))
            .await
            .unwrap();
    }
    l.record_device(&record("INC-2", "m1", "a-other", 9))
        .await
        .unwrap();
    let got = l.ticket_records("INC-1").await.unwrap();
    let machines: Vec<&str> = got.iter().map(|r| r.machine_id.as_str()).collect();
    assert_eq!(machines, ["m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(got[0], record("INC-1", "m1", "a-m1", 2));
    assert!(l.ticket_records("INC-3").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_machines_history_spans_tickets_oldest_first() {
    let (l, _) = ledger().await;
    l.record_device(&record("INC-2", "m1", "a2", 50))
        .await
        .unwrap();
    l.record_device(&record("INC-1", "m1", "a1", 10))
        .await
        .unwrap();
    l.record_device(&record("INC-1", "m2", "a3", 20))
        .await
        .unwrap();
    let tickets: Vec<String> = l
        .machine_records("m1")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.ticket)
        .collect();
    assert_eq!(tickets, ["INC-1", "INC-2"]);
}

#[tokio::test]
async fn a_repeat_record_keeps_the_first_time_and_the_tracked_status() {
    let (l, _) = ledger().await;
    let first = record("INC-1", "m1", "a1", 5);
    l.record_device(&first).await.unwrap();
    assert_eq!(
        l.update_action_status(&first.key(), ActionStatus::InProgress, at(7))
            .await,
        Ok(StatusUpdate::Updated)
    );
    let mut again = record("INC-1", "m1", "a1", 9);
    again.status = RecordedOutcome::AlreadyPending;
    l.record_device(&again).await.unwrap();
    let got = l.ticket_records("INC-1").await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].requested_at, at(5));
    assert_eq!(got[0].updated_at, at(9));
    assert_eq!(got[0].status, RecordedOutcome::AlreadyPending);
    assert_eq!(got[0].action_status, ActionStatus::InProgress);
}

#[tokio::test]
async fn a_final_status_is_kept_and_an_unknown_record_is_not_created() {
    let (l, _) = ledger().await;
    let r = record("INC-1", "m1", "a1", 5);
    l.record_device(&r).await.unwrap();
    let k = r.key();
    assert_eq!(
        l.update_action_status(&k, ActionStatus::NotConfirmed, at(6))
            .await,
        Ok(StatusUpdate::Updated)
    );
    assert_eq!(
        l.update_action_status(&k, ActionStatus::Cancelled, at(7))
            .await,
        Ok(StatusUpdate::Updated)
    );
    assert_eq!(
        l.update_action_status(&k, ActionStatus::Succeeded, at(8))
            .await,
        Ok(StatusUpdate::AlreadyFinal(ActionStatus::Cancelled))
    );
    // Written once: the same final status is not written again.
    assert_eq!(
        l.update_action_status(&k, ActionStatus::Cancelled, at(8))
            .await,
        Ok(StatusUpdate::AlreadyFinal(ActionStatus::Cancelled))
    );
    let missing = RecordKey {
        action_id: "nope".into(),
        ..k
    };
    assert_eq!(
        l.update_action_status(&missing, ActionStatus::Succeeded, at(9))
            .await,
        Ok(StatusUpdate::NotFound)
    );
    let got = l.ticket_records("INC-1").await.unwrap();
    assert_eq!(got.len(), 1, "no record made by the update");
    assert_eq!(got[0].action_status, ActionStatus::Cancelled);
    assert_eq!(got[0].updated_at, at(7));
}

#[tokio::test]
async fn the_budget_is_never_exceeded_by_twenty_concurrent_takers() {
    let (_, table) = ledger().await;
    let (c, _proxy) = serial_client().await;
    // Four instances, five takers each, all in the same bucket.
    let instances: Vec<Arc<DynamoLedger>> = (0..4)
        .map(|_| Arc::new(DynamoLedger::new(c.clone(), table.clone())))
        .collect();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let l = instances[i % 4].clone();
            tokio::spawn(async move { l.take_budget("", 1, 7, at(10)).await })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        granted += t.await.unwrap().unwrap();
    }
    assert_eq!(granted, 7);
    // A fresh instance (no cache) agrees that the hour is spent.
    let cold = DynamoLedger::new(client(), table);
    assert_eq!(cold.take_budget("", 1, 7, at(20)).await, Ok(0));
}

#[tokio::test]
async fn the_budget_counts_earlier_buckets_and_grants_in_part() {
    let (a, table) = ledger().await;
    assert_eq!(a.take_budget("", 6, 10, at(0)).await, Ok(6));
    // Another instance, 30 minutes on: sees the six from the first bucket.
    let b = DynamoLedger::new(client(), table.clone());
    assert_eq!(b.take_budget("", 5, 10, at(1800)).await, Ok(4));
    assert_eq!(b.take_budget("", 1, 10, at(1900)).await, Ok(0));
    // 65 minutes after the first take it has left the window.
    let c = DynamoLedger::new(client(), table);
    assert_eq!(c.take_budget("", 10, 10, at(3900)).await, Ok(6));
}

#[tokio::test]
async fn places_given_back_leave_the_bucket_they_came_from_never_below_zero() {
    let (a, table) = ledger().await;
    assert_eq!(a.take_budget("", 3, 3, at(0)).await, Ok(3));
    // 20 minutes on, the first bucket is closed and this instance keeps
    // its count; both the table and that copy are lowered.
    assert_eq!(a.take_budget("", 1, 3, at(1200)).await, Ok(0));
    a.give_back_budget("", 2, at(0)).await.unwrap();
    assert_eq!(a.take_budget("", 3, 3, at(1260)).await, Ok(2));
    // More than the bucket holds, or a bucket never taken from: nothing.
    a.give_back_budget("", 5, at(1260)).await.unwrap();
    a.give_back_budget("", 1, at(600)).await.unwrap();
    let table_name = table.clone();
    let b = DynamoLedger::new(client(), table);
    assert_eq!(
        b.take_budget("", 3, 3, at(1300)).await,
        Ok(0),
        "still 1 + 2"
    );
    b.give_back_budget("", 2, at(1260)).await.unwrap();
    assert_eq!(b.take_budget("", 3, 3, at(1300)).await, Ok(2));
    // A give-back never creates a bucket.
    let never = client()
        .get_item()
        .table_name(&table_name)
        .key(schema::PK, AttributeValue::S("BUDGET#1800000600".into()))
        .key(schema::SK, AttributeValue::S("BUDGET".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert_eq!(never.item, None);
}

/// The whole ledger behind a proxy that can be taken down.
async fn behind_proxy() -> (DynamoLedger, FlakyProxy) {
    let table = new_table().await;
    let proxy = FlakyProxy::start(moto_addr()).await;
    (DynamoLedger::new(client_at(&proxy.url()), table), proxy)
}

#[tokio::test]
async fn an_unreachable_table_is_unavailable_quickly_and_recovers() {
    let (l, proxy) = behind_proxy().await;
    assert_eq!(
        l.begin(&key(1), &FP, at(0), at(30)).await,
        Ok(Begin::Started)
    );
    for mode in [Mode::Answer503, Mode::Drop] {
        proxy.set(mode);
        let started = Instant::now();
        let e = l.begin(&key(2), &FP, at(0), at(30)).await.unwrap_err();
        assert!(matches!(e, LedgerError::Unavailable(_)), "{mode:?}: {e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{mode:?} took {:?}",
            started.elapsed()
        );
        assert!(matches!(
            l.take_budget("", 1, 10, at(0)).await,
            Err(LedgerError::Unavailable(_))
        ));
        assert!(matches!(
            l.ticket_records("INC-1").await,
            Err(LedgerError::Unavailable(_))
        ));
    }
    proxy.set(Mode::Up);
    assert_eq!(
        l.begin(&key(2), &FP, at(0), at(30)).await,
        Ok(Begin::Started)
    );
}

#[tokio::test]
async fn a_missing_table_is_refused_not_unavailable() {
    let l = DynamoLedger::new(client(), "mde-ledger-no-such-table".into());
    let e = l.begin(&key(1), &FP, at(0), at(30)).await.unwrap_err();
    assert!(matches!(e, LedgerError::Refused(_)), "{e:?}");
    assert!(e.retry_after().is_none());
}

#[tokio::test]
async fn an_item_that_is_not_ours_is_refused_without_a_panic() {
    let (l, table) = ledger().await;
    let mut item: HashMap<String, AttributeValue> = HashMap::new();
    item.insert(schema::PK.into(), AttributeValue::S("TICKET#INC-9".into()));
    item.insert(
        schema::SK.into(),
        AttributeValue::S("MACHINE#m1#ACTION#a1".into()),
    );
    item.insert("ticket".into(), AttributeValue::N("12".into()));
    client()
        .put_item()
        .table_name(&table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
    assert!(matches!(
        l.ticket_records("INC-9").await,
        Err(LedgerError::Refused(_))
    ));
}
