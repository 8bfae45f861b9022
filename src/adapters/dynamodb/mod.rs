//! Adapter: the ledger in a DynamoDB table: the ledger's calls here, the
//! items' layout and codec in `item`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{KeysAndAttributes, ReturnValuesOnConditionCheckFailure::AllOld};

use crate::adapters::aws::{self, LazyClient};
use crate::domain::ledger::*;
use crate::support::time::{unix_millis, unix_secs};

pub mod item;
mod limits;

use item::*;

/// A past bucket is read again while an instance with a slightly late clock
/// could still be writing to it.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

type SdkError<E> =
    aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>;

/// The two kinds of failure the caller acts on (`aws::sort`).
fn classify<E>(e: SdkError<E>) -> LedgerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match aws::sort(&e) {
        f if f.passing => LedgerError::Unavailable(f.detail),
        f => LedgerError::Refused(f.detail),
    }
}

/// `Ok(old item)` when the call failed its condition (the calls ask for
/// the old item, ReturnValuesOnConditionCheckFailure=ALL_OLD: no second
/// read), else the error.
fn condition_failed<E>(e: SdkError<E>) -> Result<Option<Item>, LedgerError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    aws_sdk_dynamodb::Error: From<SdkError<E>>,
{
    if e.as_service_error().and_then(|se| se.code()) != Some("ConditionalCheckFailedException") {
        return Err(classify(e));
    }
    match aws_sdk_dynamodb::Error::from(e) {
        aws_sdk_dynamodb::Error::ConditionalCheckFailedException(c) => Ok(c.item),
        _ => Ok(None),
    }
}

/// The aliases the expressions use: `#x` stands for the attribute `x`.
/// Every expression aliases: `state`, `owner`, `count` and `source` are
/// DynamoDB reserved words.
fn names(expressions: &[&str]) -> Option<HashMap<String, String>> {
    let words = expressions
        .iter()
        .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '#')));
    let aliases = words.filter_map(|w| w.strip_prefix('#'));
    Some(aliases.map(|a| (format!("#{a}"), a.to_string())).collect())
}

/// Adapter: the table in DynamoDB.
pub struct DynamoLedger {
    client: LazyClient<aws_sdk_dynamodb::Client>,
    table: String,
    /// Closed budget buckets never change: read once per instance.
    closed_buckets: Mutex<HashMap<(String, i64), u32>>,
    /// Items per Query page; DynamoDB's 1 MB pages unless set (tests set
    /// it to show that every page is read).
    page_size: Option<i32>,
    /// The last `tat` seen of each limit item: which update to try first.
    limit_tats: Mutex<HashMap<String, i64>>,
}

impl DynamoLedger {
    pub fn new(client: impl Into<LazyClient<aws_sdk_dynamodb::Client>>, table: String) -> Self {
        Self {
            client: client.into(),
            table,
            closed_buckets: Mutex::default(),
            page_size: None,
            limit_tats: Mutex::default(),
        }
    }

    pub fn from_env(table: String) -> Self {
        Self::new(LazyClient::from_env(), table)
    }

    pub fn with_page_size(mut self, items: i32) -> Self {
        self.page_size = Some(items);
        self
    }

    async fn client(&self) -> &aws_sdk_dynamodb::Client {
        self.client.get().await
    }

    fn closed_buckets(&self) -> MutexGuard<'_, HashMap<(String, i64), u32>> {
        self.closed_buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// `update` (with `:as` and `:upd`) on a device record that exists and
    /// holds no final status, and meets `and_also` (` AND ...`, or empty).
    /// `Ok(None)` when written; else the record as it was (empty: none).
    async fn set_unless_final(
        &self,
        key: &RecordKey,
        update: &str,
        status: ActionStatus,
        at: SystemTime,
        and_also: &str,
    ) -> Result<Option<Option<Item>>, LedgerError> {
        let [f1, f2, f3, f4] = ActionStatus::FINAL.map(|f| s(f.as_str()));
        let condition = format!(
            "attribute_exists(#pk) AND NOT (#action_status IN (:f1, :f2, :f3, :f4)){and_also}"
        );
        let result = self
            .client()
            .await
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key.item([])))
            .update_expression(update)
            .condition_expression(&condition)
            .set_expression_attribute_names(names(&[update, &condition]))
            .expression_attribute_values(":as", s(status.as_str()))
            .expression_attribute_values(":upd", s(format_time(at)))
            .expression_attribute_values(":f1", f1)
            .expression_attribute_values(":f2", f2)
            .expression_attribute_values(":f3", f3)
            .expression_attribute_values(":f4", f4)
            .return_values_on_condition_check_failure(AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(None),
            Err(e) => condition_failed(e).map(Some),
        }
    }

    async fn put(&self, item: Item) -> Result<(), LedgerError> {
        self.client()
            .await
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// A long answer, joined from its `parts` (one strongly consistent
    /// Query, all pages). A part missing is an error, never a short answer.
    async fn read_parts(&self, key: &IdempotencyKey, parts: usize) -> Result<String, LedgerError> {
        let condition = "#pk = :pk AND #sk BETWEEN :first AND :last";
        let missing = || {
            LedgerError::Refused(format!(
                "a kept answer has {parts} parts, and not all of them are there"
            ))
        };
        let mut body = String::new();
        let mut got = 0;
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client()
                .await
                .query()
                .table_name(&self.table)
                .key_condition_expression(condition)
                .set_expression_attribute_names(names(&[condition]))
                .expression_attribute_values(":pk", s(key.pk()))
                .expression_attribute_values(":first", s(AnswerPart(key, 1).sk()))
                .expression_attribute_values(":last", s(AnswerPart(key, parts).sk()))
                .consistent_read(true)
                .set_limit(self.page_size)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(classify)?;
            for item in page.items() {
                got += 1;
                if got > parts || get_s(item, schema::SK)? != AnswerPart(key, got).sk() {
                    return Err(missing());
                }
                body.push_str(get_s(item, attr::ANSWER_BODY)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        if got != parts {
            return Err(missing());
        }
        Ok(body)
    }

    async fn query_all(
        &self,
        index: Option<&str>,
        key_condition: &str,
        values: Item,
    ) -> Result<Vec<DeviceRecord>, LedgerError> {
        let client = self.client().await;
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let q = client
                .query()
                .table_name(&self.table)
                .key_condition_expression(key_condition)
                .set_expression_attribute_names(names(&[key_condition]))
                .set_expression_attribute_values(Some(values.clone()))
                .set_limit(self.page_size)
                .set_exclusive_start_key(start.take());
            let page = match index {
                Some(i) => q.index_name(i),
                // The ticket read follows writes closely (an auditor right
                // after the request): read the base table strongly.
                None => q.consistent_read(true),
            };
            let page = page.send().await.map_err(classify)?;
            for item in page.items() {
                out.push(DeviceRecord::try_from(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// The counts of the twelve buckets before `current`, from the cache
    /// where a bucket is closed, else in one BatchGetItem.
    async fn previous_buckets(
        &self,
        scope: &str,
        current: i64,
        now: SystemTime,
    ) -> Result<u64, LedgerError> {
        let first = current - BUDGET_BUCKETS_BEFORE;
        let settled_before = bucket_of(now - CLOCK_SKEW);
        let mut total = 0u64;
        let mut wanted = HashMap::new();
        {
            let mut cache = self.closed_buckets();
            cache.retain(|(_, b), _| *b >= first);
            for b in first..current {
                match cache.get(&(scope.to_string(), b)) {
                    Some(c) => total += u64::from(*c),
                    None => {
                        wanted.insert(Bucket(scope, b).pk(), b);
                    }
                }
            }
        }
        if wanted.is_empty() {
            return Ok(total);
        }
        let keys = KeysAndAttributes::builder()
            .set_keys(Some(
                wanted
                    .values()
                    .map(|b| Bucket(scope, *b).item([]))
                    .collect(),
            ))
            .consistent_read(true)
            .build()
            .map_err(|e| LedgerError::Refused(e.to_string()))?;
        let mut request = Some(HashMap::from([(self.table.clone(), keys)]));
        let mut found: HashMap<i64, u32> = wanted.values().map(|b| (*b, 0)).collect();
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
            let items = out.responses().and_then(|r| r.get(&self.table));
            for item in items.into_iter().flatten() {
                let b = wanted.get(get_s(item, schema::PK)?).ok_or_else(|| {
                    LedgerError::Refused("a budget item's key is not ours".into())
                })?;
                let c = get_n::<i64>(item, attr::COUNT)?.max(0);
                found.insert(*b, u32::try_from(c).unwrap_or(u32::MAX));
            }
            request = out.unprocessed_keys.filter(|u| !u.is_empty());
        }
        if request.is_some() {
            return Err(LedgerError::Unavailable(
                "BatchGetItem left budget buckets unread".into(),
            ));
        }
        let mut cache = self.closed_buckets();
        for (b, c) in found {
            total += u64::from(c);
            if b < settled_before {
                cache.insert((scope.to_string(), b), c);
            }
        }
        Ok(total)
    }
}

impl DeliveryClaims for DynamoLedger {
    fn begin<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        request: &'a Fingerprint,
        now: SystemTime,
        in_progress_until: SystemTime,
    ) -> LedgerFuture<'a, Begin> {
        Box::pin(async move {
            // Tells our own write apart when the SDK retries a put whose
            // first answer was lost: the retry fails its condition on the
            // record the first attempt wrote.
            let owner = format!("{:032x}", fastrand::u128(..));
            let until_ms = unix_millis(in_progress_until);
            // A claim let go of, or whose holder died, is taken over only
            // for the same request (or where no fingerprint was kept).
            let condition = "attribute_not_exists(#pk) OR #expires_at < :now_s \
                 OR (#state = :ip AND #in_progress_until_ms < :now_ms \
                     AND (attribute_not_exists(#fingerprint) OR #fingerprint = :fp))";
            let result = self
                .client()
                .await
                .put_item()
                .table_name(&self.table)
                .set_item(Some(key.item([
                    (attr::STATE, s(IN_PROGRESS)),
                    (attr::OWNER, s(&owner)),
                    (attr::IN_PROGRESS_UNTIL_MS, n(until_ms)),
                    (attr::FINGERPRINT, s(request.to_hex())),
                    // A dead holder's record goes by TTL eventually; it is
                    // taken over as soon as `in_progress_until` passes.
                    (schema::EXPIRES_AT, n(until_ms / 1000 + 3600)),
                ])))
                .condition_expression(condition)
                .set_expression_attribute_names(names(&[condition]))
                .expression_attribute_values(":now_s", n(unix_secs(now)))
                .expression_attribute_values(":now_ms", n(unix_millis(now)))
                .expression_attribute_values(":ip", s(IN_PROGRESS))
                .expression_attribute_values(":fp", s(request.to_hex()))
                .return_values_on_condition_check_failure(AllOld)
                .send()
                .await;
            let old = match result {
                Ok(_) => return Ok(Begin::Started),
                Err(e) => condition_failed(e)?,
            };
            match decide(old.as_ref(), &owner, request, now)? {
                Decided::Begin(b) => Ok(b),
                Decided::Parts { status, parts } => Ok(Begin::Done(StoredAnswer {
                    status,
                    body: self.read_parts(key, parts).await?,
                })),
            }
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        request: &'a Fingerprint,
        answer: &'a StoredAnswer,
        expires_at: SystemTime,
    ) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            let expires_at = n(unix_secs(expires_at));
            let body = if answer.body.len() <= MAX_STORED_BODY {
                (attr::ANSWER_BODY, s(&answer.body))
            } else {
                // The parts first: a delivery's item that names parts
                // finds them all.
                let parts = split_body(&answer.body, MAX_STORED_BODY);
                let puts = parts.iter().enumerate().map(|(i, part)| {
                    self.put(AnswerPart(key, i + 1).item([
                        (attr::ANSWER_BODY, s(*part)),
                        (schema::EXPIRES_AT, expires_at.clone()),
                    ]))
                });
                futures_util::future::try_join_all(puts).await?;
                (attr::ANSWER_PARTS, n(parts.len()))
            };
            self.put(key.item([
                (attr::STATE, s(COMPLETED)),
                (attr::ANSWER_STATUS, n(answer.status)),
                body,
                (attr::FINGERPRINT, s(request.to_hex())),
                (schema::EXPIRES_AT, expires_at),
            ]))
            .await
        })
    }

    fn abandon<'a>(&'a self, key: &'a IdempotencyKey) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            // Its holder is gone: the claim is free for the same request at
            // once, and keeps its fingerprint against any other.
            let update = "SET #in_progress_until_ms = :gone REMOVE #owner";
            let condition = "#state = :ip";
            let result = self
                .client()
                .await
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key.item([])))
                .update_expression(update)
                .condition_expression(condition)
                .set_expression_attribute_names(names(&[update, condition]))
                .expression_attribute_values(":gone", n(0))
                .expression_attribute_values(":ip", s(IN_PROGRESS))
                .send()
                .await;
            match result {
                Ok(_) => Ok(()),
                // Not in progress (completed, or gone): nothing to let go.
                Err(e) => condition_failed(e).map(|_| ()),
            }
        })
    }
}

impl DeviceRecords for DynamoLedger {
    fn record_device<'a>(&'a self, record: &'a DeviceRecord) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            let mut item = Item::from(record);
            let key: Item = [schema::PK, schema::SK]
                .into_iter()
                .filter_map(|k| item.remove_entry(k))
                .collect();
            // Written again, a record keeps its first request time (and
            // with it its place in the machine index) and the action's
            // latest status.
            let set: Vec<String> = item
                .keys()
                .map(|a| match a.as_str() {
                    attr::REQUESTED_AT | schema::GSI1_SK | attr::ACTION_STATUS => {
                        format!("#{a} = if_not_exists(#{a}, :{a})")
                    }
                    _ => format!("#{a} = :{a}"),
                })
                .collect();
            let update = format!("SET {}", set.join(", "));
            let values = item.into_iter().map(|(a, v)| (format!(":{a}"), v));
            self.client()
                .await
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .set_expression_attribute_names(names(&[&update]))
                .update_expression(update)
                .set_expression_attribute_values(Some(values.collect()))
                .send()
                .await
                .map_err(classify)?;
            Ok(())
        })
    }

    fn ticket_records<'a>(&'a self, ticket: &'a str) -> LedgerFuture<'a, Vec<DeviceRecord>> {
        let values = Item::from([
            (":pk".into(), s(ticket_pk(ticket))),
            (":machine".into(), s(MACHINE_PREFIX)),
        ]);
        Box::pin(self.query_all(None, "#pk = :pk AND begins_with(#sk, :machine)", values))
    }

    fn machine_records<'a>(&'a self, machine_id: &'a str) -> LedgerFuture<'a, Vec<DeviceRecord>> {
        let values = Item::from([(":m".into(), s(machine_pk(machine_id)))]);
        Box::pin(self.query_all(Some(schema::BY_MACHINE), "#gsi1pk = :m", values))
    }

    fn update_action_status<'a>(
        &'a self,
        key: &'a RecordKey,
        status: ActionStatus,
        updated_at: SystemTime,
    ) -> LedgerFuture<'a, StatusUpdate> {
        Box::pin(async move {
            let update = "SET #action_status = :as, #updated_at = :upd";
            let old = match self
                .set_unless_final(key, update, status, updated_at, "")
                .await?
            {
                None => return Ok(StatusUpdate::Updated),
                Some(old) => old,
            };
            match old.filter(|o| !o.is_empty()) {
                None => Ok(StatusUpdate::NotFound),
                Some(old) => Ok(StatusUpdate::AlreadyFinal(get(&old, attr::ACTION_STATUS)?)),
            }
        })
    }

    fn report_outcome<'a>(
        &'a self,
        key: &'a RecordKey,
        status: ActionStatus,
        at: SystemTime,
    ) -> LedgerFuture<'a, Report> {
        Box::pin(async move {
            let unreported = " AND attribute_not_exists(#outcome_reported_at)";
            // A final status the record holds (the cancel route's, say) is
            // the outcome; tracking only marks it reported.
            let mark = "SET #outcome_reported_at = :upd";
            for _ in 0..3 {
                let update =
                    "SET #action_status = :as, #updated_at = :upd, #outcome_reported_at = :upd";
                let old = match self
                    .set_unless_final(key, update, status, at, unreported)
                    .await?
                {
                    None => return Ok(Report::First(status)),
                    Some(old) => old,
                };
                let Some(old) = old.filter(|o| !o.is_empty()) else {
                    return Ok(Report::NotFound);
                };
                if old.contains_key(attr::OUTCOME_REPORTED_AT) {
                    return Ok(Report::Already);
                }
                let held: ActionStatus = get(&old, attr::ACTION_STATUS)?;
                if !held.is_final() {
                    continue;
                }
                let condition =
                    format!("attribute_exists(#pk) AND #action_status = :held{unreported}");
                let result = self
                    .client()
                    .await
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(key.item([])))
                    .update_expression(mark)
                    .condition_expression(&condition)
                    .set_expression_attribute_names(names(&[mark, &condition]))
                    .expression_attribute_values(":held", s(held.as_str()))
                    .expression_attribute_values(":upd", s(format_time(at)))
                    .send()
                    .await;
                match result {
                    Ok(_) => return Ok(Report::First(held)),
                    // Reported or changed in between: look again.
                    Err(e) => {
                        condition_failed(e)?;
                    }
                }
            }
            Err(LedgerError::Unavailable(
                "the device record kept changing while its outcome was reported".into(),
            ))
        })
    }
}

impl OffboardBudget for DynamoLedger {
    fn take_budget<'a>(
        &'a self,
        scope: &'a str,
        wanted: u32,
        limit: u32,
        now: SystemTime,
    ) -> LedgerFuture<'a, u32> {
        Box::pin(async move {
            if wanted == 0 || limit == 0 {
                return Ok(0);
            }
            let current = bucket_of(now);
            let before = self.previous_buckets(scope, current, now).await?;
            let room_here = u64::from(limit).saturating_sub(before);
            let mut ask = u64::from(wanted).min(room_here);
            let update = "ADD #count :n SET #expires_at = :exp";
            let condition = "attribute_not_exists(#count) OR #count <= :most";
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
                    .set_key(Some(Bucket(scope, current).item([])))
                    .update_expression(update)
                    .condition_expression(condition)
                    .set_expression_attribute_names(names(&[update, condition]))
                    .expression_attribute_values(":n", n(ask))
                    .expression_attribute_values(":most", n(room_here - ask))
                    .expression_attribute_values(
                        ":exp",
                        n((current + 1) * BUDGET_BUCKET.as_secs() as i64 + 2 * 3600),
                    )
                    .return_values_on_condition_check_failure(AllOld)
                    .send()
                    .await;
                let old = match result {
                    Ok(_) => return Ok(ask as u32),
                    Err(e) => condition_failed(e)?,
                };
                let taken = old
                    .filter(|o| !o.is_empty())
                    .map(|i| get_n::<i64>(&i, attr::COUNT))
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

    fn give_back_budget<'a>(
        &'a self,
        scope: &'a str,
        places: u32,
        taken_at: SystemTime,
    ) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            if places == 0 {
                return Ok(());
            }
            let bucket = bucket_of(taken_at);
            // Never below zero: a bucket holding fewer (or gone by TTL)
            // fails the condition and is left alone.
            let update = "ADD #count :minus";
            let condition = "#count >= :n";
            let result = self
                .client()
                .await
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Bucket(scope, bucket).item([])))
                .update_expression(update)
                .condition_expression(condition)
                .set_expression_attribute_names(names(&[update, condition]))
                .expression_attribute_values(":minus", n(-i64::from(places)))
                .expression_attribute_values(":n", n(places))
                .send()
                .await;
            match result {
                Ok(_) => {}
                Err(e) => condition_failed(e).map(|_| ())?,
            }
            // This instance's copy of a closed bucket, lowered likewise.
            if let Some(c) = self.closed_buckets().get_mut(&(scope.to_string(), bucket)) {
                *c = c.saturating_sub(places);
            }
            Ok(())
        })
    }
}

/// What a failed claim means, from the record that made it fail: a
/// `Begin`, or a long answer still to be read from its parts.
enum Decided {
    Begin(Begin),
    Parts { status: u16, parts: usize },
}

fn decide(
    old: Option<&Item>,
    owner: &str,
    request: &Fingerprint,
    now: SystemTime,
) -> Result<Decided, LedgerError> {
    let Some(old) = old.filter(|o| !o.is_empty()) else {
        // The record vanished between the check and the answer (TTL):
        // whoever retries next will find the way clear.
        return Ok(Decided::Begin(Begin::InProgress {
            retry_after: Duration::from_secs(1),
        }));
    };
    // Items written before fingerprints were kept answer any request.
    let other_request = match old.get(attr::FINGERPRINT) {
        None => false,
        Some(_) => get_s(old, attr::FINGERPRINT)? != request.to_hex(),
    };
    let begin = match get_s(old, attr::STATE)? {
        IN_PROGRESS if old.get(attr::OWNER) == Some(&s(owner)) => Begin::Started,
        IN_PROGRESS | COMPLETED if other_request => Begin::Reused,
        COMPLETED if old.contains_key(attr::ANSWER_PARTS) => {
            return Ok(Decided::Parts {
                status: get_n(old, attr::ANSWER_STATUS)?,
                parts: get_n(old, attr::ANSWER_PARTS)?,
            });
        }
        COMPLETED => Begin::Done(StoredAnswer::try_from(old)?),
        IN_PROGRESS => Begin::InProgress {
            retry_after: retry_after_from(get_n(old, attr::IN_PROGRESS_UNTIL_MS)?, now),
        },
        _ => {
            return Err(LedgerError::Refused(
                "a delivery record's state is not one we write".into(),
            ));
        }
    };
    Ok(Decided::Begin(begin))
}
