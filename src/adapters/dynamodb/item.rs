//! The ledger's items in DynamoDB: the key layout and the attribute codec.
//! One table (`LEDGER_TABLE`), three kinds of item, told apart by the
//! partition key's prefix:
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | a delivery | `IDEM#<sha256 hex>` | `IDEM` |
//! | a part of a long answer | `IDEM#<sha256 hex>` | `PART#0001`, `PART#0002`, ... |
//! | a device record | `TICKET#<ticket>` | `MACHINE#<machine id>#ACTION#<action id>` |
//! | a budget bucket | `BUDGET#<bucket start, unix s>` | `BUDGET` |
//! | Defender's shared limits, per tenant and API | `LIMIT#<tenant>#<api>` | `LIMIT` |
//!
//! An answer up to `MAX_STORED_BODY` bytes is kept in the delivery's item
//! (`answer_body`); a longer one in parts beside it, which the delivery's
//! item counts (`answer_parts`), all with the same expiry.
//!
//! A ticket's records share a partition, so `GET /v1/tickets/{ticket}` is one
//! Query. A machine's history is one Query on the `by-machine` index
//! (`gsi1pk = MACHINE#<id>`, `gsi1sk = <requested_at>#<ticket>`): a GSI and
//! not a second item, because DynamoDB keeps it in step with the base item
//! on every write (no transaction, no second write to forget), and history
//! reads tolerate its eventual consistency.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::SystemTime;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::domain::ledger::{
    BUDGET_BUCKET, DeviceRecord, IdempotencyKey, LedgerError, RecordKey, StoredAnswer, format_time,
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

/// Attribute names. Every expression aliases them by their own name
/// (`#state`, ...): `state`, `owner`, `count` and `source` are DynamoDB
/// reserved words.
pub(crate) mod attr {
    pub const STATE: &str = "state";
    pub const OWNER: &str = "owner";
    pub const IN_PROGRESS_UNTIL_MS: &str = "in_progress_until_ms";
    pub const ANSWER_STATUS: &str = "answer_status";
    pub const ANSWER_BODY: &str = "answer_body";
    /// A long answer's number of parts, in place of `answer_body`.
    pub const ANSWER_PARTS: &str = "answer_parts";
    /// The SHA-256 (hex) of the delivery's route and body
    /// (`domain::ledger::Fingerprint`); items written before it have none.
    pub const FINGERPRINT: &str = "fingerprint";
    /// On a device record: when tracking reported its outcome (set once).
    pub const OUTCOME_REPORTED_AT: &str = "outcome_reported_at";
    pub const TICKET: &str = "ticket";
    pub const MACHINE_ID: &str = "machine_id";
    pub const DEVICE: &str = "device";
    pub const OUTCOME: &str = "outcome";
    pub const ACTION_ID: &str = "action_id";
    pub const ACTION_STATUS: &str = "action_status";
    pub const REQUESTED_AT: &str = "requested_at";
    pub const UPDATED_AT: &str = "updated_at";
    pub const SOURCE: &str = "source";
    pub const TENANT: &str = "tenant";
    pub const COUNT: &str = "count";
    /// On a limit item: the theoretical arrival time, unix ms
    /// (`domain::limits::Pace`).
    pub const TAT_MS: &str = "tat_ms";
}

/// A delivery's `state`.
pub(crate) const IN_PROGRESS: &str = "in_progress";
pub(crate) const COMPLETED: &str = "completed";
pub(crate) const BUDGET_SK: &str = "BUDGET";
/// The sort keys of a ticket's device records begin with it.
pub(crate) const MACHINE_PREFIX: &str = "MACHINE#";

pub(crate) type Item = HashMap<String, AttributeValue>;

/// The partition and sort keys of an item.
pub(crate) trait ItemKey {
    fn pk(&self) -> String;
    fn sk(&self) -> String;

    /// The item under this key with `attrs`; with none, the key alone.
    fn item<const N: usize>(&self, attrs: [(&str, AttributeValue); N]) -> Item {
        let key = [(schema::PK, s(self.pk())), (schema::SK, s(self.sk()))];
        key.into_iter()
            .chain(attrs)
            .map(|(name, v)| (name.to_string(), v))
            .collect()
    }
}

impl ItemKey for IdempotencyKey {
    fn pk(&self) -> String {
        format!("IDEM#{}", hex::encode(self.0))
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

/// Part `n` (from 1) of a delivery's long answer.
pub(crate) struct AnswerPart<'k>(pub &'k IdempotencyKey, pub usize);

/// The sort keys of a long answer's parts begin with it.
pub(crate) const PART_PREFIX: &str = "PART#";

impl ItemKey for AnswerPart<'_> {
    fn pk(&self) -> String {
        self.0.pk()
    }

    fn sk(&self) -> String {
        format!("{PART_PREFIX}{:04}", self.1)
    }
}

/// A budget bucket (`domain::ledger::bucket_of`).
/// A budget bucket of a scope: "" (no tenants: the key as it always was)
/// or a tenant's name.
pub(crate) struct Bucket<'a>(pub &'a str, pub i64);

impl ItemKey for Bucket<'_> {
    fn pk(&self) -> String {
        let start = self.1 * BUDGET_BUCKET.as_secs() as i64;
        match self.0 {
            "" => format!("BUDGET#{start}"),
            scope => format!("BUDGET#{scope}#{start}"),
        }
    }

    fn sk(&self) -> String {
        BUDGET_SK.into()
    }
}

/// The shared limits of one tenant's API (`domain::limits::SharedLimits`).
pub(crate) struct LimitKey<'t>(pub &'t str, pub &'static str);

impl ItemKey for LimitKey<'_> {
    fn pk(&self) -> String {
        format!("LIMIT#{}#{}", self.0, self.1)
    }

    fn sk(&self) -> String {
        "LIMIT".into()
    }
}

pub(crate) fn ticket_pk(ticket: &str) -> String {
    format!("TICKET#{ticket}")
}

/// The by-machine index's partition key.
pub(crate) fn machine_pk(machine_id: &str) -> String {
    format!("{MACHINE_PREFIX}{machine_id}")
}

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

/// A string attribute read as `T`.
pub(crate) fn get<T: FromStr>(item: &Item, name: &str) -> Result<T, LedgerError> {
    get_s(item, name)?
        .parse()
        .map_err(|_| LedgerError::Refused(format!("an item's {name} is not one we write")))
}

pub(crate) fn get_n<T: FromStr>(item: &Item, name: &str) -> Result<T, LedgerError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| LedgerError::Refused(format!("an item's {name} is out of range"))),
        _ => Err(LedgerError::Refused(format!(
            "an item lacks the number {name}"
        ))),
    }
}

fn get_time(item: &Item, name: &str) -> Result<SystemTime, LedgerError> {
    humantime::parse_rfc3339(get_s(item, name)?)
        .map_err(|_| LedgerError::Refused(format!("an item's {name} is not a time")))
}

impl From<&DeviceRecord> for Item {
    fn from(r: &DeviceRecord) -> Self {
        let requested = format_time(r.requested_at);
        r.key().item([
            (attr::TICKET, s(&r.ticket)),
            (attr::MACHINE_ID, s(&r.machine_id)),
            (attr::DEVICE, s(&r.device)),
            (attr::OUTCOME, s(r.status.as_str())),
            (attr::ACTION_ID, s(&r.action_id)),
            (attr::ACTION_STATUS, s(r.action_status.as_str())),
            (attr::REQUESTED_AT, s(&requested)),
            (attr::UPDATED_AT, s(format_time(r.updated_at))),
            (attr::SOURCE, s(&r.source)),
            (attr::TENANT, s(r.tenant.as_deref().unwrap_or(""))),
            (schema::GSI1_PK, s(machine_pk(&r.machine_id))),
            (schema::GSI1_SK, s(format!("{requested}#{}", r.ticket))),
        ])
    }
}

impl TryFrom<&Item> for DeviceRecord {
    type Error = LedgerError;

    fn try_from(item: &Item) -> Result<Self, LedgerError> {
        Ok(DeviceRecord {
            ticket: get(item, attr::TICKET)?,
            machine_id: get(item, attr::MACHINE_ID)?,
            device: get(item, attr::DEVICE)?,
            status: get(item, attr::OUTCOME)?,
            action_id: get(item, attr::ACTION_ID)?,
            action_status: get(item, attr::ACTION_STATUS)?,
            requested_at: get_time(item, attr::REQUESTED_AT)?,
            updated_at: get_time(item, attr::UPDATED_AT)?,
            source: get(item, attr::SOURCE)?,
            // Records written before tenants carry none.
            tenant: item
                .get(attr::TENANT)
                .and_then(|v| v.as_s().ok())
                .filter(|t| !t.is_empty())
                .cloned(),
        })
    }
}

impl TryFrom<&Item> for StoredAnswer {
    type Error = LedgerError;

    fn try_from(item: &Item) -> Result<Self, LedgerError> {
        Ok(StoredAnswer {
            status: get_n(item, attr::ANSWER_STATUS)?,
            body: get(item, attr::ANSWER_BODY)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> IdempotencyKey {
        IdempotencyKey::from([n; 32])
    }

    #[test]
    fn keys_are_prefixed_and_bounded() {
        assert_eq!(key(0xab).pk().len(), 5 + 64);
        assert!(key(0xab).pk().starts_with("IDEM#abab"));
        let k = RecordKey {
            ticket: "INC-1".into(),
            machine_id: "m1".into(),
            action_id: "a1".into(),
        };
        assert_eq!(k.pk(), "TICKET#INC-1");
        assert_eq!(k.sk(), "MACHINE#m1#ACTION#a1");
        let part = AnswerPart(&key(0xab), 2);
        assert_eq!(part.pk(), key(0xab).pk());
        assert_eq!(part.sk(), "PART#0002");
    }
}
