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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, ReturnValuesOnConditionCheckFailure,
};
use futures_util::future::BoxFuture;
use serde::{Serialize, Serializer};
use thiserror::Error;

pub use crate::replay::Answer as StoredAnswer;

/// Names the adapter and the table definition (`testkit/ledger-table.json`,
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
const BUDGET_BUCKETS_BEFORE: i64 = 12;
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
    fn pk(&self) -> String {
        let mut s = String::with_capacity(5 + 64);
        s.push_str("IDEM#");
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
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

    fn parse(s: &str) -> Option<Self> {
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

    const FINAL: [Self; 4] = [
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
    fn pk(&self) -> String {
        ticket_pk(&self.ticket)
    }

    fn sk(&self) -> String {
        format!("MACHINE#{}#ACTION#{}", self.machine_id, self.action_id)
    }
}

fn ticket_pk(ticket: &str) -> String {
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

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

/// Fixed width, UTC, millisecond precision: sorts as text in time order
/// (the machine index's sort key relies on it).
fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn epoch_s(t: SystemTime) -> i64 {
    epoch_ms(t) / 1000
}

fn bucket_of(now: SystemTime) -> i64 {
    epoch_s(now).div_euclid(BUDGET_BUCKET.as_secs() as i64)
}

/// Rounded up to whole seconds, at least one: Retry-After is in seconds.
fn retry_after_from(until_ms: i64, now: SystemTime) -> Duration {
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

// ---------------------------------------------------------------------------
// DynamoDB

mod attr {
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

const IN_PROGRESS: &str = "in_progress";
const COMPLETED: &str = "completed";
const IDEM_SK: &str = "IDEM";
const BUDGET_SK: &str = "BUDGET";
/// A past bucket is read again while an instance with a slightly late clock
/// could still be writing to it.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'i>(item: &'i Item, name: &str) -> Result<&'i str, LedgerError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(LedgerError::Refused(format!(
            "an item lacks the string {name}"
        ))),
    }
}

fn get_n(item: &Item, name: &str) -> Result<i64, LedgerError> {
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

fn record_from_item(item: &Item) -> Result<DeviceRecord, LedgerError> {
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

/// Sorts an SDK error into the two kinds the caller acts on. Throttling and
/// 5xx are worth a retry; so is anything that never got an answer.
fn classify<E>(e: SdkError<E>) -> LedgerError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let reason = |e: &SdkError<E>| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string();
    match &e {
        aws_sdk_dynamodb::error::SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let retryable = status >= 500
                || matches!(
                    code,
                    "ThrottlingException"
                        | "ProvisionedThroughputExceededException"
                        | "RequestLimitExceeded"
                        | "InternalServerError"
                        | "ServiceUnavailable"
                        | "TransactionConflictException"
                );
            if retryable {
                LedgerError::Unavailable(reason(&e))
            } else {
                LedgerError::Refused(reason(&e))
            }
        }
        aws_sdk_dynamodb::error::SdkError::ConstructionFailure(_) => {
            LedgerError::Refused(reason(&e))
        }
        _ => LedgerError::Unavailable(reason(&e)),
    }
}

type SdkError<E> =
    aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>;

/// The operations whose condition can fail, with the old item DynamoDB
/// returned (ReturnValuesOnConditionCheckFailure=ALL_OLD): no second read.
trait ConditionFailure: Sized {
    fn is_condition_failure(&self) -> bool;
    fn old_item(self) -> Option<Item>;
}

macro_rules! condition_failure {
    ($($error:ty),*) => {$(
        impl ConditionFailure for $error {
            fn is_condition_failure(&self) -> bool {
                matches!(self, Self::ConditionalCheckFailedException(_))
            }
            fn old_item(self) -> Option<Item> {
                match self {
                    Self::ConditionalCheckFailedException(c) => c.item,
                    _ => None,
                }
            }
        }
    )*};
}

condition_failure!(
    aws_sdk_dynamodb::operation::put_item::PutItemError,
    aws_sdk_dynamodb::operation::update_item::UpdateItemError,
    aws_sdk_dynamodb::operation::delete_item::DeleteItemError
);

/// `Ok(old item)` when the call failed its condition, else the error.
fn condition_failed<E>(e: SdkError<E>) -> Result<Option<Item>, LedgerError>
where
    E: ConditionFailure + ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match e {
        aws_sdk_dynamodb::error::SdkError::ServiceError(se) if se.err().is_condition_failure() => {
            Ok(se.into_err().old_item())
        }
        other => Err(classify(other)),
    }
}

/// The DynamoDB client with time limits that fit in a request, like the
/// Secrets Manager one: two attempts, never long enough to eat the Lambda
/// deadline, so an unreachable table becomes a quick 503.
pub fn dynamodb_client(conf: aws_sdk_dynamodb::config::Builder) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::config::retry::RetryConfig;
    use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
    let conf = conf
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_attempt_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(4))
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(Duration::from_millis(100)),
        )
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// Adapter: the table in DynamoDB.
pub struct DynamoLedger {
    /// Built on first use, like the SQS and Secrets Manager clients.
    client: tokio::sync::OnceCell<aws_sdk_dynamodb::Client>,
    table: String,
    /// Closed budget buckets never change: read once per instance.
    closed_buckets: Mutex<HashMap<i64, u32>>,
    /// Items per Query page; DynamoDB's 1 MB pages unless set (tests set
    /// it to show that every page is read).
    page_size: Option<i32>,
}

impl DynamoLedger {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self {
            client: tokio::sync::OnceCell::new_with(Some(client)),
            table,
            closed_buckets: Mutex::default(),
            page_size: None,
        }
    }

    pub fn from_env(table: String) -> Self {
        Self {
            client: tokio::sync::OnceCell::new(),
            table,
            closed_buckets: Mutex::default(),
            page_size: None,
        }
    }

    pub fn with_page_size(mut self, items: i32) -> Self {
        self.page_size = Some(items);
        self
    }

    async fn client(&self) -> &aws_sdk_dynamodb::Client {
        self.client
            .get_or_init(|| async {
                let base =
                    aws_sdk_dynamodb::config::Builder::from(crate::runtime::sdk_config().await);
                dynamodb_client(base)
            })
            .await
    }

    async fn query_all(
        &self,
        index: Option<&str>,
        key_condition: &str,
        names: &[(&str, &str)],
        values: &[(&str, AttributeValue)],
    ) -> Result<Vec<DeviceRecord>, LedgerError> {
        let client = self.client().await;
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = client
                .query()
                .table_name(&self.table)
                .key_condition_expression(key_condition)
                .set_limit(self.page_size)
                .set_exclusive_start_key(start.take());
            q = match index {
                Some(i) => q.index_name(i),
                // The ticket read follows writes closely (an auditor right
                // after the request): read the base table strongly.
                None => q.consistent_read(true),
            };
            for (k, v) in names {
                q = q.expression_attribute_names(*k, *v);
            }
            for (k, v) in values {
                q = q.expression_attribute_values(*k, v.clone());
            }
            let page = q.send().await.map_err(classify)?;
            for item in page.items() {
                out.push(record_from_item(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// The counts of the twelve buckets before `current`, from the cache
    /// where a bucket is closed, else in one BatchGetItem.
    async fn previous_buckets(&self, current: i64, now: SystemTime) -> Result<u64, LedgerError> {
        let first = current - BUDGET_BUCKETS_BEFORE;
        let settled_before = bucket_of(now - CLOCK_SKEW);
        let mut total = 0u64;
        let mut wanted = Vec::new();
        {
            let mut cache = self
                .closed_buckets
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            cache.retain(|b, _| *b >= first);
            for b in first..current {
                match cache.get(&b) {
                    Some(c) => total += u64::from(*c),
                    None => wanted.push(b),
                }
            }
        }
        if wanted.is_empty() {
            return Ok(total);
        }
        let mut keys = KeysAndAttributes::builder().consistent_read(true);
        for b in &wanted {
            keys = keys.keys(HashMap::from([
                (schema::PK.to_string(), s(budget_pk(*b))),
                (schema::SK.to_string(), s(BUDGET_SK)),
            ]));
        }
        let mut request = Some(HashMap::from([(
            self.table.clone(),
            keys.build()
                .map_err(|e| LedgerError::Refused(e.to_string()))?,
        )]));
        let mut found: HashMap<i64, u32> = wanted.iter().map(|b| (*b, 0)).collect();
        // BatchGetItem may leave keys unprocessed under load; a few rounds,
        // then the table counts as unavailable rather than guessing low.
        for _ in 0..3 {
            let Some(req) = request.take() else { break };
            let out = self
                .client()
                .await
                .batch_get_item()
                .set_request_items(Some(req))
                .send()
                .await
                .map_err(classify)?;
            for item in out
                .responses()
                .and_then(|r| r.get(&self.table))
                .into_iter()
                .flatten()
            {
                let pk = get_s(item, schema::PK)?;
                let b = pk
                    .strip_prefix("BUDGET#")
                    .and_then(|t| t.parse::<i64>().ok())
                    .map(|start| start.div_euclid(BUDGET_BUCKET.as_secs() as i64))
                    .ok_or_else(|| {
                        LedgerError::Refused("a budget item's key is not ours".into())
                    })?;
                let c = u32::try_from(get_n(item, attr::COUNT)?.max(0)).unwrap_or(u32::MAX);
                found.insert(b, c);
            }
            request = out.unprocessed_keys.filter(|u| !u.is_empty());
        }
        if request.is_some() {
            return Err(LedgerError::Unavailable(
                "BatchGetItem left budget buckets unread".into(),
            ));
        }
        let mut cache = self
            .closed_buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (b, c) in found {
            total += u64::from(c);
            if b < settled_before {
                cache.insert(b, c);
            }
        }
        Ok(total)
    }
}

fn budget_pk(bucket: i64) -> String {
    format!("BUDGET#{}", bucket * BUDGET_BUCKET.as_secs() as i64)
}

fn answer_from_item(item: &Item) -> Result<StoredAnswer, LedgerError> {
    Ok(StoredAnswer {
        status: u16::try_from(get_n(item, attr::ANSWER_STATUS)?)
            .map_err(|_| LedgerError::Refused("a stored answer's status is not HTTP".into()))?,
        body: get_s(item, attr::ANSWER_BODY)?.to_string(),
    })
}

impl Ledger for DynamoLedger {
    fn begin<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        now: SystemTime,
        in_progress_until: SystemTime,
    ) -> BoxFuture<'a, Result<Begin, LedgerError>> {
        Box::pin(async move {
            // Tells our own write apart when the SDK retries a put whose
            // first answer was lost: the retry fails its condition on the
            // record the first attempt wrote.
            let owner = format!("{:032x}", fastrand::u128(..));
            let until_ms = epoch_ms(in_progress_until);
            let result = self
                .client()
                .await
                .put_item()
                .table_name(&self.table)
                .item(schema::PK, s(key.pk()))
                .item(schema::SK, s(IDEM_SK))
                .item(attr::STATE, s(IN_PROGRESS))
                .item(attr::OWNER, s(&owner))
                .item(attr::IN_PROGRESS_UNTIL_MS, n(until_ms))
                // A dead holder's record goes by TTL eventually; it is
                // taken over as soon as `in_progress_until` passes.
                .item(schema::EXPIRES_AT, n(until_ms / 1000 + 3600))
                .condition_expression(
                    "attribute_not_exists(#pk) OR #exp < :now_s OR (#st = :ip AND #ipu < :now_ms)",
                )
                .expression_attribute_names("#pk", schema::PK)
                .expression_attribute_names("#exp", schema::EXPIRES_AT)
                .expression_attribute_names("#st", attr::STATE)
                .expression_attribute_names("#ipu", attr::IN_PROGRESS_UNTIL_MS)
                .expression_attribute_values(":now_s", n(epoch_s(now)))
                .expression_attribute_values(":now_ms", n(epoch_ms(now)))
                .expression_attribute_values(":ip", s(IN_PROGRESS))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            match result {
                Ok(_) => Ok(Begin::Started),
                Err(e) => decide(condition_failed(e)?.as_ref(), &owner, now),
            }
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        answer: &'a StoredAnswer,
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            check_body_size(answer)?;
            self.client()
                .await
                .put_item()
                .table_name(&self.table)
                .item(schema::PK, s(key.pk()))
                .item(schema::SK, s(IDEM_SK))
                .item(attr::STATE, s(COMPLETED))
                .item(attr::ANSWER_STATUS, n(answer.status))
                .item(attr::ANSWER_BODY, s(&answer.body))
                .item(schema::EXPIRES_AT, n(epoch_s(expires_at)))
                .send()
                .await
                .map_err(classify)?;
            Ok(())
        })
    }

    fn abandon<'a>(&'a self, key: &'a IdempotencyKey) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            let result = self
                .client()
                .await
                .delete_item()
                .table_name(&self.table)
                .key(schema::PK, s(key.pk()))
                .key(schema::SK, s(IDEM_SK))
                .condition_expression("#st = :ip")
                .expression_attribute_names("#st", attr::STATE)
                .expression_attribute_values(":ip", s(IN_PROGRESS))
                .send()
                .await;
            match result {
                Ok(_) => Ok(()),
                // Not in progress (completed, or gone): nothing to drop.
                Err(e) => condition_failed(e).map(|_| ()),
            }
        })
    }

    fn record_device<'a>(
        &'a self,
        record: &'a DeviceRecord,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            let key = record.key();
            let requested = format_time(record.requested_at);
            self.client()
                .await
                .update_item()
                .table_name(&self.table)
                .key(schema::PK, s(key.pk()))
                .key(schema::SK, s(key.sk()))
                .update_expression(
                    "SET #tk = :tk, #mid = :mid, #dev = :dev, #out = :out, #aid = :aid, #src = :src, \
                     #upd = :upd, #g1pk = :g1pk, #req = if_not_exists(#req, :req), \
                     #g1sk = if_not_exists(#g1sk, :g1sk), #as = if_not_exists(#as, :as)",
                )
                .expression_attribute_names("#tk", attr::TICKET)
                .expression_attribute_names("#mid", attr::MACHINE_ID)
                .expression_attribute_names("#dev", attr::DEVICE)
                .expression_attribute_names("#out", attr::OUTCOME)
                .expression_attribute_names("#aid", attr::ACTION_ID)
                .expression_attribute_names("#src", attr::SOURCE)
                .expression_attribute_names("#upd", attr::UPDATED_AT)
                .expression_attribute_names("#g1pk", schema::GSI1_PK)
                .expression_attribute_names("#req", attr::REQUESTED_AT)
                .expression_attribute_names("#g1sk", schema::GSI1_SK)
                .expression_attribute_names("#as", attr::ACTION_STATUS)
                .expression_attribute_values(":tk", s(&record.ticket))
                .expression_attribute_values(":mid", s(&record.machine_id))
                .expression_attribute_values(":dev", s(&record.device))
                .expression_attribute_values(":out", s(record.status.as_str()))
                .expression_attribute_values(":aid", s(&record.action_id))
                .expression_attribute_values(":src", s(&record.source))
                .expression_attribute_values(":upd", s(format_time(record.updated_at)))
                .expression_attribute_values(":g1pk", s(machine_pk(&record.machine_id)))
                .expression_attribute_values(":req", s(&requested))
                .expression_attribute_values(":g1sk", s(format!("{requested}#{}", record.ticket)))
                .expression_attribute_values(":as", s(record.action_status.as_str()))
                .send()
                .await
                .map_err(classify)?;
            Ok(())
        })
    }

    fn ticket_records<'a>(
        &'a self,
        ticket: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeviceRecord>, LedgerError>> {
        Box::pin(async move {
            self.query_all(
                None,
                "#pk = :pk AND begins_with(#sk, :machine)",
                &[("#pk", schema::PK), ("#sk", schema::SK)],
                &[(":pk", s(ticket_pk(ticket))), (":machine", s("MACHINE#"))],
            )
            .await
        })
    }

    fn machine_records<'a>(
        &'a self,
        machine_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeviceRecord>, LedgerError>> {
        Box::pin(async move {
            self.query_all(
                Some(schema::BY_MACHINE),
                "#g1pk = :g1pk",
                &[("#g1pk", schema::GSI1_PK)],
                &[(":g1pk", s(machine_pk(machine_id)))],
            )
            .await
        })
    }

    fn update_action_status<'a>(
        &'a self,
        key: &'a RecordKey,
        status: ActionStatus,
        updated_at: SystemTime,
    ) -> BoxFuture<'a, Result<StatusUpdate, LedgerError>> {
        Box::pin(async move {
            let [f1, f2, f3, f4] = ActionStatus::FINAL.map(|f| s(f.as_str()));
            let result = self
                .client()
                .await
                .update_item()
                .table_name(&self.table)
                .key(schema::PK, s(key.pk()))
                .key(schema::SK, s(key.sk()))
                .update_expression("SET #as = :as, #upd = :upd")
                .condition_expression(
                    "attribute_exists(#pk) AND (NOT (#as IN (:f1, :f2, :f3, :f4)) OR #as = :as)",
                )
                .expression_attribute_names("#pk", schema::PK)
                .expression_attribute_names("#as", attr::ACTION_STATUS)
                .expression_attribute_names("#upd", attr::UPDATED_AT)
                .expression_attribute_values(":as", s(status.as_str()))
                .expression_attribute_values(":upd", s(format_time(updated_at)))
                .expression_attribute_values(":f1", f1)
                .expression_attribute_values(":f2", f2)
                .expression_attribute_values(":f3", f3)
                .expression_attribute_values(":f4", f4)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let old = match result {
                Ok(_) => return Ok(StatusUpdate::Updated),
                Err(e) => condition_failed(e)?,
            };
            match old.filter(|o| !o.is_empty()) {
                None => Ok(StatusUpdate::NotFound),
                Some(old) => {
                    let kept = ActionStatus::parse(get_s(&old, attr::ACTION_STATUS)?).ok_or_else(
                        || {
                            LedgerError::Refused(
                                "an item's action status is not one we write".into(),
                            )
                        },
                    )?;
                    Ok(StatusUpdate::AlreadyFinal(kept))
                }
            }
        })
    }

    fn take_budget<'a>(
        &'a self,
        wanted: u32,
        limit: u32,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<u32, LedgerError>> {
        Box::pin(async move {
            if wanted == 0 || limit == 0 {
                return Ok(0);
            }
            let current = bucket_of(now);
            let before = self.previous_buckets(current, now).await?;
            let room_here = u64::from(limit).saturating_sub(before);
            let mut ask = u64::from(wanted).min(room_here);
            // Each refusal tells us the counter's value (ALL_OLD), so the
            // next ask is exact unless another taker got in between.
            for _ in 0..4 {
                if ask == 0 {
                    return Ok(0);
                }
                let result = self
                    .client()
                    .await
                    .update_item()
                    .table_name(&self.table)
                    .key(schema::PK, s(budget_pk(current)))
                    .key(schema::SK, s(BUDGET_SK))
                    .update_expression("ADD #c :n SET #exp = :exp")
                    .condition_expression("attribute_not_exists(#c) OR #c <= :most")
                    .expression_attribute_names("#c", attr::COUNT)
                    .expression_attribute_names("#exp", schema::EXPIRES_AT)
                    .expression_attribute_values(":n", n(ask))
                    .expression_attribute_values(":most", n(room_here - ask))
                    .expression_attribute_values(
                        ":exp",
                        n((current + 1) * BUDGET_BUCKET.as_secs() as i64 + 2 * 3600),
                    )
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .send()
                    .await;
                let old = match result {
                    Ok(_) => return Ok(ask as u32),
                    Err(e) => condition_failed(e)?,
                };
                let taken = old
                    .as_ref()
                    .filter(|o| !o.is_empty())
                    .map(|i| get_n(i, attr::COUNT))
                    .transpose()?
                    .unwrap_or(0)
                    .max(0) as u64;
                ask = u64::from(wanted).min(room_here.saturating_sub(taken));
            }
            // Still contended after four rounds: grant nothing rather than
            // loop; the caller answers budget_exceeded for now.
            Ok(0)
        })
    }
}

fn machine_pk(machine_id: &str) -> String {
    format!("MACHINE#{machine_id}")
}

fn check_body_size(answer: &StoredAnswer) -> Result<(), LedgerError> {
    if answer.body.len() > MAX_STORED_BODY {
        return Err(LedgerError::Refused(format!(
            "an answer of {} bytes is over the {MAX_STORED_BODY} bytes an item can keep",
            answer.body.len()
        )));
    }
    Ok(())
}

/// What a failed claim means, from the record that made it fail.
fn decide(old: Option<&Item>, owner: &str, now: SystemTime) -> Result<Begin, LedgerError> {
    let Some(old) = old.filter(|o| !o.is_empty()) else {
        // The record vanished between the check and the answer (TTL or an
        // abandon): whoever retries next will find the way clear.
        return Ok(Begin::InProgress {
            retry_after: Duration::from_secs(1),
        });
    };
    match get_s(old, attr::STATE)? {
        COMPLETED => Ok(Begin::Done(answer_from_item(old)?)),
        IN_PROGRESS if old.get(attr::OWNER) == Some(&s(owner)) => Ok(Begin::Started),
        IN_PROGRESS => Ok(Begin::InProgress {
            retry_after: retry_after_from(get_n(old, attr::IN_PROGRESS_UNTIL_MS)?, now),
        }),
        _ => Err(LedgerError::Refused(
            "a delivery record's state is not one we write".into(),
        )),
    }
}

// ---------------------------------------------------------------------------
// In memory

#[derive(Debug, Clone)]
enum Delivery {
    InProgress {
        until_ms: i64,
        expires_s: i64,
    },
    Completed {
        answer: StoredAnswer,
        expires_s: i64,
    },
}

#[derive(Default)]
struct Memory {
    deliveries: HashMap<IdempotencyKey, Delivery>,
    records: std::collections::BTreeMap<RecordKey, DeviceRecord>,
    buckets: HashMap<i64, u32>,
    unavailable: bool,
}

/// Adapter: the same rules as [`DynamoLedger`] in one process, for domain
/// tests and the local run. Expired items stay until overwritten, as they
/// do in DynamoDB before TTL gets to them.
#[derive(Default)]
pub struct InMemoryLedger {
    inner: Mutex<Memory>,
}

impl InMemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// While set, every call fails as an unreachable table does.
    pub fn set_unavailable(&self, down: bool) {
        self.lock().unavailable = down;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Memory) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut m = self.lock();
        if m.unavailable {
            return Err(LedgerError::Unavailable(
                "the in-memory ledger is set down".into(),
            ));
        }
        f(&mut m)
    }
}

fn ready<'a, T: Send + 'a>(v: Result<T, LedgerError>) -> BoxFuture<'a, Result<T, LedgerError>> {
    Box::pin(std::future::ready(v))
}

impl Ledger for InMemoryLedger {
    fn begin<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        now: SystemTime,
        in_progress_until: SystemTime,
    ) -> BoxFuture<'a, Result<Begin, LedgerError>> {
        ready(self.with(|m| {
            let (now_ms, now_s) = (epoch_ms(now), epoch_s(now));
            let taken = match m.deliveries.get(key) {
                None => None,
                Some(
                    Delivery::InProgress { expires_s, .. } | Delivery::Completed { expires_s, .. },
                ) if *expires_s < now_s => None,
                Some(Delivery::InProgress { until_ms, .. }) if *until_ms < now_ms => None,
                Some(Delivery::InProgress { until_ms, .. }) => Some(Begin::InProgress {
                    retry_after: retry_after_from(*until_ms, now),
                }),
                Some(Delivery::Completed { answer, .. }) => Some(Begin::Done(answer.clone())),
            };
            if let Some(b) = taken {
                return Ok(b);
            }
            let until_ms = epoch_ms(in_progress_until);
            m.deliveries.insert(
                *key,
                Delivery::InProgress {
                    until_ms,
                    expires_s: until_ms / 1000 + 3600,
                },
            );
            Ok(Begin::Started)
        }))
    }

    fn complete<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        answer: &'a StoredAnswer,
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        ready(self.with(|m| {
            check_body_size(answer)?;
            m.deliveries.insert(
                *key,
                Delivery::Completed {
                    answer: answer.clone(),
                    expires_s: epoch_s(expires_at),
                },
            );
            Ok(())
        }))
    }

    fn abandon<'a>(&'a self, key: &'a IdempotencyKey) -> BoxFuture<'a, Result<(), LedgerError>> {
        ready(self.with(|m| {
            if matches!(m.deliveries.get(key), Some(Delivery::InProgress { .. })) {
                m.deliveries.remove(key);
            }
            Ok(())
        }))
    }

    fn record_device<'a>(
        &'a self,
        record: &'a DeviceRecord,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        ready(self.with(|m| {
            let mut new = record.clone();
            if let Some(old) = m.records.get(&record.key()) {
                new.requested_at = old.requested_at;
                new.action_status = old.action_status;
            }
            m.records.insert(record.key(), new);
            Ok(())
        }))
    }

    fn ticket_records<'a>(
        &'a self,
        ticket: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeviceRecord>, LedgerError>> {
        ready(self.with(|m| {
            let mut out: Vec<DeviceRecord> = m
                .records
                .values()
                .filter(|r| r.ticket == ticket)
                .cloned()
                .collect();
            // DynamoDB's order: by sort key, which is machine then action.
            out.sort_by_key(|r| r.key().sk());
            Ok(out)
        }))
    }

    fn machine_records<'a>(
        &'a self,
        machine_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeviceRecord>, LedgerError>> {
        ready(self.with(|m| {
            let mut out: Vec<DeviceRecord> = m
                .records
                .values()
                .filter(|r| r.machine_id == machine_id)
                .cloned()
                .collect();
            out.sort_by_key(|r| (format_time(r.requested_at), r.ticket.clone()));
            Ok(out)
        }))
    }

    fn update_action_status<'a>(
        &'a self,
        key: &'a RecordKey,
        status: ActionStatus,
        updated_at: SystemTime,
    ) -> BoxFuture<'a, Result<StatusUpdate, LedgerError>> {
        ready(self.with(|m| {
            let Some(r) = m.records.get_mut(key) else {
                return Ok(StatusUpdate::NotFound);
            };
            if r.action_status.is_final() && r.action_status != status {
                return Ok(StatusUpdate::AlreadyFinal(r.action_status));
            }
            r.action_status = status;
            r.updated_at = updated_at;
            Ok(StatusUpdate::Updated)
        }))
    }

    fn take_budget<'a>(
        &'a self,
        wanted: u32,
        limit: u32,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<u32, LedgerError>> {
        ready(self.with(|m| {
            let current = bucket_of(now);
            m.buckets
                .retain(|b, _| *b >= current - BUDGET_BUCKETS_BEFORE);
            let used: u64 = m.buckets.values().map(|c| u64::from(*c)).sum();
            let granted = u64::from(wanted).min(u64::from(limit).saturating_sub(used)) as u32;
            if granted > 0 {
                *m.buckets.entry(current).or_default() += granted;
            }
            Ok(granted)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn key(n: u8) -> IdempotencyKey {
        IdempotencyKey::from([n; 32])
    }

    fn answer() -> StoredAnswer {
        StoredAnswer {
            status: 200,
            body: r#"{"ticket":"INC-1"}"#.into(),
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
        }
    }

    #[tokio::test]
    async fn a_delivery_is_started_once_then_in_progress_then_replayed() {
        let l = InMemoryLedger::new();
        assert_eq!(l.begin(&key(1), at(0), at(30)).await, Ok(Begin::Started));
        assert_eq!(
            l.begin(&key(1), at(10), at(40)).await,
            Ok(Begin::InProgress {
                retry_after: Duration::from_secs(20)
            })
        );
        l.complete(&key(1), &answer(), at(10) + ANSWER_KEPT_FOR)
            .await
            .unwrap();
        assert_eq!(
            l.begin(&key(1), at(20), at(50)).await,
            Ok(Begin::Done(answer()))
        );
        assert_eq!(l.begin(&key(2), at(20), at(50)).await, Ok(Begin::Started));
    }

    #[tokio::test]
    async fn a_dead_holder_is_taken_over_after_its_deadline_only() {
        let l = InMemoryLedger::new();
        l.begin(&key(1), at(0), at(30)).await.unwrap();
        assert!(matches!(
            l.begin(&key(1), at(30), at(60)).await,
            Ok(Begin::InProgress { .. })
        ));
        assert_eq!(l.begin(&key(1), at(31), at(61)).await, Ok(Begin::Started));
    }

    #[tokio::test]
    async fn an_expired_answer_is_not_replayed_though_it_is_still_stored() {
        let l = InMemoryLedger::new();
        l.begin(&key(1), at(0), at(30)).await.unwrap();
        l.complete(&key(1), &answer(), at(100)).await.unwrap();
        assert_eq!(
            l.begin(&key(1), at(100), at(130)).await,
            Ok(Begin::Done(answer()))
        );
        assert_eq!(l.begin(&key(1), at(101), at(131)).await, Ok(Begin::Started));
    }

    #[tokio::test]
    async fn abandon_frees_a_claim_but_keeps_an_answer() {
        let l = InMemoryLedger::new();
        l.begin(&key(1), at(0), at(30)).await.unwrap();
        l.abandon(&key(1)).await.unwrap();
        assert_eq!(l.begin(&key(1), at(1), at(31)).await, Ok(Begin::Started));
        l.complete(&key(1), &answer(), at(1000)).await.unwrap();
        l.abandon(&key(1)).await.unwrap();
        assert_eq!(
            l.begin(&key(1), at(2), at(32)).await,
            Ok(Begin::Done(answer()))
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        assert_eq!(
            retry_after_from(epoch_ms(at(0)) + 1, at(0)),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_after_from(epoch_ms(at(0)) + 1001, at(0)),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_after_from(epoch_ms(at(0)) - 5000, at(0)),
            Duration::from_secs(1)
        );
    }

    #[tokio::test]
    async fn an_answer_too_large_for_an_item_is_refused_not_truncated() {
        let l = InMemoryLedger::new();
        let big = StoredAnswer {
            status: 200,
            body: "x".repeat(MAX_STORED_BODY + 1),
        };
        assert!(matches!(
            l.complete(&key(1), &big, at(100)).await,
            Err(LedgerError::Refused(_))
        ));
    }

    #[tokio::test]
    async fn records_are_read_per_ticket_and_per_machine() {
        let l = InMemoryLedger::new();
        l.record_device(&record("INC-1", "m2", "a2", 5))
            .await
            .unwrap();
        l.record_device(&record("INC-1", "m1", "a1", 6))
            .await
            .unwrap();
        l.record_device(&record("INC-2", "m1", "a3", 1))
            .await
            .unwrap();
        let t1: Vec<String> = l
            .ticket_records("INC-1")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.action_id)
            .collect();
        assert_eq!(t1, ["a1", "a2"]);
        let m1: Vec<String> = l
            .machine_records("m1")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.ticket)
            .collect();
        assert_eq!(m1, ["INC-2", "INC-1"]);
        assert!(l.ticket_records("INC-3").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn recording_again_keeps_the_first_request_time_and_the_latest_status() {
        let l = InMemoryLedger::new();
        let first = record("INC-1", "m1", "a1", 5);
        l.record_device(&first).await.unwrap();
        l.update_action_status(&first.key(), ActionStatus::InProgress, at(7))
            .await
            .unwrap();
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
    async fn a_final_status_is_never_replaced_but_not_confirmed_is() {
        let l = InMemoryLedger::new();
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
            l.update_action_status(&k, ActionStatus::Cancelled, at(8))
                .await,
            Ok(StatusUpdate::Updated)
        );
        assert_eq!(
            l.update_action_status(&k, ActionStatus::Succeeded, at(9))
                .await,
            Ok(StatusUpdate::AlreadyFinal(ActionStatus::Cancelled))
        );
        let mut other = k.clone();
        other.action_id = "nope".into();
        assert_eq!(
            l.update_action_status(&other, ActionStatus::Succeeded, at(9))
                .await,
            Ok(StatusUpdate::NotFound)
        );
    }

    #[tokio::test]
    async fn the_budget_holds_over_any_rolling_hour() {
        let l = InMemoryLedger::new();
        let start = at(0);
        assert_eq!(l.take_budget(7, 10, start).await, Ok(7));
        // Partly granted: three left.
        assert_eq!(
            l.take_budget(5, 10, start + Duration::from_secs(1800))
                .await,
            Ok(3)
        );
        // Within the hour: spent.
        assert_eq!(
            l.take_budget(1, 10, start + Duration::from_secs(3599))
                .await,
            Ok(0)
        );
        // 61 minutes on, but the first take's bucket is still one of the
        // thirteen: refused, at most five minutes early, never late.
        assert_eq!(
            l.take_budget(1, 10, start + Duration::from_secs(3660))
                .await,
            Ok(0)
        );
        // 65 minutes on, the first seven have left the window; the three
        // from minute 30 have not.
        assert_eq!(
            l.take_budget(10, 10, start + Duration::from_secs(3900))
                .await,
            Ok(7)
        );
        assert_eq!(l.take_budget(0, 10, start).await, Ok(0));
        assert_eq!(l.take_budget(3, 0, start).await, Ok(0));
    }

    #[tokio::test]
    async fn a_ledger_set_down_is_unavailable_and_asks_for_a_retry() {
        let l = InMemoryLedger::new();
        l.set_unavailable(true);
        let e = l.begin(&key(1), at(0), at(30)).await.unwrap_err();
        assert!(matches!(e, LedgerError::Unavailable(_)));
        assert!(e.retry_after().is_some());
        assert!(LedgerError::Refused("x".into()).retry_after().is_none());
        l.set_unavailable(false);
        assert_eq!(l.begin(&key(1), at(0), at(30)).await, Ok(Begin::Started));
    }

    #[test]
    fn a_record_serialises_as_the_ticket_route_lists_it() {
        let v = serde_json::to_value(record("INC-1", "m1", "a1", 5)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "ticket": "INC-1",
                "machine_id": "m1",
                "device": "m1.contoso.com",
                "status": "offboard_requested",
                "action_id": "a1",
                "action_status": "Pending",
                "requested_at": "2027-01-15T08:00:05.000Z",
                "updated_at": "2027-01-15T08:00:05.000Z",
            })
        );
    }

    #[test]
    fn keys_are_prefixed_and_bounded() {
        assert_eq!(key(0xab).pk().len(), 5 + 64);
        assert!(key(0xab).pk().starts_with("IDEM#abab"));
        let k = record("INC-1", "m1", "a1", 0).key();
        assert_eq!(k.pk(), "TICKET#INC-1");
        assert_eq!(k.sk(), "MACHINE#m1#ACTION#a1");
        assert_eq!(budget_pk(bucket_of(at(299))), budget_pk(bucket_of(at(0))));
    }
}
