//! Idempotency: a delivery seen before (same source, same delivery key) is
//! answered again without calling Defender, from the warm instance's
//! memory or from the ledger that every instance shares (like Powertools'
//! idempotency utility); one still running elsewhere is 409 `in_progress`.
//!
//! A delivery key stands for one request: its route and body (the
//! request's fingerprint) are kept with the claim and the answer, so the
//! same key with another route or body is 409 `delivery_id_reused`, nothing
//! is called, and nothing of the first answer is shown. A captured signed
//! call cannot be sent again to another action, or with another body.
//!
//! Without the ledger only the memory covers replays: a retry that lands on
//! another instance meets Defender's own pending-action check, which
//! answers `already_pending`, so a replay can never offboard twice.

use std::fmt;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::audit::Origin;
use super::{App, Outcome};
use crate::domain::ledger::{ANSWER_KEPT_FOR, Begin, Fingerprint, IdempotencyKey};
use crate::domain::limits::Deadline;
use crate::error::ApiError;
use crate::ops::metrics;
use crate::support::ttl_cache::TtlCache;

/// As long as the presets' freshness windows (and far longer than Standard
/// Webhooks' 300 s tolerance), so a replay that the time checks still admit
/// meets this cache in a warm instance; the byte bound keeps the longer
/// memory affordable.
pub const REMEMBER_FOR: Duration = Duration::from_secs(60 * 60);
/// Bounds the bookkeeping of many small answers.
pub const MAX_ENTRIES: usize = 2_000;
/// Bounds memory whatever the answers hold: 2,000 queue-mode answers of a
/// few hundred KiB each would otherwise exhaust a 128 MB function.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;
/// What an entry costs beyond its body: key, fingerprint, timestamps, map
/// slots.
const ENTRY_OVERHEAD: usize = 160;

/// The route of an EventBridge event and of a direct invocation, for their
/// fingerprints; an HTTP route is its method and path (`http_route`).
pub const EVENTBRIDGE_ROUTE: &str = "eventbridge";
pub const INVOKE_ROUTE: &str = "invoke";

/// An HTTP request's route: `POST /v1/offboard`.
pub fn http_route(method: &str, path: &str) -> String {
    format!("{method} {path}")
}

/// What a request asked: the SHA-256 of its route and its body.
pub fn fingerprint(route: &str, body: &[u8]) -> Fingerprint {
    let mut h = Sha256::new();
    for part in [route.as_bytes(), body] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    Fingerprint(h.finalize().into())
}

/// What identifies one delivery of one source, for this cache and for the
/// durable ledger, and the request it stands for. Only a delivery id the
/// signature covers may stand for the delivery; any other id could be
/// changed by whoever replays it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    source: String,
    /// `id:<delivery id>` or `sha256:<hex>`: the prefix keeps an id that
    /// happens to look like a hash from meeting one.
    key: String,
    /// The route and body this delivery was (`fingerprint`): not part of
    /// the key, but kept with it.
    request: Fingerprint,
}

impl DeliveryKey {
    /// The sender's delivery id, where the signature covers it (Standard
    /// Webhooks' `webhook-id`, an EventBridge event's `id`), for a request
    /// of `route` with `body`.
    pub fn signed_id(source: &str, id: &str, route: &str, body: &[u8]) -> Self {
        Self {
            source: source.to_string(),
            key: format!("id:{id}"),
            request: fingerprint(route, body),
        }
    }

    /// The body's SHA-256, for schemes that sign only the body (or nothing
    /// a replayer cannot copy): the same bytes are the same delivery.
    pub fn body_hash(source: &str, route: &str, body: &[u8]) -> Self {
        let digest: [u8; 32] = Sha256::digest(body).into();
        Self {
            source: source.to_string(),
            key: format!("sha256:{}", hex::encode(digest)),
            request: fingerprint(route, body),
        }
    }

    /// The request this delivery is.
    pub fn request(&self) -> &Fingerprint {
        &self.request
    }

    /// Fixed-size, so neither the cache nor the ledger holds long ids or
    /// payloads.
    pub fn digest(&self) -> Digest32 {
        let mut h = Sha256::new();
        for part in [self.source.as_bytes(), self.key.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    }
}

impl fmt::Display for DeliveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.source, self.key)
    }
}

pub use crate::domain::ledger::StoredAnswer as Answer;

/// What this instance remembers of a delivery it ran: the request it was,
/// and its final answer when it had one. A refusal is not kept (a retry
/// runs again), but its delivery key stays bound to its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub request: Fingerprint,
    pub answer: Option<Answer>,
}

fn cost(s: &Seen) -> usize {
    s.answer.as_ref().map_or(0, |a| a.body.len()) + ENTRY_OVERHEAD
}

type Digest32 = [u8; 32];

/// The deliveries this instance ran lately, and their final answers.
pub struct ReplayCache(TtlCache<Digest32, Seen>);

impl Default for ReplayCache {
    fn default() -> Self {
        Self(TtlCache::new(REMEMBER_FOR, MAX_ENTRIES, MAX_BYTES, cost))
    }
}

impl ReplayCache {
    pub fn get(&self, key: &DeliveryKey) -> Option<Seen> {
        self.0.get(&key.digest())
    }

    /// Remembers a delivery that ran, with its final answer if any,
    /// evicting the oldest to stay within `MAX_ENTRIES` and `MAX_BYTES`.
    /// Answers a retry could change (503) are not final and are not passed
    /// by the caller; an answer larger than the whole budget is not
    /// remembered at all.
    pub fn put(&self, key: &DeliveryKey, answer: Option<Answer>) {
        let seen = Seen {
            request: key.request,
            answer,
        };
        self.0.insert(key.digest(), seen);
    }

    #[cfg(test)]
    fn stored(&self) -> (usize, usize) {
        self.0.size()
    }
}

/// The ledger's answer to "may this delivery run?", passed to the work:
/// when the ledger could not be reached only a dry run may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This invocation runs the delivery (claimed in the ledger, if any).
    Fresh,
    /// The ledger could not be reached: fail closed unless a dry run.
    LedgerDown,
}

impl App {
    /// Answers a delivery seen before (from memory, else from the ledger,
    /// which any instance shares); claims a new one in the ledger while it
    /// runs, so a duplicate elsewhere is 409 `in_progress`; remembers final
    /// answers. A 503 (or any refusal) is not kept: a retry runs again.
    pub(crate) async fn once<F: Future<Output = Result<Outcome, ApiError>>>(
        &self,
        origin: &Origin,
        key: &DeliveryKey,
        deadline: &Deadline,
        work: impl FnOnce(Claim) -> F,
    ) -> Result<Outcome, ApiError> {
        match self.replay.get(key) {
            Some(seen) if seen.request != key.request => return Err(reused(origin, key)),
            Some(Seen {
                answer: Some(a), ..
            }) => {
                tracing::info!(source = %origin.source, delivery_key = %key, webhook_id = origin.webhook_id(), "replayed delivery answered from memory; Defender not called");
                return Ok(replayed(a));
            }
            _ => {}
        }
        let (claim, claimed) = match &self.claims {
            None => (Claim::Fresh, None),
            Some(ledger) => {
                let id = IdempotencyKey::from(key.digest());
                match ledger
                    .begin(&id, &key.request, SystemTime::now(), deadline.wall_clock())
                    .await
                {
                    Ok(Begin::Started) => (Claim::Fresh, Some((ledger, id))),
                    Ok(Begin::InProgress { retry_after }) => {
                        tracing::info!(source = %origin.source, delivery_key = %key, "delivery already in progress elsewhere");
                        return Err(ApiError::InProgress(retry_after));
                    }
                    Ok(Begin::Done(answer)) => {
                        tracing::info!(source = %origin.source, delivery_key = %key, "replayed delivery answered from the ledger; Defender not called");
                        self.replay.put(key, Some(answer.clone()));
                        return Ok(replayed(answer));
                    }
                    Ok(Begin::Reused) => return Err(reused(origin, key)),
                    Err(e) => {
                        tracing::warn!(source = %origin.source, error = %e, "ledger unreachable: only a dry run may go on");
                        (Claim::LedgerDown, None)
                    }
                }
            }
        };
        let result = work(claim).await;
        let kept = match &result {
            Ok(o) if matches!(o.status, 200 | 202) => Some(Answer {
                status: o.status,
                body: o.body.clone(),
            }),
            _ => None,
        };
        if let Some((ledger, id)) = claimed {
            let done = match &kept {
                Some(answer) => {
                    ledger
                        .complete(
                            &id,
                            &key.request,
                            answer,
                            SystemTime::now() + ANSWER_KEPT_FOR,
                        )
                        .await
                }
                None => ledger.abandon(&id).await,
            };
            if let Err(e) = done {
                // The claim expires at the deadline by itself.
                tracing::warn!(source = %origin.source, error = %e, "the ledger did not take the delivery's end");
            }
        }
        // Kept or not, the key now stands for this request.
        self.replay.put(key, kept);
        result
    }

    /// Runs a call of a read or cancel route once per signed delivery id
    /// (`once`): a replay is answered again, the id with another route or
    /// body is 409 `delivery_id_reused`. A call without a signed id has
    /// nothing that tells two calls apart, and simply runs. The ledger's
    /// state does not stop a read: the work decides.
    pub async fn once_signed<F: Future<Output = Result<Outcome, ApiError>>>(
        &self,
        origin: &Origin,
        key: Option<&DeliveryKey>,
        deadline: &Deadline,
        work: impl FnOnce() -> F,
    ) -> Result<Outcome, ApiError> {
        match key {
            Some(key) => self.once(origin, key, deadline, |_| work()).await,
            None => work().await,
        }
    }
}

/// A delivery key used again for another request: refused, and logged.
fn reused(origin: &Origin, key: &DeliveryKey) -> ApiError {
    tracing::warn!(source = %origin.source, delivery_key = %key, webhook_id = origin.webhook_id(), source_ip = origin.source_ip.as_deref().unwrap_or(""), "delivery id used again for another route or body; refused, nothing called");
    ApiError::DeliveryIdReused
}

/// A stored answer, sent again and marked as such.
fn replayed(a: Answer) -> Outcome {
    metrics::count(metrics::names::REPLAYED);
    Outcome {
        status: a.status,
        body: a.body,
        retry_after: None,
        replayed: true,
    }
}

/// The replay key of a delivery (contract, "Replays"): the sender's id
/// where the signature covers it, else the body's hash; with the request
/// (`route` and `body`) it stands for.
pub fn delivery_key(
    source: &str,
    signed_id: Option<&str>,
    route: &str,
    body: &[u8],
) -> DeliveryKey {
    match signed_id.filter(|id| !id.is_empty()) {
        Some(id) => DeliveryKey::signed_id(source, id, route, body),
        None => DeliveryKey::body_hash(source, route, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: u16) -> Option<Answer> {
        Some(Answer {
            status: n,
            body: "{}".into(),
        })
    }

    const ROUTE: &str = "POST /v1/offboard";

    fn signed(source: &str, id: &str) -> DeliveryKey {
        DeliveryKey::signed_id(source, id, ROUTE, b"{}")
    }

    fn hashed(source: &str, body: &[u8]) -> DeliveryKey {
        DeliveryKey::body_hash(source, ROUTE, body)
    }

    fn answer_of(c: &ReplayCache, k: &DeliveryKey) -> Option<Answer> {
        c.get(k).and_then(|s| s.answer)
    }

    #[test]
    fn a_signed_id_keys_by_id_and_an_unsigned_one_by_body() {
        let k = signed("generic", "msg_1");
        assert_eq!(k, signed("generic", "msg_1"));
        assert_ne!(k, signed("tines", "msg_1"));
        let h = hashed("jira", b"{}");
        assert_eq!(h, hashed("jira", b"{}"));
        assert_ne!(h, hashed("jira", b"{ }"));
        assert_ne!(h, hashed("pagerduty", b"{}"));
        assert_eq!(
            h.key,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        // An id spelled like a hash is still not that hash's key.
        let hex = h.key.trim_start_matches("sha256:");
        assert_ne!(signed("jira", hex).digest(), h.digest());
        assert_ne!(signed("ab", "c").digest(), signed("a", "bc").digest());
    }

    #[test]
    fn the_request_is_kept_beside_the_key_not_in_it() {
        let a = DeliveryKey::signed_id("generic", "msg_1", "POST /v1/actions/A/cancel", b"{}");
        let b = DeliveryKey::signed_id("generic", "msg_1", "POST /v1/actions/B/cancel", b"{}");
        let c = DeliveryKey::signed_id("generic", "msg_1", "POST /v1/actions/A/cancel", b"{ }");
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest(), c.digest());
        assert_ne!(a.request(), b.request());
        assert_ne!(a.request(), c.request());
        assert_ne!(fingerprint("ab", b"c"), fingerprint("a", b"bc"));
        assert_eq!(
            DeliveryKey::body_hash(INVOKE_ROUTE, INVOKE_ROUTE, b"{}").request(),
            &fingerprint("invoke", b"{}")
        );
    }

    #[test]
    fn a_refusal_is_remembered_as_its_request_without_an_answer() {
        let c = ReplayCache::default();
        let k = signed("generic", "msg_1");
        c.put(&k, None);
        let seen = c.get(&k).unwrap();
        assert_eq!((seen.request, seen.answer), (*k.request(), None));
    }

    #[tokio::test(start_paused = true)]
    async fn remembers_for_a_while_then_forgets() {
        let c = ReplayCache::default();
        let k = signed("generic", "msg_1");
        c.put(&k, answer(200));
        assert_eq!(answer_of(&c, &k), answer(200));
        tokio::time::advance(REMEMBER_FOR - Duration::from_secs(1)).await;
        assert!(c.get(&k).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(c.get(&k).is_none());
        assert_eq!(c.stored(), (0, 0), "expiry gives the bytes back");
    }

    #[test]
    fn stays_bounded_by_count() {
        let c = ReplayCache::default();
        let key = |i: usize| signed("s", &i.to_string());
        for i in 0..(MAX_ENTRIES + 10) {
            c.put(&key(i), answer(200));
        }
        assert_eq!(c.stored().0, MAX_ENTRIES);
        assert!(c.get(&key(0)).is_none());
        assert!(c.get(&key(MAX_ENTRIES + 9)).is_some());
    }

    #[test]
    fn stays_bounded_by_bytes_evicting_the_oldest() {
        let c = ReplayCache::default();
        // Large queue-mode answers: far fewer than MAX_ENTRIES of them
        // would exceed the byte budget.
        let big = Some(Answer {
            status: 202,
            body: "x".repeat(256 * 1024),
        });
        let key = |i: usize| hashed("jira", i.to_string().as_bytes());
        let n = 200;
        for i in 0..n {
            c.put(&key(i), big.clone());
        }
        let (count, bytes) = c.stored();
        assert!(bytes <= MAX_BYTES, "{bytes} bytes stored");
        let seen = Seen {
            request: fingerprint("", b""),
            answer: big,
        };
        assert_eq!(count, MAX_BYTES / cost(&seen));
        assert!(c.get(&key(0)).is_none(), "the oldest went first");
        assert!(c.get(&key(n - 1)).is_some(), "the newest stays");
        // A small answer still fits after the big ones.
        c.put(&key(n), answer(200));
        assert!(c.get(&key(n)).is_some());
        assert!(c.stored().1 <= MAX_BYTES);
        // One answer larger than the budget is not kept, and evicts nothing.
        let before = c.stored();
        let huge = Some(Answer {
            status: 200,
            body: "y".repeat(MAX_BYTES + 1),
        });
        c.put(&key(n + 1), huge);
        assert!(c.get(&key(n + 1)).is_none());
        assert_eq!(c.stored(), before);
    }

    #[test]
    fn putting_a_key_again_replaces_its_bytes() {
        let c = ReplayCache::default();
        let k = signed("generic", "msg_1");
        c.put(&k, answer(200));
        let once = c.stored();
        c.put(&k, answer(202));
        assert_eq!(c.stored(), once);
        assert_eq!(answer_of(&c, &k), answer(202));
    }
}
