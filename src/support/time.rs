//! Unix time from `SystemTime`. A time before 1970 reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds of `t`.
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    unix_secs(SystemTime::now())
}

/// Unix milliseconds of `t`, `i64::MAX` past what that holds.
pub fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn seconds_and_millis_from_the_epoch() {
        let t = UNIX_EPOCH + Duration::from_millis(1_614_265_330_999);
        assert_eq!(unix_secs(t), 1_614_265_330);
        assert_eq!(unix_millis(t), 1_614_265_330_999);
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!((unix_secs(before), unix_millis(before)), (0, 0));
        assert!(unix_now() > 1_600_000_000);
    }
}
