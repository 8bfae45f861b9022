//! Time budgets: the Lambda deadline, retry backoff and the client-side rate
//! limiter. All on tokio's clock, so tests run them on a paused clock.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::support::time::unix_millis;

/// Time kept back before the Lambda deadline to write the answer: a wait or
/// a retry that would end inside it is not started.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(1500);
/// Used when the invocation carries no deadline (the local server).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(28);

/// Unix millis of 2001-09-09: any real deadline is later.
const NOT_A_WALL_CLOCK_MS: u64 = 1_000_000_000_000;
/// No single HTTP call may take longer than this, deadline permitting.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest wait an upstream number may ask for (`Retry-After`, a
/// token's `expires_in`): whatever it says, nothing waits or caches longer.
pub const MAX_UPSTREAM_WAIT: Duration = Duration::from_secs(3600);

/// `now + d` without the panic `Instant + Duration` has on overflow: a
/// point too far to represent is as good as a day away for every caller.
pub fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400))
}

/// A value kept until a point on tokio's clock, for the secret and the
/// tokens. One fetch at a time: concurrent callers wait for it instead of
/// each fetching.
pub struct Expiring<T>(Mutex<Option<(Instant, T)>>);

impl<T> Default for Expiring<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: Clone> Expiring<T> {
    /// The value kept, while it has not expired and is `usable`; else the
    /// one `fetch` makes, kept for as long as `fetch` says (an error is
    /// not kept).
    pub async fn get<E>(
        &self,
        usable: impl FnOnce(&T) -> bool,
        fetch: impl Future<Output = Result<(T, Duration), E>>,
    ) -> Result<T, E> {
        let mut slot = self.0.lock().await;
        if let Some((until, value)) = slot.as_ref()
            && Instant::now() < *until
            && usable(value)
        {
            return Ok(value.clone());
        }
        let (value, keep) = fetch.await?;
        *slot = Some((later(keep), value.clone()));
        Ok(value)
    }

    /// Drops the value kept if it is `stale`; one that another caller has
    /// fetched since is kept.
    pub async fn invalidate(&self, stale: impl FnOnce(&T) -> bool) {
        let mut slot = self.0.lock().await;
        if slot.as_ref().is_some_and(|(_, value)| stale(value)) {
            *slot = None;
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Self { at: later(budget) }
    }

    /// The wall-clock time of the deadline itself: when the invocation has
    /// certainly ended (Lambda stops it there).
    pub fn wall_clock(&self) -> SystemTime {
        SystemTime::now() + self.at.saturating_duration_since(Instant::now())
    }

    /// From the Runtime API's `Lambda-Runtime-Deadline-Ms` (unix millis).
    /// A value before 2001 cannot be a deadline: cargo-lambda's emulator
    /// (`cargo lambda watch`, 1.9) sends the timeout itself there
    /// (`600000`), which read as a time would leave no time for any call.
    /// Such a value counts as no deadline given: `DEFAULT_BUDGET`.
    pub fn from_epoch_millis(ms: u64) -> Self {
        if ms < NOT_A_WALL_CLOCK_MS {
            return Self::after(DEFAULT_BUDGET);
        }
        let now_ms = unix_millis(SystemTime::now()) as u64;
        Self::after(Duration::from_millis(ms.saturating_sub(now_ms)))
    }

    /// Time left for work, the margin already taken off.
    pub fn usable(&self) -> Duration {
        self.at
            .saturating_duration_since(Instant::now())
            .saturating_sub(DEADLINE_MARGIN)
    }

    /// Whether waiting `d` still leaves the margin before the deadline.
    pub fn fits(&self, d: Duration) -> bool {
        d <= self.usable()
    }

    /// The timeout for the next HTTP call, or `None` when no time is left.
    pub fn call_timeout(&self) -> Option<Duration> {
        let left = self.usable();
        (left >= Duration::from_millis(50)).then(|| left.min(MAX_CALL_TIMEOUT))
    }
}

/// Jittered exponential backoff for 5xx and network errors.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_retries: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(4),
            max_retries: 3,
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0-based), or `None` when the
    /// retries are spent. "Equal jitter": half fixed, half random, so
    /// parallel instances spread out but never retry at once.
    pub fn delay(&self, retry: u32, random: f64) -> Option<Duration> {
        if retry >= self.max_retries {
            return None;
        }
        let exp = self
            .base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.cap);
        let half = exp / 2;
        Some(half + half.mul_f64(random.clamp(0.0, 1.0)))
    }
}

/// A sliding-window limiter that keeps this instance under Defender's limits,
/// and holds every caller back after a 429 until its Retry-After has passed.
#[derive(Debug)]
pub struct RateLimiter {
    windows: Vec<(usize, Duration)>,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    grants: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

/// The limiter cannot grant a call before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

impl RateLimiter {
    pub fn new(windows: &[(usize, Duration)]) -> Self {
        Self {
            windows: windows.to_vec(),
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// Waits for a slot if one frees before the deadline; otherwise says how
    /// long the caller should come back after.
    pub async fn acquire(&self, deadline: &Deadline) -> Result<(), Throttled> {
        loop {
            let wait = {
                let mut st = self.state.lock().await;
                let now = Instant::now();
                let longest = self.windows.iter().map(|w| w.1).max().unwrap_or_default();
                let expired = st
                    .grants
                    .partition_point(|t| now.duration_since(*t) >= longest);
                st.grants.drain(..expired);
                let mut wait = st
                    .blocked_until
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or_default();
                for &(limit, window) in &self.windows {
                    // Grants are in time order, so the ones still in this
                    // window are a suffix: found by bisection, not a scan of
                    // the hour's grants on every call.
                    let first = st
                        .grants
                        .partition_point(|t| now.duration_since(*t) >= window);
                    if st.grants.len() - first >= limit {
                        // The slot frees when the oldest call that still
                        // counts against the limit leaves the window.
                        let oldest = st.grants[st.grants.len() - limit];
                        wait = wait.max((oldest + window).saturating_duration_since(now));
                    }
                }
                if wait.is_zero() {
                    st.grants.push_back(now);
                    return Ok(());
                }
                wait
            };
            if !deadline.fits(wait) {
                return Err(Throttled { retry_after: wait });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits out a 429's hold (`block_for`) only, taking no grant: where
    /// the limits are counted elsewhere (the ledger's table), this
    /// instance's windows would only hold grants the table then refuses.
    pub async fn hold(&self, deadline: &Deadline) -> Result<(), Throttled> {
        let wait = {
            let st = self.state.lock().await;
            st.blocked_until
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or_default()
        };
        if wait.is_zero() {
            return Ok(());
        }
        if !deadline.fits(wait) {
            return Err(Throttled { retry_after: wait });
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// After a 429: nobody calls again before `retry_after` has passed.
    pub async fn block_for(&self, retry_after: Duration) {
        let until = later(retry_after);
        let mut st = self.state.lock().await;
        st.blocked_until = Some(st.blocked_until.map_or(until, |t| t.max(until)));
    }
}

/// Defender's APIs this function calls; each has its own published limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    ListMachines,
    GetMachine,
    Offboard,
    GetAction,
    CancelAction,
}

/// One limiter per API, as Defender counts them: a field per kind, read by
/// a `match`, so a new kind does not compile until it has its limiter.
#[derive(Debug)]
pub struct Limiters {
    list_machines: RateLimiter,
    get_machine: RateLimiter,
    offboard: RateLimiter,
    get_action: RateLimiter,
    cancel_action: RateLimiter,
    /// What stands for a minute (simulations scale it).
    minute: Duration,
    per_minute: usize,
}

impl Limiters {
    /// `per_minute` calls a minute to each API (and Defender's 1,500 an
    /// hour scaled alike): 100 for one instance, less where several
    /// instances share the tenant's budget (the queue worker).
    pub fn new(per_minute: usize) -> Self {
        Self::scaled(per_minute, Duration::from_secs(60))
    }

    /// The same limits with `minute` standing for a minute (and 60 of them
    /// for an hour): simulations run hours of traffic in seconds.
    pub fn scaled(per_minute: usize, minute: Duration) -> Self {
        let per_hour = per_minute * 15;
        let w = [(per_minute, minute), (per_hour, minute * 60)];
        Self {
            list_machines: RateLimiter::new(&w),
            get_machine: RateLimiter::new(&w),
            offboard: RateLimiter::new(&w),
            get_action: RateLimiter::new(&w),
            cancel_action: RateLimiter::new(&w),
            minute,
            per_minute,
        }
    }

    /// The same limits counted across instances (with the ledger): the
    /// pace every instance together keeps to each API of a tenant.
    pub fn shared_pace(&self) -> Pace {
        let per_minute = u32::try_from(self.per_minute).unwrap_or(u32::MAX);
        Pace::for_limits(per_minute, per_minute.saturating_mul(15), self.minute)
    }

    pub fn for_api(&self, kind: ApiKind) -> &RateLimiter {
        match kind {
            ApiKind::ListMachines => &self.list_machines,
            ApiKind::GetMachine => &self.get_machine,
            ApiKind::Offboard => &self.offboard,
            ApiKind::GetAction => &self.get_action,
            ApiKind::CancelAction => &self.cancel_action,
        }
    }
}

/// Defender's published limits for each API: 100 calls a minute (and
/// 1,500 an hour).
impl Default for Limiters {
    fn default() -> Self {
        Self::new(100)
    }
}

/// The tenant label of the shared limits where a deployment has no
/// `tenants`.
pub const DEFAULT_TENANT: &str = "default";

impl ApiKind {
    /// How the shared limits' items name the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::ListMachines => "list_machines",
            ApiKind::GetMachine => "get_machine",
            ApiKind::Offboard => "offboard",
            ApiKind::GetAction => "get_action",
            ApiKind::CancelAction => "cancel_action",
        }
    }
}

/// How late a call may go out after its slot and still count as on time
/// (a slot missed by more is let go): the pace keeps that many calls back.
pub const LATENESS: Duration = Duration::from_millis(250);

/// The pace every instance together keeps to one API of one tenant, when
/// the limits are counted in the ledger: a generic cell rate algorithm
/// (GCRA, a token bucket kept as one number). The shared state is the
/// "theoretical arrival time" `tat`; a call is given the slot
/// `max(now, tat - tolerance)` and moves `tat` to `max(tat, now) +
/// interval`. Slots given this way are never closer than `interval`
/// apart beyond a burst of `tolerance / interval + 1`, so any window `w`
/// holds fewer than `(w + tolerance) / interval + 1` of them. With
/// Defender's 100 a minute and 1,500 an hour: a burst of 50, then one
/// call every 3600/1448 s (1,448 an hour, 96.5% of the hourly limit at a
/// steady pace); any hour holds at most 1,497 slots and any minute 74.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub interval: Duration,
    pub tolerance: Duration,
}

/// What [`Pace::decide`] says of a call arriving now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceStep {
    /// No call is scheduled ahead (`tat <= now`): the slot is now and `tat`
    /// becomes `now + interval`.
    Idle,
    /// Calls are scheduled ahead: the slot is `wait` from now and `tat`
    /// grows by `interval`.
    Behind { wait: Duration },
    /// The slot would be further away than the caller can wait.
    Full { retry_after: Duration },
}

impl Pace {
    /// The pace that keeps `per_minute` and `per_hour` in any window, with
    /// `minute` standing for a minute (simulations scale it).
    pub fn for_limits(per_minute: u32, per_hour: u32, minute: Duration) -> Self {
        // A thirtieth of the hour as a burst (50 of Defender's 1,500), at
        // most half the minute's limit. Any window `w` then holds fewer
        // than `w / interval + burst` slots: under each limit by one, and
        // by as many more calls as fit in `LATENESS`, kept for calls that
        // go out late (the table's round trip, the scheduler) and bunch
        // with the next: one with Defender's limits.
        let (per_minute, per_hour) = (per_minute.max(4), per_hour.max(4));
        let burst = (per_hour / 30).min(per_minute / 2).max(1);
        let pace = |kept: u32| {
            (minute * 60 / per_hour.saturating_sub(burst + kept).max(1))
                .max(minute / per_minute.saturating_sub(burst + kept).max(1))
        };
        let late = (LATENESS.as_secs_f64() / pace(1).as_secs_f64()).ceil() as u32;
        let kept = (1 + late).min(per_minute / 4);
        let interval = pace(kept);
        Self {
            interval,
            tolerance: interval * (burst - 1),
        }
    }

    /// The step for a call at `now_ms` (unix ms) given the stored `tat_ms`,
    /// when the caller can wait at most `max_wait`.
    pub fn decide(&self, tat_ms: Option<i64>, now_ms: i64, max_wait: Duration) -> PaceStep {
        let Some(tat) = tat_ms.filter(|t| *t > now_ms) else {
            return PaceStep::Idle;
        };
        let slot = tat - self.tolerance.as_millis() as i64;
        let wait = Duration::from_millis(slot.saturating_sub(now_ms).max(0) as u64);
        if wait <= max_wait {
            PaceStep::Behind { wait }
        } else {
            PaceStep::Full { retry_after: wait }
        }
    }

    /// The most `tat` may be for a call at `now_ms` to wait at most
    /// `max_wait` (the condition of a `Behind` step).
    pub fn latest_tat(&self, now_ms: i64, max_wait: Duration) -> i64 {
        now_ms + (self.tolerance + max_wait).as_millis() as i64
    }

    /// The wait for the slot of a call at `now_ms` that moved `tat` to
    /// `new_tat_ms` (a `Behind` step's outcome).
    pub fn wait_after(&self, new_tat_ms: i64, now_ms: i64) -> Duration {
        let slot = new_tat_ms - (self.interval + self.tolerance).as_millis() as i64;
        Duration::from_millis(slot.saturating_sub(now_ms).max(0) as u64)
    }
}

/// A slot from the shared limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The call may go `0` from now (wait that long first).
    In(Duration),
    /// No slot within the wait the caller could afford.
    Full { retry_after: Duration },
}

/// Port: Defender's limits counted across every instance (the ledger's
/// table), per tenant and per API, at the [`Pace`] given.
pub trait SharedLimits: Send + Sync {
    /// Reserves the next slot for one call to `api` in `tenant`'s Defender
    /// at `now`, at most `max_wait` ahead; a slot not given takes nothing.
    fn reserve<'a>(
        &'a self,
        tenant: &'a str,
        api: ApiKind,
        pace: Pace,
        max_wait: Duration,
        now: SystemTime,
    ) -> crate::domain::ledger::LedgerFuture<'a, Slot>;
}

/// Reads `Retry-After` as seconds or an HTTP date; Defender sends seconds.
/// Whatever the header holds (`1e20`, `18446744073709551615`, `-1`, `NaN`,
/// a date in 9999, garbage) the answer is `None` or at most one hour:
/// `Duration::from_secs_f64` panics on huge values, and an `Instant` plus a
/// huge duration overflows.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Some(d) = v.parse::<f64>().ok().and_then(seconds_f64) {
        return Some(d);
    }
    httpdate::parse_http_date(v).ok().map(|t| {
        t.duration_since(now)
            .unwrap_or_default()
            .min(MAX_UPSTREAM_WAIT)
    })
}

/// `secs` as a duration capped at `MAX_UPSTREAM_WAIT`, clamped before the
/// conversion so it cannot panic.
pub fn seconds_f64(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(MAX_UPSTREAM_WAIT.as_secs_f64())))
}

/// Whole seconds for a `Retry-After` header, never 0.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.as_secs() == 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// Defender's published limits for each API: 100 calls a minute and
    /// 1,500 an hour.
    const DEFENDER_WINDOWS: [(usize, Duration); 2] = [
        (100, Duration::from_secs(60)),
        (1500, Duration::from_secs(3600)),
    ];

    fn defender() -> RateLimiter {
        RateLimiter::new(&DEFENDER_WINDOWS)
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_stops() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Some(Duration::from_millis(100)));
        assert_eq!(b.delay(0, 1.0), Some(Duration::from_millis(200)));
        assert_eq!(b.delay(1, 0.0), Some(Duration::from_millis(200)));
        assert_eq!(b.delay(2, 1.0), Some(Duration::from_millis(800)));
        assert_eq!(b.delay(3, 0.5), None);
        let capped = Backoff {
            max_retries: 30,
            ..b
        };
        assert_eq!(capped.delay(20, 1.0), Some(Duration::from_secs(4)));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 0.5 ", now),
            Some(Duration::from_millis(500))
        );
        let later = now + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later), now).unwrap();
        assert!(
            d <= Duration::from_secs(120) && d >= Duration::from_secs(118),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2500)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn retry_after_never_panics_and_waits_at_most_an_hour() {
        let now = SystemTime::now();
        let hour = Some(MAX_UPSTREAM_WAIT);
        for (v, want) in [
            ("1e20", hour),
            ("1E308", hour),
            ("18446744073709551615", hour),
            ("18446744073709551616", hour),
            ("99999999999999999999999999999", hour),
            ("3600", hour),
            ("3601", hour),
            ("3599.5", Some(Duration::from_millis(3_599_500))),
            ("0", Some(Duration::ZERO)),
            ("-0", Some(Duration::ZERO)),
            ("1.5", Some(Duration::from_millis(1500))),
            ("+2", Some(Duration::from_secs(2))),
            ("-1", None),
            ("-1e20", None),
            ("-0.5", None),
            ("NaN", None),
            ("nan", None),
            ("inf", None),
            ("-inf", None),
            ("infinity", None),
            ("", None),
            ("   ", None),
            ("5s", None),
            ("0x10", None),
            ("\u{0}", None),
            ("Sun, 06 Nov 1994 08:49:37", None),
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(Duration::ZERO)),
            ("Fri, 31 Dec 9999 23:59:59 GMT", hour),
        ] {
            assert_eq!(parse_retry_after(v, now), want, "Retry-After: {v:?}");
        }
        assert_eq!(seconds_f64(f64::MAX), hour);
        assert_eq!(seconds_f64(f64::MIN_POSITIVE), Some(Duration::ZERO));
        assert_eq!(seconds_f64(f64::NAN), None);
    }

    #[tokio::test(start_paused = true)]
    async fn huge_budgets_and_blocks_do_not_overflow_the_clock() {
        let d = Deadline::after(Duration::MAX);
        assert!(d.usable() > Duration::from_secs(3600));
        let d = Deadline::from_epoch_millis(u64::MAX);
        assert!(d.usable() > Duration::ZERO);
        // cargo-lambda's emulator sends its 10-minute timeout as the
        // "deadline"; a deadline that passed a moment ago still has none.
        let emulator = Deadline::from_epoch_millis(600_000).usable();
        assert!(emulator > Duration::from_secs(20) && emulator <= DEFAULT_BUDGET);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert_eq!(
            Deadline::from_epoch_millis(now_ms - 1_000).usable(),
            Duration::ZERO
        );
        let d = Deadline::from_epoch_millis(u64::MAX);
        assert!(d.fits(Duration::from_secs(3600)));
        let l = defender();
        l.block_for(Duration::MAX).await;
        let short = Deadline::after(Duration::from_secs(10));
        assert!(l.acquire(&short).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_keeps_its_margin() {
        let d = Deadline::after(Duration::from_secs(10));
        assert_eq!(d.usable(), Duration::from_millis(8500));
        assert!(d.fits(Duration::from_millis(8500)));
        assert!(!d.fits(Duration::from_millis(8501)));
        assert_eq!(d.call_timeout(), Some(Duration::from_millis(8500)));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(d.call_timeout(), None);
        assert_eq!(
            Deadline::after(Duration::from_secs(60)).call_timeout(),
            Some(MAX_CALL_TIMEOUT)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_allows_the_limit_then_waits_for_the_window() {
        let l = RateLimiter::new(&[(3, Duration::from_secs(60))]);
        let long = Deadline::after(Duration::from_secs(600));
        let start = Instant::now();
        for _ in 0..3 {
            l.acquire(&long).await.unwrap();
        }
        assert_eq!(Instant::now(), start, "the first three need no wait");
        l.acquire(&long).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_refuses_a_wait_past_the_deadline() {
        let l = RateLimiter::new(&[(1, Duration::from_secs(60))]);
        let short = Deadline::after(Duration::from_secs(20));
        l.acquire(&short).await.unwrap();
        let err = l.acquire(&short).await.unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_keeps_100_a_minute_over_many_calls() {
        let l = defender();
        let long = Deadline::after(Duration::from_secs(100_000));
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..350 {
            l.acquire(&long).await.unwrap();
            times.push(Instant::now() - start);
        }
        for (i, t) in times.iter().enumerate() {
            let in_minute = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(60))
                .count();
            assert!(
                in_minute <= 100,
                "{in_minute} calls in the minute from {t:?}"
            );
        }
        assert_eq!(times[349], Duration::from_secs(180));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_keeps_1500_an_hour_across_both_windows() {
        let l = defender();
        let long = Deadline::after(Duration::from_secs(100_000));
        let start = Instant::now();
        for _ in 0..1500 {
            l.acquire(&long).await.unwrap();
        }
        // 100 a minute: the 1,500th went out in the fifteenth minute.
        assert_eq!(Instant::now() - start, Duration::from_secs(14 * 60));
        // The next waits for the hour's first calls to leave its window,
        // though the minute's window has room long before.
        l.acquire(&long).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn hold_waits_for_a_429_only() {
        let l = RateLimiter::new(&[(1, Duration::from_secs(60))]);
        let long = Deadline::after(Duration::from_secs(600));
        let start = Instant::now();
        for _ in 0..3 {
            l.hold(&long).await.unwrap();
        }
        assert_eq!(Instant::now(), start, "no window counted");
        l.block_for(Duration::from_secs(5)).await;
        l.hold(&long).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        l.block_for(Duration::from_secs(30)).await;
        let short = Deadline::after(Duration::from_secs(10));
        assert!(l.hold(&short).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn block_for_holds_every_caller_back() {
        let l = defender();
        let long = Deadline::after(Duration::from_secs(600));
        l.block_for(Duration::from_secs(5)).await;
        let start = Instant::now();
        l.acquire(&long).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        l.block_for(Duration::from_secs(30)).await;
        let short = Deadline::after(Duration::from_secs(10));
        assert_eq!(
            l.acquire(&short).await,
            Err(Throttled {
                retry_after: Duration::from_secs(30)
            })
        );
    }
}
