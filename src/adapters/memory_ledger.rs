//! Adapter: the ledger in one process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use futures_util::future::BoxFuture;

use crate::adapters::dynamodb::item::{ItemKey, bucket_of, epoch_ms, epoch_s, retry_after_from};
use crate::domain::ledger::*;

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
    records: BTreeMap<RecordKey, DeviceRecord>,
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
    use std::time::{Duration, UNIX_EPOCH};

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
        assert_eq!(bucket_of(at(299)), bucket_of(at(0)));
        assert_eq!(bucket_of(at(300)), bucket_of(at(0)) + 1);
    }
}
