//! The wall clock as the wire formats write it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch; 0 for a time before it.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Now, in seconds since the epoch.
pub fn unix_now() -> i64 {
    unix(SystemTime::now())
}
