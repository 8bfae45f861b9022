//! Adapter: Defender's shared limits in one process, the same rules as the
//! table's (`adapters::dynamodb::limits`), for tests and the local run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::domain::ledger::LedgerFuture;
use crate::domain::limits::{ApiKind, Pace, PaceStep, SharedLimits, Slot};
use crate::support::time::unix_millis;

/// Each tenant's and API's theoretical arrival time (unix ms).
#[derive(Default)]
pub struct InMemoryLimits {
    tat: Mutex<HashMap<(String, &'static str), i64>>,
}

impl InMemoryLimits {
    pub fn new() -> Self {
        Self::default()
    }
}

impl SharedLimits for InMemoryLimits {
    fn reserve<'a>(
        &'a self,
        tenant: &'a str,
        api: ApiKind,
        pace: Pace,
        max_wait: Duration,
        now: SystemTime,
    ) -> LedgerFuture<'a, Slot> {
        let now_ms = unix_millis(now);
        let interval = pace.interval.as_millis() as i64;
        let mut all = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let tat = all.entry((tenant.to_string(), api.as_str())).or_insert(0);
        let slot = match pace.decide(Some(*tat), now_ms, max_wait) {
            PaceStep::Idle => {
                *tat = now_ms + interval;
                Slot::In(Duration::ZERO)
            }
            PaceStep::Behind { wait } => {
                *tat += interval;
                Slot::In(wait)
            }
            PaceStep::Full { retry_after } => Slot::Full { retry_after },
        };
        Box::pin(async move { Ok(slot) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// Callers arriving faster than the limits, from many "instances"
    /// sharing one count: the slots given keep 100 in any minute and
    /// 1,500 in any hour, and keep the steady pace near the hour's limit.
    #[tokio::test]
    async fn slots_hold_both_windows_at_a_steady_pace() {
        let limits = InMemoryLimits::new();
        let pace = Pace::for_limits(100, 1500, MINUTE);
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut slots = Vec::new();
        let mut now = start;
        // Three hours of callers, one every 0.5 s, each willing to wait 20 s.
        while now < start + Duration::from_secs(3 * 3600) {
            match limits
                .reserve(
                    "default",
                    ApiKind::Offboard,
                    pace,
                    Duration::from_secs(20),
                    now,
                )
                .await
                .unwrap()
            {
                Slot::In(wait) => {
                    assert!(wait <= Duration::from_secs(20));
                    slots.push(now + wait);
                }
                Slot::Full { retry_after } => assert!(retry_after > Duration::from_secs(20)),
            }
            now += Duration::from_millis(500);
        }
        slots.sort();
        let most_in = |w: Duration| {
            (0..slots.len())
                .map(|i| slots[i..].iter().take_while(|t| **t < slots[i] + w).count())
                .max()
                .unwrap()
        };
        assert!(most_in(MINUTE) <= 100, "{} in a minute", most_in(MINUTE));
        assert!(
            most_in(MINUTE * 60) <= 1500,
            "{} in an hour",
            most_in(MINUTE * 60)
        );
        // Three hours at the pace: the burst, 1,448 an hour, and the slots
        // the last callers took up to 20 s ahead.
        assert!(
            slots.len() >= 3 * 1448 && slots.len() <= 3 * 1448 + 50 + 9,
            "{} slots in three hours",
            slots.len()
        );
        // Another tenant, and another API, have their own.
        assert_eq!(
            limits
                .reserve("other", ApiKind::Offboard, pace, Duration::ZERO, now)
                .await
                .unwrap(),
            Slot::In(Duration::ZERO)
        );
        assert_eq!(
            limits
                .reserve("default", ApiKind::GetMachine, pace, Duration::ZERO, now)
                .await
                .unwrap(),
            Slot::In(Duration::ZERO)
        );
    }

    #[test]
    fn the_pace_of_defenders_limits() {
        let p = Pace::for_limits(100, 1500, MINUTE);
        assert_eq!(p.interval, Duration::from_secs(3600) / 1448);
        assert_eq!(p.tolerance, p.interval * 49);
        // Scaled, the same shape.
        let s = Pace::for_limits(100, 1500, Duration::from_millis(600));
        assert!(s.interval > Duration::from_millis(36_000) / 1449, "{s:?}");
        // Where the minute's limit is the tighter, the burst shrinks.
        let tight = Pace::for_limits(10, 1500, MINUTE);
        let burst = tight.tolerance.as_secs_f64() / tight.interval.as_secs_f64() + 1.0;
        assert!(
            60.0 / tight.interval.as_secs_f64() + burst <= 10.0,
            "{tight:?}"
        );
    }
}
