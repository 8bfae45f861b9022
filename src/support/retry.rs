//! A bounded retry loop: a fixed list of waits, and each attempt and each
//! wait only while the time budget allows.

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

/// Runs `attempt` until it breaks, at most once more than there are
/// `waits`: attempt `n + 1` starts `waits[n - 1]` after attempt `n` ended.
/// `timeout` gives the next attempt's time limit, or `None` when no time is
/// left for one; `fits` says whether a wait still leaves time. The attempt
/// is given its number (from 1) and its time limit.
///
/// Answers what the attempt broke with, or `Err(attempts made)` when the
/// loop gave up: no time left, or the waits spent.
pub async fn bounded<T, Fut>(
    waits: &[Duration],
    timeout: impl Fn() -> Option<Duration>,
    fits: impl Fn(Duration) -> bool,
    mut attempt: impl FnMut(u32, Duration) -> Fut,
) -> Result<T, u32>
where
    Fut: Future<Output = ControlFlow<T>>,
{
    let mut attempts = 0;
    loop {
        let Some(limit) = timeout() else {
            return Err(attempts);
        };
        attempts += 1;
        if let ControlFlow::Break(done) = attempt(attempts, limit).await {
            return Ok(done);
        }
        match waits.get(attempts as usize - 1) {
            Some(wait) if fits(*wait) => tokio::time::sleep(*wait).await,
            _ => return Err(attempts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAITS: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(750)];
    const SECOND: Option<Duration> = Some(Duration::from_secs(1));

    #[tokio::test(start_paused = true)]
    async fn retries_until_done_then_gives_up_after_the_waits() {
        let done = bounded(
            &WAITS,
            || SECOND,
            |_| true,
            |n, _| async move {
                if n == 2 {
                    ControlFlow::Break(n)
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        assert_eq!(done.await, Ok(2));
        let start = tokio::time::Instant::now();
        let never = bounded::<(), _>(
            &WAITS,
            || SECOND,
            |_| true,
            |_, _| async { ControlFlow::Continue(()) },
        );
        assert_eq!(never.await, Err(3));
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_the_budget_has_no_time_for_an_attempt_or_a_wait() {
        let continue_ = |_, _| async { ControlFlow::<()>::Continue(()) };
        assert_eq!(bounded(&WAITS, || None, |_| true, continue_).await, Err(0));
        assert_eq!(
            bounded(&WAITS, || SECOND, |_| false, continue_).await,
            Err(1)
        );
    }
}
