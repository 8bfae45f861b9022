//! The durable ledger (`LEDGER_TABLE`): what the function must remember
//! across instances and cold starts. Idempotency of deliveries, a record of
//! every device an offboard was asked for, and the hourly budget. The port
//! and its types; how they are stored is the adapter's
//! (`adapters::dynamodb::item`).

use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use serde::{Serialize, Serializer};
use strum::{EnumString, IntoStaticStr};
use thiserror::Error;

use crate::support::time::{unix_millis, unix_secs};

/// A delivery's final answer as kept for replays: the status the contract
/// gives it (200, 202) and the JSON text, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: String,
}

/// How long a finished answer is replayed.
pub const ANSWER_KEPT_FOR: Duration = Duration::from_secs(24 * 3600);
/// Budget buckets: the rolling hour is the current bucket and the twelve
/// before it (see [`OffboardBudget::take_budget`]).
pub const BUDGET_BUCKET: Duration = Duration::from_secs(300);
pub(crate) const BUDGET_BUCKETS_BEFORE: i64 = 12;
/// DynamoDB's item limit is 400 KB: an answer longer than this is kept in
/// parts of at most this many bytes (answers are kept whatever their size).
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
pub struct IdempotencyKey(pub(crate) [u8; 32]);

impl From<[u8; 32]> for IdempotencyKey {
    fn from(k: [u8; 32]) -> Self {
        Self(k)
    }
}

/// What a delivery asked: the SHA-256 of its route and body. Kept with the
/// claim and the answer, so a delivery id used again for another request
/// is told apart from a replay of the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
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
    /// The delivery id was used for another request (another route or
    /// body): answer 409 `delivery_id_reused`, nothing of the other's.
    Reused,
}

/// The device outcomes the ledger records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, IntoStaticStr, EnumString)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RecordedOutcome {
    OffboardRequested,
    AlreadyPending,
}

impl RecordedOutcome {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A MachineAction's status as Defender reports it, plus `NotConfirmed`
/// for when tracking gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, IntoStaticStr, EnumString)]
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
        self.into()
    }

    /// Defender's own spelling; anything else is not a status we keep.
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    /// Defender never moves these again. `NotConfirmed` is ours, not
    /// Defender's: a later real status (a cancel, say) may replace it.
    pub fn is_final(self) -> bool {
        Self::FINAL.contains(&self)
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
    /// The tenant it is in (with the secret's `tenants`): a ticket read
    /// for one tenant lists only that tenant's records.
    #[serde(skip)]
    pub tenant: Option<String>,
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

/// What `update_action_status` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusUpdate {
    Updated,
    NotFound,
    /// The record already holds a final status (this one or another);
    /// kept, not written again.
    AlreadyFinal(ActionStatus),
}

/// What `report_outcome` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// This caller is the first to report the action's outcome, which is
    /// this status (the one given, or a final one the record already
    /// held): it sends the follow-ups.
    First(ActionStatus),
    /// Reported before (a duplicate track message): nothing to send.
    Already,
    NotFound,
}

pub(crate) fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

/// Fixed width, UTC, millisecond precision: sorts as text in time order
/// (the machine index's sort key relies on it).
pub(crate) fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The budget bucket `now` falls in (buckets count from the epoch).
pub(crate) fn bucket_of(now: SystemTime) -> i64 {
    unix_secs(now).div_euclid(BUDGET_BUCKET.as_secs() as i64)
}

/// How long to wait for a claim held until `until_ms`: rounded up to whole
/// seconds, at least one (Retry-After is in seconds).
pub(crate) fn retry_after_from(until_ms: i64, now: SystemTime) -> Duration {
    let left = until_ms.saturating_sub(unix_millis(now)).max(0) as u64;
    Duration::from_secs(left.div_ceil(1000).max(1))
}

/// What every ledger call returns.
pub type LedgerFuture<'a, T> = BoxFuture<'a, Result<T, LedgerError>>;

/// Port: idempotency of deliveries across instances.
pub trait DeliveryClaims: Send + Sync {
    /// Claims a delivery with one conditional write: it is ours when no
    /// record exists, the record's expiry has passed (TTL deletes lazily, so
    /// the condition checks it), or an in-progress record's holder died
    /// (`in_progress_until` passed). Pass the invocation's deadline as
    /// `in_progress_until`.
    ///
    /// `request` is kept with the claim and the answer: a record of the
    /// same key with another fingerprint is [`Begin::Reused`], whatever its
    /// state, and only a claim of the same request (or one written before
    /// fingerprints were kept) is taken over.
    fn begin<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        request: &'a Fingerprint,
        now: SystemTime,
        in_progress_until: SystemTime,
    ) -> LedgerFuture<'a, Begin>;

    /// Keeps the final answer, whatever its size, until `expires_at` (now +
    /// [`ANSWER_KEPT_FOR`]).
    fn complete<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        request: &'a Fingerprint,
        answer: &'a StoredAnswer,
        expires_at: SystemTime,
    ) -> LedgerFuture<'a, ()>;

    /// Lets go of an in-progress claim: a 503 answer is not kept, so a
    /// retry of the same request proceeds at once. The claim's fingerprint
    /// stays until the claim would have expired, so the delivery id is
    /// still not free for another request. A completed record is left
    /// alone.
    fn abandon<'a>(&'a self, key: &'a IdempotencyKey) -> LedgerFuture<'a, ()>;
}

/// Port: a record of every device an offboard was asked for.
pub trait DeviceRecords: Send + Sync {
    /// Records a device outcome. Written again for the same ticket, machine
    /// and action (a replayed `already_pending`), it keeps the first
    /// `requested_at` and the action's latest status, which only
    /// `update_action_status` changes.
    fn record_device<'a>(&'a self, record: &'a DeviceRecord) -> LedgerFuture<'a, ()>;

    /// Every record of a ticket (one Query, all pages), ordered by machine.
    fn ticket_records<'a>(&'a self, ticket: &'a str) -> LedgerFuture<'a, Vec<DeviceRecord>>;

    /// A machine's records across tickets, oldest first (one Query on the
    /// index, all pages; eventually consistent).
    fn machine_records<'a>(&'a self, machine_id: &'a str) -> LedgerFuture<'a, Vec<DeviceRecord>>;

    /// Sets an action's latest status; a final status is written once and
    /// never replaced (`NotConfirmed` is not final).
    fn update_action_status<'a>(
        &'a self,
        key: &'a RecordKey,
        status: ActionStatus,
        updated_at: SystemTime,
    ) -> LedgerFuture<'a, StatusUpdate>;

    /// Tracking's end: sets the final `status` unless the record holds a
    /// final one already (the cancel route's, say), and marks the outcome
    /// reported, in one conditional write that only the first caller for a
    /// record wins. Whoever gets [`Report::First`] sends the follow-ups;
    /// a duplicate track message gets [`Report::Already`].
    fn report_outcome<'a>(
        &'a self,
        key: &'a RecordKey,
        status: ActionStatus,
        at: SystemTime,
    ) -> LedgerFuture<'a, Report>;
}

/// Port: the hourly offboard budget, shared by every instance.
pub trait OffboardBudget: Send + Sync {
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
    ///
    /// `scope` is whose budget: "" without tenants, else the tenant's name
    /// (each tenant has its own).
    fn take_budget<'a>(
        &'a self,
        scope: &'a str,
        wanted: u32,
        limit: u32,
        now: SystemTime,
    ) -> LedgerFuture<'a, u32>;

    /// Gives back `places` taken at `taken_at` (the `now` of that
    /// `take_budget`): the budget counts offboards Defender accepted, so a
    /// device that comes back `already_pending` or `failed` frees its place.
    /// The bucket they were taken from is lowered, never below zero.
    fn give_back_budget<'a>(
        &'a self,
        scope: &'a str,
        places: u32,
        taken_at: SystemTime,
    ) -> LedgerFuture<'a, ()>;
}

/// `body` in pieces of at most `max` bytes (at least 4, the longest
/// character), cut on character boundaries, that join back into it.
pub(crate) fn split_body(body: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let mut end = rest.len().min(max.max(4));
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (part, tail) = rest.split_at(end);
        parts.push(part);
        rest = tail;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_spelled_as_stored_and_as_serialised() {
        let all = [
            ActionStatus::Pending,
            ActionStatus::InProgress,
            ActionStatus::Succeeded,
            ActionStatus::Failed,
            ActionStatus::Cancelled,
            ActionStatus::TimeOut,
            ActionStatus::NotConfirmed,
        ];
        for s in all {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(ActionStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ActionStatus::parse("pending"), None);
        for o in [
            RecordedOutcome::OffboardRequested,
            RecordedOutcome::AlreadyPending,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
            assert_eq!(o.as_str().parse::<RecordedOutcome>(), Ok(o));
        }
        assert_eq!(
            RecordedOutcome::OffboardRequested.as_str(),
            "offboard_requested"
        );
        assert_eq!(RecordedOutcome::AlreadyPending.as_str(), "already_pending");
    }

    #[test]
    fn a_body_splits_on_character_boundaries_and_joins_back() {
        let body = "ab\u{e9}c\u{1f600}d".repeat(100);
        for max in [4, 5, 7, 64, body.len(), body.len() + 1] {
            let parts = split_body(&body, max);
            assert_eq!(parts.concat(), body, "{max}");
            assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= max));
        }
        assert!(split_body("", 10).is_empty());
    }
}
