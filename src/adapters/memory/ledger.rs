//! Adapter: the ledger in one process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use crate::domain::ledger::*;
use crate::support::time::{unix_millis, unix_secs};

#[derive(Debug, Clone)]
enum Delivery {
    /// Let go of (`abandon`) when `until_ms` is 0.
    InProgress {
        until_ms: i64,
    },
    Completed(StoredAnswer),
}

#[derive(Default)]
struct Memory {
    /// Each with the request's fingerprint and its expiry, unix seconds.
    deliveries: HashMap<IdempotencyKey, (Delivery, Fingerprint, i64)>,
    records: BTreeMap<RecordKey, DeviceRecord>,
    /// Records whose outcome tracking has reported.
    reported: HashSet<RecordKey>,
    buckets: HashMap<(String, i64), u32>,
    unavailable: bool,
}

/// Adapter: the same rules as [`DynamoLedger`] in one process, for domain
/// tests and the local run. Expired items stay until overwritten, as they
/// do in DynamoDB before TTL gets to them.
///
/// [`DynamoLedger`]: crate::adapters::dynamodb::DynamoLedger
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

    fn lock(&self) -> MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` over the memory, as a ledger call's answer.
    fn with<'a, T: Send + 'a>(
        &self,
        f: impl FnOnce(&mut Memory) -> Result<T, LedgerError>,
    ) -> LedgerFuture<'a, T> {
        let mut m = self.lock();
        let answer = if m.unavailable {
            Err(LedgerError::Unavailable(
                "the in-memory ledger is set down".into(),
            ))
        } else {
            f(&mut m)
        };
        Box::pin(std::future::ready(answer))
    }
}

impl DeliveryClaims for InMemoryLedger {
    fn begin<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        request: &'a Fingerprint,
        now: SystemTime,
        in_progress_until: SystemTime,
    ) -> LedgerFuture<'a, Begin> {
        self.with(|m| {
            match m.deliveries.get(key) {
                Some((_, _, expires_s)) if *expires_s < unix_secs(now) => {}
                Some((_, held, _)) if held != request => return Ok(Begin::Reused),
                Some((Delivery::Completed(answer), _, _)) => {
                    return Ok(Begin::Done(answer.clone()));
                }
                Some((Delivery::InProgress { until_ms }, _, _))
                    if *until_ms >= unix_millis(now) =>
                {
                    return Ok(Begin::InProgress {
                        retry_after: retry_after_from(*until_ms, now),
                    });
                }
                _ => {}
            }
            let until_ms = unix_millis(in_progress_until);
            let claim = Delivery::InProgress { until_ms };
            m.deliveries
                .insert(*key, (claim, *request, until_ms / 1000 + 3600));
            Ok(Begin::Started)
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        request: &'a Fingerprint,
        answer: &'a StoredAnswer,
        expires_at: SystemTime,
    ) -> LedgerFuture<'a, ()> {
        self.with(|m| {
            let done = Delivery::Completed(answer.clone());
            m.deliveries
                .insert(*key, (done, *request, unix_secs(expires_at)));
            Ok(())
        })
    }

    fn abandon<'a>(&'a self, key: &'a IdempotencyKey) -> LedgerFuture<'a, ()> {
        self.with(|m| {
            if let Some((Delivery::InProgress { until_ms }, _, _)) = m.deliveries.get_mut(key) {
                *until_ms = 0;
            }
            Ok(())
        })
    }
}

impl DeviceRecords for InMemoryLedger {
    fn record_device<'a>(&'a self, record: &'a DeviceRecord) -> LedgerFuture<'a, ()> {
        self.with(|m| {
            let mut new = record.clone();
            if let Some(old) = m.records.get(&record.key()) {
                new.requested_at = old.requested_at;
                new.action_status = old.action_status;
            }
            m.records.insert(record.key(), new);
            Ok(())
        })
    }

    fn ticket_records<'a>(&'a self, ticket: &'a str) -> LedgerFuture<'a, Vec<DeviceRecord>> {
        // DynamoDB's order: by sort key, which is machine then action, as
        // the map's.
        let of_ticket = |r: &&DeviceRecord| r.ticket == ticket;
        self.with(|m| Ok(m.records.values().filter(of_ticket).cloned().collect()))
    }

    fn machine_records<'a>(&'a self, machine_id: &'a str) -> LedgerFuture<'a, Vec<DeviceRecord>> {
        self.with(|m| {
            let of_machine = m.records.values().filter(|r| r.machine_id == machine_id);
            let mut out: Vec<DeviceRecord> = of_machine.cloned().collect();
            out.sort_by_key(|r| (format_time(r.requested_at), r.ticket.clone()));
            Ok(out)
        })
    }

    fn update_action_status<'a>(
        &'a self,
        key: &'a RecordKey,
        status: ActionStatus,
        updated_at: SystemTime,
    ) -> LedgerFuture<'a, StatusUpdate> {
        self.with(|m| {
            let Some(r) = m.records.get_mut(key) else {
                return Ok(StatusUpdate::NotFound);
            };
            if r.action_status.is_final() {
                return Ok(StatusUpdate::AlreadyFinal(r.action_status));
            }
            r.action_status = status;
            r.updated_at = updated_at;
            Ok(StatusUpdate::Updated)
        })
    }

    fn report_outcome<'a>(
        &'a self,
        key: &'a RecordKey,
        status: ActionStatus,
        at: SystemTime,
    ) -> LedgerFuture<'a, Report> {
        self.with(|m| {
            let Some(r) = m.records.get_mut(key) else {
                return Ok(Report::NotFound);
            };
            if m.reported.contains(key) {
                return Ok(Report::Already);
            }
            if !r.action_status.is_final() {
                r.action_status = status;
                r.updated_at = at;
            }
            let reported = r.action_status;
            m.reported.insert(key.clone());
            Ok(Report::First(reported))
        })
    }
}

impl OffboardBudget for InMemoryLedger {
    fn take_budget<'a>(
        &'a self,
        scope: &'a str,
        wanted: u32,
        limit: u32,
        now: SystemTime,
    ) -> LedgerFuture<'a, u32> {
        self.with(|m| {
            let current = bucket_of(now);
            m.buckets
                .retain(|(_, b), _| *b >= current - BUDGET_BUCKETS_BEFORE);
            let used: u64 = m
                .buckets
                .iter()
                .filter(|((s, _), _)| s == scope)
                .map(|(_, c)| u64::from(*c))
                .sum();
            let granted = u64::from(wanted).min(u64::from(limit).saturating_sub(used)) as u32;
            if granted > 0 {
                *m.buckets.entry((scope.to_string(), current)).or_default() += granted;
            }
            Ok(granted)
        })
    }

    fn give_back_budget<'a>(
        &'a self,
        scope: &'a str,
        places: u32,
        taken_at: SystemTime,
    ) -> LedgerFuture<'a, ()> {
        self.with(|m| {
            if let Some(c) = m.buckets.get_mut(&(scope.to_string(), bucket_of(taken_at))) {
                *c = c.saturating_sub(places);
            }
            Ok(())
        })
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

    const FP: Fingerprint = Fingerprint([7; 32]);
    const OTHER: Fingerprint = Fingerprint([8; 32]);

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
            tenant: None,
        }
    }

    #[tokio::test]
    async fn a_delivery_is_started_once_then_in_progress_then_replayed() {
        let l = InMemoryLedger::new();
        assert_eq!(
            l.begin(&key(1), &FP, at(0), at(30)).await,
            Ok(Begin::Started)
        );
        assert_eq!(
            l.begin(&key(1), &FP, at(10), at(40)).await,
            Ok(Begin::InProgress {
                retry_after: Duration::from_secs(20)
            })
        );
        l.complete(&key(1), &FP, &answer(), at(10) + ANSWER_KEPT_FOR)
            .await
            .unwrap();
        assert_eq!(
            l.begin(&key(1), &FP, at(20), at(50)).await,
            Ok(Begin::Done(answer()))
        );
        assert_eq!(
            l.begin(&key(2), &FP, at(20), at(50)).await,
            Ok(Begin::Started)
        );
    }

    #[tokio::test]
    async fn a_dead_holder_is_taken_over_after_its_deadline_only() {
        let l = InMemoryLedger::new();
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
    async fn an_expired_answer_is_not_replayed_though_it_is_still_stored() {
        let l = InMemoryLedger::new();
        l.begin(&key(1), &FP, at(0), at(30)).await.unwrap();
        l.complete(&key(1), &FP, &answer(), at(100)).await.unwrap();
        assert_eq!(
            l.begin(&key(1), &FP, at(100), at(130)).await,
            Ok(Begin::Done(answer()))
        );
        assert_eq!(
            l.begin(&key(1), &FP, at(101), at(131)).await,
            Ok(Begin::Started)
        );
    }

    #[tokio::test]
    async fn abandon_frees_a_claim_but_keeps_an_answer() {
        let l = InMemoryLedger::new();
        l.begin(&key(1), &FP, at(0), at(30)).await.unwrap();
        l.abandon(&key(1)).await.unwrap();
        assert_eq!(
            l.begin(&key(1), &FP, at(1), at(31)).await,
            Ok(Begin::Started)
        );
        l.complete(&key(1), &FP, &answer(), at(1000)).await.unwrap();
        l.abandon(&key(1)).await.unwrap();
        assert_eq!(
            l.begin(&key(1), &FP, at(2), at(32)).await,
            Ok(Begin::Done(answer()))
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        assert_eq!(
            retry_after_from(unix_millis(at(0)) + 1, at(0)),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_after_from(unix_millis(at(0)) + 1001, at(0)),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_after_from(unix_millis(at(0)) - 5000, at(0)),
            Duration::from_secs(1)
        );
    }

    #[tokio::test]
    async fn an_answer_of_any_size_is_kept_whole() {
        let l = InMemoryLedger::new();
        let big = StoredAnswer {
            status: 202,
            body: "x".repeat(MAX_STORED_BODY * 2 + 1),
        };
        l.begin(&key(1), &FP, at(0), at(30)).await.unwrap();
        l.complete(&key(1), &FP, &big, at(100)).await.unwrap();
        assert_eq!(
            l.begin(&key(1), &FP, at(1), at(31)).await,
            Ok(Begin::Done(big))
        );
    }

    #[tokio::test]
    async fn a_key_used_for_another_request_is_reused_whatever_its_state() {
        let l = InMemoryLedger::new();
        // Running, let go of, or answered: never the other request's.
        l.begin(&key(1), &FP, at(0), at(30)).await.unwrap();
        assert_eq!(
            l.begin(&key(1), &OTHER, at(1), at(31)).await,
            Ok(Begin::Reused)
        );
        l.abandon(&key(1)).await.unwrap();
        assert_eq!(
            l.begin(&key(1), &OTHER, at(2), at(32)).await,
            Ok(Begin::Reused)
        );
        assert_eq!(
            l.begin(&key(1), &FP, at(3), at(33)).await,
            Ok(Begin::Started)
        );
        l.complete(&key(1), &FP, &answer(), at(1000)).await.unwrap();
        assert_eq!(
            l.begin(&key(1), &OTHER, at(4), at(34)).await,
            Ok(Begin::Reused)
        );
        // A dead holder is taken over only by its own request.
        l.begin(&key(2), &FP, at(0), at(30)).await.unwrap();
        assert_eq!(
            l.begin(&key(2), &OTHER, at(31), at(61)).await,
            Ok(Begin::Reused)
        );
        // Once expired, the key is free.
        assert_eq!(
            l.begin(&key(1), &OTHER, at(1001), at(1031)).await,
            Ok(Begin::Started)
        );
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
        // Written once: the same final status again is not written.
        assert_eq!(
            l.update_action_status(&k, ActionStatus::Cancelled, at(8))
                .await,
            Ok(StatusUpdate::AlreadyFinal(ActionStatus::Cancelled))
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
    async fn an_outcome_is_reported_once_and_a_final_status_held_is_the_outcome() {
        let l = InMemoryLedger::new();
        let r = record("INC-1", "m1", "a1", 5);
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
        // The cancel route wrote Cancelled first: that is what is reported.
        let c = record("INC-1", "m2", "a2", 5);
        l.record_device(&c).await.unwrap();
        l.update_action_status(&c.key(), ActionStatus::Cancelled, at(6))
            .await
            .unwrap();
        assert_eq!(
            l.report_outcome(&c.key(), ActionStatus::NotConfirmed, at(9))
                .await,
            Ok(Report::First(ActionStatus::Cancelled))
        );
        let got = l.ticket_records("INC-1").await.unwrap();
        assert_eq!(got[1].updated_at, at(6), "the cancel's time stays");
        let mut missing = r.key();
        missing.action_id = "nope".into();
        assert_eq!(
            l.report_outcome(&missing, ActionStatus::Failed, at(9))
                .await,
            Ok(Report::NotFound)
        );
    }

    #[tokio::test]
    async fn the_budget_holds_over_any_rolling_hour() {
        let l = InMemoryLedger::new();
        let start = at(0);
        assert_eq!(l.take_budget("", 7, 10, start).await, Ok(7));
        // Partly granted: three left.
        assert_eq!(
            l.take_budget("", 5, 10, start + Duration::from_secs(1800))
                .await,
            Ok(3)
        );
        // Within the hour: spent.
        assert_eq!(
            l.take_budget("", 1, 10, start + Duration::from_secs(3599))
                .await,
            Ok(0)
        );
        // 61 minutes on, but the first take's bucket is still one of the
        // thirteen: refused, at most five minutes early, never late.
        assert_eq!(
            l.take_budget("", 1, 10, start + Duration::from_secs(3660))
                .await,
            Ok(0)
        );
        // 65 minutes on, the first seven have left the window; the three
        // from minute 30 have not.
        assert_eq!(
            l.take_budget("", 10, 10, start + Duration::from_secs(3900))
                .await,
            Ok(7)
        );
        assert_eq!(l.take_budget("", 0, 10, start).await, Ok(0));
        assert_eq!(l.take_budget("", 3, 0, start).await, Ok(0));
    }

    #[tokio::test]
    async fn places_given_back_are_taken_again_and_the_count_never_goes_below_zero() {
        let l = InMemoryLedger::new();
        assert_eq!(l.take_budget("", 2, 2, at(0)).await, Ok(2));
        assert_eq!(l.take_budget("", 1, 2, at(10)).await, Ok(0));
        // Given back a bucket later: the place leaves the bucket it came from.
        l.give_back_budget("", 1, at(0)).await.unwrap();
        assert_eq!(l.take_budget("", 2, 2, at(400)).await, Ok(1));
        l.give_back_budget("", 5, at(0)).await.unwrap();
        l.give_back_budget("", 1, at(7200)).await.unwrap();
        assert_eq!(l.take_budget("", 3, 2, at(500)).await, Ok(1));
    }

    #[tokio::test]
    async fn a_ledger_set_down_is_unavailable_and_asks_for_a_retry() {
        let l = InMemoryLedger::new();
        l.set_unavailable(true);
        let e = l.begin(&key(1), &FP, at(0), at(30)).await.unwrap_err();
        assert!(matches!(e, LedgerError::Unavailable(_)));
        assert!(e.retry_after().is_some());
        assert!(LedgerError::Refused("x".into()).retry_after().is_none());
        l.set_unavailable(false);
        assert_eq!(
            l.begin(&key(1), &FP, at(0), at(30)).await,
            Ok(Begin::Started)
        );
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
    fn budget_buckets_are_five_minutes() {
        assert_eq!(bucket_of(at(299)), bucket_of(at(0)));
        assert_eq!(bucket_of(at(300)), bucket_of(at(0)) + 1);
    }
}
