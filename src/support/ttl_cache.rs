//! An expiring, ordered, bounded map for what a warm instance remembers:
//! an entry leaves a fixed time after it was inserted, and the oldest leave
//! first when a count or a summed cost (bytes, say) would be exceeded.
//! Clocked by tokio, so a test with a paused clock runs an hour in a moment.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

pub struct TtlCache<K, V> {
    ttl: Duration,
    max_entries: usize,
    max_cost: usize,
    cost: fn(&V) -> usize,
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    entries: HashMap<K, (Instant, V)>,
    /// Every insertion, oldest first (a key inserted again is in it twice).
    order: VecDeque<(Instant, K)>,
    cost: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// Entries last `ttl`; at most `max_entries` insertions are kept, and
    /// entries whose summed `cost` is at most `max_cost` (a value that costs
    /// more than that is not kept at all).
    pub fn new(ttl: Duration, max_entries: usize, max_cost: usize, cost: fn(&V) -> usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            max_cost,
            cost,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                cost: 0,
            }),
        }
    }

    /// The map, without what has expired.
    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while g
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.ttl)
        {
            self.pop_oldest(&mut g);
        }
        g
    }

    /// Drops the oldest insertion, and its entry unless the key was
    /// inserted again since.
    fn pop_oldest(&self, g: &mut Inner<K, V>) {
        if let Some((at, k)) = g.order.pop_front()
            && g.entries.get(&k).is_some_and(|(t, _)| *t == at)
            && let Some((_, v)) = g.entries.remove(&k)
        {
            g.cost -= (self.cost)(&v);
        }
    }

    pub fn get(&self, k: &K) -> Option<V> {
        self.lock().entries.get(k).map(|(_, v)| v.clone())
    }

    pub fn contains(&self, k: &K) -> bool {
        self.lock().entries.contains_key(k)
    }

    /// Inserts or replaces, evicting the oldest to stay within the bounds.
    pub fn insert(&self, k: K, v: V) {
        let cost = (self.cost)(&v);
        if cost > self.max_cost {
            return;
        }
        let mut g = self.lock();
        if let Some((_, old)) = g.entries.remove(&k) {
            g.cost -= (self.cost)(&old);
        }
        while g.order.len() >= self.max_entries || g.cost + cost > self.max_cost {
            self.pop_oldest(&mut g);
        }
        let now = Instant::now();
        g.cost += cost;
        g.entries.insert(k.clone(), (now, v));
        g.order.push_back((now, k));
    }

    /// How many entries, and their summed cost.
    #[cfg(test)]
    pub fn size(&self) -> (usize, usize) {
        let g = self.lock();
        (g.entries.len(), g.cost)
    }
}
