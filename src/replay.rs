//! Replay protection in the warm instance: an authenticated delivery seen
//! before (same source, same delivery id, same body) is answered from memory
//! without calling Defender again, like Powertools' idempotency utility but
//! without a table.
//!
//! It covers the common case, a sender retrying into the same warm
//! instance. It does not cover a retry that lands on another instance or
//! after a cold start; there Defender's own pending-action check answers
//! `already_pending`, so a replay can never offboard twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Longer than Standard Webhooks' 300 s tolerance, so every replay a
/// signature still admits is caught; long enough for Jira's and
/// PagerDuty's retry schedules' first attempts.
pub const REMEMBER_FOR: Duration = Duration::from_secs(15 * 60);
/// Bounds memory: at 128 MB this is a few hundred KiB at most.
pub const MAX_ENTRIES: usize = 2_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

type Key = [u8; 32];

#[derive(Default)]
struct Inner {
    answers: HashMap<Key, (Instant, Answer)>,
    order: VecDeque<(Instant, Key)>,
}

#[derive(Default)]
pub struct ReplayCache {
    inner: Mutex<Inner>,
}

/// The key: source, delivery id and body, hashed so the cache holds no
/// payloads.
pub fn key(source: &str, delivery_id: &str, body: &[u8]) -> Key {
    let mut h = Sha256::new();
    for part in [source.as_bytes(), delivery_id.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(body);
    h.finalize().into()
}

impl ReplayCache {
    pub fn get(&self, key: &Key) -> Option<Answer> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.expire(Instant::now());
        g.answers.get(key).map(|(_, a)| a.clone())
    }

    /// Remembers a final answer. Answers a retry could change (503) are
    /// not final and are not remembered.
    pub fn put(&self, key: Key, answer: Answer) {
        let now = Instant::now();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.expire(now);
        while g.answers.len() >= MAX_ENTRIES {
            match g.order.pop_front() {
                Some((_, k)) => {
                    g.answers.remove(&k);
                }
                None => break,
            }
        }
        g.answers.insert(key, (now, answer));
        g.order.push_back((now, key));
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((at, k)) = self.order.front().copied() {
            if now.duration_since(at) < REMEMBER_FOR {
                break;
            }
            self.order.pop_front();
            // Only drop the answer if it is the one this entry recorded.
            if self.answers.get(&k).is_some_and(|(t, _)| *t == at) {
                self.answers.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: u16) -> Answer {
        Answer {
            status: n,
            body: "{}".into(),
        }
    }

    #[test]
    fn the_key_binds_source_id_and_body() {
        let k = key("jira", "id-1", b"{}");
        assert_eq!(k, key("jira", "id-1", b"{}"));
        assert_ne!(k, key("jira", "id-1", b"{ }"));
        assert_ne!(k, key("pagerduty", "id-1", b"{}"));
        assert_ne!(key("ab", "c", b""), key("a", "bc", b""));
    }

    #[tokio::test(start_paused = true)]
    async fn remembers_for_a_while_then_forgets() {
        let c = ReplayCache::default();
        let k = key("generic", "msg_1", b"{}");
        c.put(k, answer(200));
        assert_eq!(c.get(&k), Some(answer(200)));
        tokio::time::advance(REMEMBER_FOR - Duration::from_secs(1)).await;
        assert!(c.get(&k).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(c.get(&k).is_none());
    }

    #[test]
    fn stays_bounded() {
        let c = ReplayCache::default();
        for i in 0..(MAX_ENTRIES + 10) {
            c.put(key("s", &i.to_string(), b""), answer(200));
        }
        let g = c.inner.lock().unwrap();
        assert_eq!(g.answers.len(), MAX_ENTRIES);
        assert!(!g.answers.contains_key(&key("s", "0", b"")));
    }
}
