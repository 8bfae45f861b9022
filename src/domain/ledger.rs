//! The durable ledger (`LEDGER_TABLE`): what the function must remember
//! across instances and cold starts. Idempotency of deliveries, a record of
//! every device an offboard was asked for, and the hourly budget, all in one
//! DynamoDB table whose key schema is ours (see [`schema`]).
//!
//! One table, three kinds of item, told apart by the partition key's prefix:
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

use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use serde::{Serialize, Serializer};
use thiserror::Error;

pub use crate::ingest::replay::Answer as StoredAnswer;
pub(crate) use crate::support::time::unix_millis as epoch_ms;

/// Names the adapter and the table definition (template.yaml's `LedgerTable`,
/// the template's `LedgerTable`) must agree on; a test checks they do.
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

/// How long a finished answer is replayed.
pub const ANSWER_KEPT_FOR: Duration = Duration::from_secs(24 * 3600);
/// Budget buckets: the rolling hour is the current bucket and the twelve
/// before it (see [`Ledger::take_budget`]).
pub const BUDGET_BUCKET: Duration = Duration::from_secs(300);
pub(crate) const BUDGET_BUCKETS_BEFORE: i64 = 12;
/// DynamoDB's item limit is 400 KB; past this the answer is not kept.
pub const MAX_STORED_BODY: usize = 350_000;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LedgerError {
    /// Network, timeout, 5xx, throttling: the caller answers 503
    /// `ledger_unavailable` with Retry-After (fail closed).
    #[error("the ledger table is unavailable: {0}")]
    Unavailable(String),
    /// Anything a retry will not cure: no such table, access denied, an
    /// invalid request, an item we cannot read.
    #[error("the ledger table refused the call: {0}")]
    Refused(String),
}

impl LedgerError {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable(_) => Some(Duration::from_secs(5)),
            Self::Refused(_) => None,
        }
    }
}

/// The delivery key (the contract's rule: signed delivery id, or source and
/// body SHA-256), hashed so the table holds no payload and keys stay short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKey([u8; 32]);

impl From<[u8; 32]> for IdempotencyKey {
    fn from(k: [u8; 32]) -> Self {
        Self(k)
    }
}

impl IdempotencyKey {
    pub(crate) fn pk(&self) -> String {
        format!("IDEM#{}", hex::encode(self.0))
    }
}

/// What `begin` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The delivery is ours to process; `complete` or `abandon` it.
    Started,
    /// Another invocation holds it; answer 409 `in_progress`.
    InProgress { retry_after: Duration },
    /// Answered before, within the last 24 hours: replay this.
    Done(StoredAnswer),
}

/// The device outcomes the ledger records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedOutcome {
    OffboardRequested,
    AlreadyPending,
}

impl RecordedOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OffboardRequested => "offboard_requested",
            Self::AlreadyPending => "already_pending",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "offboard_requested" => Some(Self::OffboardRequested),
            "already_pending" => Some(Self::AlreadyPending),
            _ => None,
        }
    }
}

/// A MachineAction's status as Defender reports it, plus `NotConfirmed`
/// for when tracking gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActionStatus {
    Pending,
    InProgress,
    Succeeded,
    Failed,
    Cancelled,
    TimeOut,
    NotConfirmed,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
            Self::TimeOut => "TimeOut",
            Self::NotConfirmed => "NotConfirmed",
        }
    }

    /// Defender's own spelling; anything else is not a status we keep.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Pending" => Self::Pending,
            "InProgress" => Self::InProgress,
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            "Cancelled" => Self::Cancelled,
            "TimeOut" => Self::TimeOut,
            "NotConfirmed" => Self::NotConfirmed,
            _ => return None,
        })
    }

    /// Defender never moves these again. `NotConfirmed` is ours, not
    /// Defender's: a later real status (a cancel, say) may replace it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::TimeOut
        )
    }

    pub(crate) const FINAL: [Self; 4] = [
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::TimeOut,
    ];
}

/// One device outcome, as `GET /v1/tickets/{ticket}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRecord {
    pub ticket: String,
    pub machine_id: String,
    pub device: String,
    pub status: RecordedOutcome,
    pub action_id: String,
    pub action_status: ActionStatus,
    #[serde(serialize_with = "rfc3339")]
    pub requested_at: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: SystemTime,
    /// The source the request came through.
    #[serde(skip)]
    pub source: String,
}

impl DeviceRecord {
    pub fn key(&self) -> RecordKey {
        RecordKey {
            ticket: self.ticket.clone(),
            machine_id: self.machine_id.clone(),
            action_id: self.action_id.clone(),
        }
    }
}

/// Which record an action belongs to. The cancel route knows only the
/// action id: Defender's answer gives the machine id, and
/// `machine_records` the ticket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    pub ticket: String,
    pub machine_id: String,
    pub action_id: String,
}

impl RecordKey {
    pub(crate) fn pk(&self) -> String {
        ticket_pk(&self.ticket)
    }

    pub(crate) fn sk(&self) -> String {
        format!("MACHINE#{}#ACTION#{}", self.machine_id, self.action_id)
    }
}

pub(crate) fn ticket_pk(ticket: &str) -> String {
    format!("TICKET#{ticket}")
}

/// What `update_action_status` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusUpdate {
    Updated,
    NotFound,
    /// The record already holds a different final status; kept.
    AlreadyFinal(ActionStatus),
}

pub(crate) fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

/// Fixed width, UTC, millisecond precision: sorts as text in time order
/// (the machine index's sort key relies on it).
pub(crate) fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
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

/// Port: the durable ledger. Small calls; the handler composes them.
pub trait Ledger: Send + Sync {
    /// Claims a delivery with one conditional write: it is ours when no
    /// record exists, the record's expiry has passed (TTL deletes lazily, so
    /// the condition checks it), or an in-progress record's holder died
    /// (`in_progress_until` passed). Pass the invocation's deadline as
    /// `in_progress_until`.
    fn begin<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        now: SystemTime,
        in_progress_until: SystemTime,
    ) -> BoxFuture<'a, Result<Begin, LedgerError>>;

    /// Keeps the final answer until `expires_at` (now + [`ANSWER_KEPT_FOR`]).
    fn complete<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        answer: &'a StoredAnswer,
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<(), LedgerError>>;

    /// Drops an in-progress claim: a 503 answer is not kept, so a retry
    /// proceeds at once. A completed record is left alone.
    fn abandon<'a>(&'a self, key: &'a IdempotencyKey) -> BoxFuture<'a, Result<(), LedgerError>>;

    /// Records a device outcome. Written again for the same ticket, machine
    /// and action (a replayed `already_pending`), it keeps the first
    /// `requested_at` and the action's latest status, which only
    /// `update_action_status` changes.
    fn record_device<'a>(
        &'a self,
        record: &'a DeviceRecord,
    ) -> BoxFuture<'a, Result<(), LedgerError>>;

    /// Every record of a ticket (one Query, all pages), ordered by machine.
    fn ticket_records<'a>(
        &'a self,
        ticket: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeviceRecord>, LedgerError>>;

    /// A machine's records across tickets, oldest first (one Query on the
    /// index, all pages; eventually consistent).
    fn machine_records<'a>(
        &'a self,
        machine_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeviceRecord>, LedgerError>>;

    /// Sets an action's latest status; a final status is never replaced by
    /// another.
    fn update_action_status<'a>(
        &'a self,
        key: &'a RecordKey,
        status: ActionStatus,
        updated_at: SystemTime,
    ) -> BoxFuture<'a, Result<StatusUpdate, LedgerError>>;

    /// Takes up to `wanted` offboards from the budget of `limit` per rolling
    /// hour and returns how many were granted (0 to `wanted`).
    ///
    /// Five-minute buckets, each an atomic counter item: a take succeeds
    /// only if the current bucket plus the twelve before it stay within
    /// `limit`, checked in the counter's own conditional update. Any 60
    /// minutes lie inside those 13 buckets, so no rolling hour ever sees
    /// more than `limit`; the price is that a take may be refused up to
    /// five minutes early. (A fixed hourly window would let `2 × limit`
    /// through around the hour; a weighted previous-hour estimate is not a
    /// bound.) Buckets expire by TTL two hours after they close.
    fn take_budget<'a>(
        &'a self,
        wanted: u32,
        limit: u32,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<u32, LedgerError>>;
}

pub(crate) fn check_body_size(answer: &StoredAnswer) -> Result<(), LedgerError> {
    if answer.body.len() > MAX_STORED_BODY {
        return Err(LedgerError::Refused(format!(
            "an answer of {} bytes is over the {MAX_STORED_BODY} bytes an item can keep",
            answer.body.len()
        )));
    }
    Ok(())
}
