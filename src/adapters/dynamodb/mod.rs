//! Adapter: the ledger in a DynamoDB table: the ledger's calls here, the
//! items' layout and codec in `item`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, ReturnValuesOnConditionCheckFailure,
};
use futures_util::future::BoxFuture;

use crate::adapters::aws::{self, LazyClient};
use crate::domain::ledger::*;

pub mod item;

use item::*;

/// A past bucket is read again while an instance with a slightly late clock
/// could still be writing to it.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

type SdkError<E> =
    aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>;

/// The two kinds of failure the caller acts on (`aws::sort`).
fn classify<E>(e: SdkError<E>) -> LedgerError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match aws::sort(&e) {
        f if f.passing => LedgerError::Unavailable(f.detail),
        f => LedgerError::Refused(f.detail),
    }
}

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
    E: ConditionFailure
        + aws_sdk_dynamodb::error::ProvideErrorMetadata
        + std::error::Error
        + 'static,
{
    match e {
        aws_sdk_dynamodb::error::SdkError::ServiceError(se) if se.err().is_condition_failure() => {
            Ok(se.into_err().old_item())
        }
        other => Err(classify(other)),
    }
}

/// Adapter: the table in DynamoDB.
pub struct DynamoLedger {
    client: LazyClient<aws_sdk_dynamodb::Client>,
    table: String,
    /// Closed budget buckets never change: read once per instance.
    closed_buckets: Mutex<HashMap<i64, u32>>,
    /// Items per Query page; DynamoDB's 1 MB pages unless set (tests set
    /// it to show that every page is read).
    page_size: Option<i32>,
}

impl DynamoLedger {
    pub fn new(client: impl Into<LazyClient<aws_sdk_dynamodb::Client>>, table: String) -> Self {
        Self {
            client: client.into(),
            table,
            closed_buckets: Mutex::default(),
            page_size: None,
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
                let b = bucket_of_pk(get_s(item, schema::PK)?).ok_or_else(|| {
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
                .item(schema::SK, s(key.sk()))
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
                .item(schema::SK, s(key.sk()))
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
                .key(schema::SK, s(key.sk()))
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
                &[
                    (":pk", s(ticket_pk(ticket))),
                    (":machine", s(MACHINE_PREFIX)),
                ],
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
