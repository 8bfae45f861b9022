//! A simulated clock and SQS's delay semantics over it, for tests that
//! follow sealed messages through days in a few milliseconds (tracking,
//! Auto Scaling holds): a message sent with a delay becomes visible at
//! `now + delay`, and the test drains them in that order.
#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use mde_offboard::domain::queue::{Queue, QueueError};

#[derive(Clone)]
pub struct SimClock(pub Arc<AtomicI64>);

impl SimClock {
    pub fn at(t: i64) -> Self {
        Self(Arc::new(AtomicI64::new(t)))
    }
    pub fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    /// Moves the clock to `t`, never back.
    pub fn set(&self, t: i64) {
        self.0.fetch_max(t, Ordering::SeqCst);
    }
}

pub struct SimQueue {
    clock: SimClock,
    messages: Mutex<Vec<(i64, u64, String)>>,
    next_id: AtomicI64,
    /// The longest delay any send asked for, in seconds.
    pub max_delay_seen: AtomicI64,
}

impl SimQueue {
    pub fn new(clock: SimClock) -> Self {
        Self {
            clock,
            messages: Mutex::default(),
            next_id: AtomicI64::new(0),
            max_delay_seen: AtomicI64::new(0),
        }
    }
    pub fn push(&self, visible_at: i64, body: String) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst) as u64;
        self.messages.lock().unwrap().push((visible_at, id, body));
    }
    /// The message visible first (then the first sent), taken off the queue.
    pub fn pop_next(&self) -> Option<(i64, u64, String)> {
        let mut m = self.messages.lock().unwrap();
        let i = (0..m.len()).min_by_key(|&i| (m[i].0, m[i].1))?;
        Some(m.remove(i))
    }
    /// SQS delivers at least once: every message now on the queue is
    /// there twice.
    pub fn duplicate_everything(&self) {
        let mut m = self.messages.lock().unwrap();
        let copies: Vec<(i64, String)> = m.iter().map(|(at, _, b)| (*at, b.clone())).collect();
        for (at, body) in copies {
            let id = self.next_id.fetch_add(1, Ordering::SeqCst) as u64;
            m.push((at, id, body));
        }
    }
    pub fn len(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
}

impl Queue for SimQueue {
    fn send_batch<'a>(
        &'a self,
        bodies: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<usize>, QueueError>> {
        self.send_batch_delayed(bodies, Duration::ZERO)
    }
    fn send_batch_delayed<'a>(
        &'a self,
        bodies: &'a [String],
        delay: Duration,
    ) -> BoxFuture<'a, Result<Vec<usize>, QueueError>> {
        let d = delay.as_secs() as i64;
        self.max_delay_seen.fetch_max(d, Ordering::SeqCst);
        for b in bodies {
            self.push(self.clock.now() + d, b.clone());
        }
        Box::pin(async { Ok(Vec::new()) })
    }
}
