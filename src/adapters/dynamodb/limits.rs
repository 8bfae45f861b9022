//! Defender's limits counted in the table: one item per tenant and API
//! holding the pace's theoretical arrival time (`domain::limits::Pace`),
//! moved by one conditional UpdateItem per call.
//!
//! `tat` can move two ways, and DynamoDB's update expressions have no
//! `max`: when no call is scheduled ahead (`tat <= now`) it is set to
//! `now + interval`; when calls are (`now < tat <= now + tolerance +
//! max_wait`) `interval` is added to it, an atomic ADD that any number of
//! instances can make at once without conflict. The condition of each
//! checks which case holds; a refusal returns the item (ALL_OLD), so the
//! next try is the right one. The first try is the case the last `tat`
//! this instance saw points to; a `tat` seen beyond the caller's wait
//! answers `Full` without a call, since `tat` only moves forward. An item past its TTL is harmless: its
//! `tat` is in the past, the idle case.

use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::ReturnValue;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld;

use super::item::*;
use super::{DynamoLedger, condition_failed, names};
use crate::domain::ledger::{LedgerError, LedgerFuture};
use crate::domain::limits::{ApiKind, Pace, PaceStep, SharedLimits, Slot};
use crate::support::time::unix_millis;

/// An item is kept this long after its last call (TTL).
const KEPT_FOR: Duration = Duration::from_secs(2 * 3600);

impl DynamoLedger {
    fn last_tat(&self, pk: &str) -> Option<i64> {
        let tats = self.limit_tats.lock().unwrap_or_else(|e| e.into_inner());
        tats.get(pk).copied()
    }

    fn saw_tat(&self, pk: String, tat: i64) {
        let mut tats = self.limit_tats.lock().unwrap_or_else(|e| e.into_inner());
        tats.insert(pk, tat);
    }

    /// One try of `step`: `Ok(Ok(slot))` when written, `Ok(Err(tat))`
    /// with the item's `tat` when the condition did not hold.
    async fn try_step(
        &self,
        key: &LimitKey<'_>,
        step: PaceStep,
        pace: Pace,
        max_wait: Duration,
        now_ms: i64,
    ) -> Result<Result<Slot, Option<i64>>, LedgerError> {
        let interval = pace.interval.as_millis() as i64;
        let expires =
            n((now_ms + (pace.tolerance + max_wait + KEPT_FOR).as_millis() as i64) / 1000);
        let call = self
            .client()
            .await
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key.item([])))
            .expression_attribute_values(":exp", expires)
            .expression_attribute_values(":now", n(now_ms))
            .return_values_on_condition_check_failure(AllOld);
        let (update, condition, call) = match step {
            PaceStep::Idle => (
                "SET #tat_ms = :next, #expires_at = :exp",
                "attribute_not_exists(#tat_ms) OR #tat_ms <= :now",
                call.expression_attribute_values(":next", n(now_ms + interval)),
            ),
            PaceStep::Behind { .. } => (
                "SET #tat_ms = #tat_ms + :interval, #expires_at = :exp",
                "#tat_ms > :now AND #tat_ms <= :latest",
                call.expression_attribute_values(":interval", n(interval))
                    .expression_attribute_values(":latest", n(pace.latest_tat(now_ms, max_wait)))
                    .return_values(ReturnValue::UpdatedNew),
            ),
            PaceStep::Full { retry_after } => return Ok(Ok(Slot::Full { retry_after })),
        };
        let result = call
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(names(&[update, condition]))
            .send()
            .await;
        match result {
            Ok(out) => {
                let slot = match step {
                    PaceStep::Behind { .. } => {
                        let attrs = out.attributes.unwrap_or_default();
                        let tat: i64 = get_n(&attrs, attr::TAT_MS)?;
                        self.saw_tat(key.pk(), tat);
                        Slot::In(pace.wait_after(tat, now_ms))
                    }
                    _ => {
                        self.saw_tat(key.pk(), now_ms + interval);
                        Slot::In(Duration::ZERO)
                    }
                };
                Ok(Ok(slot))
            }
            Err(e) => {
                let old = condition_failed(e)?.filter(|o| !o.is_empty());
                let tat = old.map(|o| get_n::<i64>(&o, attr::TAT_MS)).transpose()?;
                Ok(Err(tat))
            }
        }
    }
}

impl SharedLimits for DynamoLedger {
    fn reserve<'a>(
        &'a self,
        tenant: &'a str,
        api: ApiKind,
        pace: Pace,
        max_wait: Duration,
        now: SystemTime,
    ) -> LedgerFuture<'a, Slot> {
        Box::pin(async move {
            let key = LimitKey(tenant, api.as_str());
            let now_ms = unix_millis(now);
            // `tat` never goes back (the idle case sets it past an old
            // one), so a `tat` seen too far ahead is still too far: no call.
            let mut step = pace.decide(self.last_tat(&key.pk()), now_ms, max_wait);
            if let PaceStep::Full { retry_after } = step {
                return Ok(Slot::Full { retry_after });
            }
            // Each refusal tells the item's `tat`, so the next try is the
            // right case unless another instance moved it in between.
            for _ in 0..4 {
                match self.try_step(&key, step, pace, max_wait, now_ms).await? {
                    Ok(slot) => return Ok(slot),
                    Err(tat) => {
                        if let Some(tat) = tat {
                            self.saw_tat(key.pk(), tat);
                        }
                        step = pace.decide(tat, now_ms, max_wait);
                    }
                }
            }
            Err(LedgerError::Unavailable(
                "the shared limit kept changing while a slot was taken".into(),
            ))
        })
    }
}
