//! The ledger's items in DynamoDB: the key layout and the attribute codec.
//! One table (`LEDGER_TABLE`), three kinds of item, told apart by the
//! partition key's prefix:
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | a delivery | `IDEM#<sha256 hex>` | `IDEM` |
//! | a device record | `TICKET#<ticket>` | `MACHINE#<machine id>#ACTION#<action id>` |
//! | a budget bucket | `BUDGET#<bucket start, unix s>` | `BUDGET` |
//!
//! A ticket's records share a partition, so `GET /v1/tickets/{ticket}` is one
//! Query. A machine's history is one Query on the `by-machine` index
//! (`gsi1pk = MACHINE#<id>`, `gsi1sk = <requested_at>#<ticket>`): a GSI and
//! not a second item, because DynamoDB keeps it in step with the base item
//! on every write (no transaction, no second write to forget), and history
//! reads tolerate its eventual consistency.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::domain::ledger::{
    ActionStatus, BUDGET_BUCKET, DeviceRecord, IdempotencyKey, LedgerError, RecordKey,
    RecordedOutcome, StoredAnswer,
};

/// Names the adapter and the table definition (template.yaml's `LedgerTable`)
/// must agree on; a test checks they do.
pub mod schema {
    pub const PK: &str = "pk";
    pub const SK: &str = "sk";
    pub const GSI1_PK: &str = "gsi1pk";
    pub const GSI1_SK: &str = "gsi1sk";
    pub const BY_MACHINE: &str = "by-machine";
    /// DynamoDB's TTL attribute (unix seconds). TTL deletes lazily, up to
    /// days late, so every read that cares checks it itself.
    pub const EXPIRES_AT: &str = "expires_at";
}

/// Attribute names. Every expression aliases them (`#st`, ...): `state`,
/// `owner`, `count` and `source` are DynamoDB reserved words.
pub(crate) mod attr {
    pub const STATE: &str = "state";
    pub const OWNER: &str = "owner";
    pub const IN_PROGRESS_UNTIL_MS: &str = "in_progress_until_ms";
    pub const ANSWER_STATUS: &str = "answer_status";
    pub const ANSWER_BODY: &str = "answer_body";
    pub const TICKET: &str = "ticket";
    pub const MACHINE_ID: &str = "machine_id";
    pub const DEVICE: &str = "device";
    pub const OUTCOME: &str = "outcome";
    pub const ACTION_ID: &str = "action_id";
    pub const ACTION_STATUS: &str = "action_status";
    pub const REQUESTED_AT: &str = "requested_at";
    pub const UPDATED_AT: &str = "updated_at";
    pub const SOURCE: &str = "source";
    pub const COUNT: &str = "count";
}

/// A delivery's `state`.
pub(crate) const IN_PROGRESS: &str = "in_progress";
pub(crate) const COMPLETED: &str = "completed";
pub(crate) const BUDGET_SK: &str = "BUDGET";
/// The sort keys of a ticket's device records begin with it.
pub(crate) const MACHINE_PREFIX: &str = "MACHINE#";

/// The partition and sort keys of an item.
pub(crate) trait ItemKey {
    fn pk(&self) -> String;
    fn sk(&self) -> String;
}

impl ItemKey for IdempotencyKey {
    fn pk(&self) -> String {
        let mut s = String::with_capacity(5 + 64);
        s.push_str("IDEM#");
        for b in self.bytes() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn sk(&self) -> String {
        "IDEM".into()
    }
}

impl ItemKey for RecordKey {
    fn pk(&self) -> String {
        ticket_pk(&self.ticket)
    }

    fn sk(&self) -> String {
        format!(
            "{MACHINE_PREFIX}{}#ACTION#{}",
            self.machine_id, self.action_id
        )
    }
}

pub(crate) fn ticket_pk(ticket: &str) -> String {
    format!("TICKET#{ticket}")
}

/// The by-machine index's partition key.
pub(crate) fn machine_pk(machine_id: &str) -> String {
    format!("{MACHINE_PREFIX}{machine_id}")
}

pub(crate) fn budget_pk(bucket: i64) -> String {
    format!("BUDGET#{}", bucket * BUDGET_BUCKET.as_secs() as i64)
}

/// The bucket a budget item's key names.
pub(crate) fn bucket_of_pk(pk: &str) -> Option<i64> {
    pk.strip_prefix("BUDGET#")
        .and_then(|t| t.parse::<i64>().ok())
        .map(|start| start.div_euclid(BUDGET_BUCKET.as_secs() as i64))
}

pub(crate) fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn epoch_s(t: SystemTime) -> i64 {
    epoch_ms(t) / 1000
}

pub(crate) fn bucket_of(now: SystemTime) -> i64 {
    epoch_s(now).div_euclid(BUDGET_BUCKET.as_secs() as i64)
}

/// Rounded up to whole seconds, at least one: Retry-After is in seconds.
pub(crate) fn retry_after_from(until_ms: i64, now: SystemTime) -> Duration {
    let left = until_ms.saturating_sub(epoch_ms(now)).max(0) as u64;
    Duration::from_secs(left.div_ceil(1000).max(1))
}

pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn get_s<'i>(item: &'i Item, name: &str) -> Result<&'i str, LedgerError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(LedgerError::Refused(format!(
            "an item lacks the string {name}"
        ))),
    }
}

pub(crate) fn get_n(item: &Item, name: &str) -> Result<i64, LedgerError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| LedgerError::Refused(format!("an item's {name} is not an integer"))),
        _ => Err(LedgerError::Refused(format!(
            "an item lacks the number {name}"
        ))),
    }
}

fn get_time(item: &Item, name: &str) -> Result<SystemTime, LedgerError> {
    humantime::parse_rfc3339(get_s(item, name)?)
        .map_err(|_| LedgerError::Refused(format!("an item's {name} is not a time")))
}

pub(crate) fn record_from_item(item: &Item) -> Result<DeviceRecord, LedgerError> {
    let bad = |what: &str| LedgerError::Refused(format!("an item's {what} is not one we write"));
    Ok(DeviceRecord {
        ticket: get_s(item, attr::TICKET)?.to_string(),
        machine_id: get_s(item, attr::MACHINE_ID)?.to_string(),
        device: get_s(item, attr::DEVICE)?.to_string(),
        status: RecordedOutcome::parse(get_s(item, attr::OUTCOME)?)
            .ok_or_else(|| bad("outcome"))?,
        action_id: get_s(item, attr::ACTION_ID)?.to_string(),
        action_status: ActionStatus::parse(get_s(item, attr::ACTION_STATUS)?)
            .ok_or_else(|| bad("action status"))?,
        requested_at: get_time(item, attr::REQUESTED_AT)?,
        updated_at: get_time(item, attr::UPDATED_AT)?,
        source: get_s(item, attr::SOURCE)?.to_string(),
    })
}

pub(crate) fn answer_from_item(item: &Item) -> Result<StoredAnswer, LedgerError> {
    Ok(StoredAnswer {
        status: u16::try_from(get_n(item, attr::ANSWER_STATUS)?)
            .map_err(|_| LedgerError::Refused("a stored answer's status is not HTTP".into()))?,
        body: get_s(item, attr::ANSWER_BODY)?.to_string(),
    })
}
