//! Queued bulk mode: one SQS message per device, drained by the worker at
//! Defender's pace. SQS keeps what the request could not do in time, the
//! event source mapping's MaximumConcurrency bounds the parallel workers,
//! and a dead-letter queue catches what keeps failing; no scheduler of ours.
//!
//! The queue is a trust boundary: any principal with `sqs:SendMessage` could
//! otherwise have the worker offboard a device of its choosing. So every
//! message is sealed with a MAC whose key is the secret's own
//! `webhook_secrets.queue` (never travelling on the queue, never derived
//! from other parts of the secret), and the worker opens it and
//! re-validates every field as the HTTP path does before anything is called.
//! A sealed device message is good for `MESSAGE_MAX_AGE` after it was sealed
//! (`enqueued_at`), and, with the ledger, for one use: the worker claims it
//! under its `Seal` (a digest of its MAC) before acting.
//!
//! Wire layout: `{"v":1,"mac":"<base64>","msg":"<JSON text>"}`. The MAC is
//! over the exact bytes of `msg` (after a purpose label carrying the
//! version), so nothing is MACed that a JSON re-serialisation could change.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::future::BoxFuture;
use hmac::Mac;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::domain::ledger::{Fingerprint, IdempotencyKey};
use crate::domain::lifecycle::HeldInstance;
use crate::domain::limits::Deadline;
use crate::domain::model::FieldError;
use crate::domain::secret::AppSecret;
use crate::domain::tracking::TrackedAction;
use crate::support::redacted::Redacted;
use crate::support::ttl_cache::TtlCache;
use crate::support::webhook_sig::{
    HmacSha256, KeyError, MIN_KEY_LEN, any_matches, hmac_sha256, strong_key,
};

/// The envelope version this build writes and the only one it opens.
pub const ENVELOPE_VERSION: u64 = 1;
/// Bound into every MAC, so a MAC made for anything else (another version,
/// another use of the same key) never verifies as a queue message.
const MAC_PURPOSE: &[u8] = b"mde-offboard queue message v1\n";
/// The `webhook_secrets` key of the queue's own MAC keys.
pub const QUEUE_SECRET_KEY: &str = "queue";
/// How long a sealed device message may be acted on, counted from when it
/// was sealed (its `enqueued_at`): the longest SQS keeps a message, on the
/// queue or in the dead-letter queue.
pub const MESSAGE_MAX_AGE: i64 = 14 * 86_400;
/// How far ahead of this instance's clock a seal time may be (another
/// instance's clock running fast).
const CLOCK_SKEW: i64 = 300;
/// Bound into the claim key of a seal, so it never meets a delivery's key.
const CLAIM_PURPOSE: &[u8] = b"mde-offboard queue message claim v1\n";

/// What the worker needs to offboard one device, as the request gave it.
/// Strict: a field this build does not know is a message it did not write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuedDevice {
    pub source: String,
    pub ticket: String,
    /// The request's comment, without the ticket (the worker builds the
    /// Defender comment from both, as the HTTP path does).
    pub comment: String,
    pub device: String,
    pub dry_run: bool,
    pub webhook_id: Option<String>,
    /// Unix seconds when the message was sealed: it expires
    /// `MESSAGE_MAX_AGE` later (`check_age`).
    pub enqueued_at: i64,
    /// Where the final outcome is POSTed; absent in messages of builds
    /// before tracking, which still open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Where the outcome is written back; absent likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<crate::domain::notify::NotifyTarget>,
    /// The tenant it acts in (with the secret's `tenants`), under the seal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl QueuedDevice {
    /// Two messages with this hash are the same work, whichever delivery
    /// asked for it and when: the retry memory's key. `device_key` is the
    /// device's canonical key (ids lowercased, names case-folded).
    pub fn work_hash(&self, device_key: &str) -> WorkHash {
        // A JSON array is an unambiguous encoding of the tuple.
        let mut tuple = serde_json::json!([
            self.source,
            self.ticket,
            self.comment,
            device_key,
            self.dry_run
        ]);
        // Another tenant's device is other work; without tenants the hash
        // is what it always was.
        if let (Some(t), Some(list)) = (&self.tenant, tuple.as_array_mut()) {
            list.push(serde_json::json!(t));
        }
        WorkHash(Sha256::digest(tuple.to_string().as_bytes()).into())
    }

    /// Refuses a message sealed more than `MESSAGE_MAX_AGE` before `now`
    /// (unix seconds), or one that says it was sealed in the future.
    pub fn check_age(&self, now: i64) -> Result<(), Rejection> {
        let age = now.saturating_sub(self.enqueued_at);
        if age > MESSAGE_MAX_AGE {
            return Err(Rejection::Expired);
        }
        if age < -CLOCK_SKEW {
            return Err(Rejection::SealedInTheFuture);
        }
        Ok(())
    }
}

/// One sealing of a message, known by its MAC: a copy of the message (from
/// the queue, the dead-letter queue, a redrive) has the same seal, a new
/// request for the same device a new one (its `enqueued_at` differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seal([u8; 32]);

impl Seal {
    pub(crate) fn of(tag: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(CLAIM_PURPOSE);
        h.update(tag);
        Self(h.finalize().into())
    }

    /// The ledger key under which the worker claims this sealed message.
    pub fn claim_key(&self) -> IdempotencyKey {
        IdempotencyKey::from(self.0)
    }

    /// What the claim holds as its request: the seal itself (a copy is the
    /// same request).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkHash([u8; 32]);

/// Why the worker refused a message. None of these quotes the message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error("the message is not a sealed queue message")]
    NotSealed,
    #[error("the message's envelope version is not {ENVELOPE_VERSION}")]
    UnknownVersion,
    #[error("the message's MAC does not verify")]
    BadMac,
    #[error("the sealed message is not a queued device")]
    Malformed,
    #[error("the message names an unknown source")]
    UnknownSource,
    #[error("the sealed message expired: it was sealed more than 14 days ago")]
    Expired,
    #[error("the sealed message says it was sealed in the future")]
    SealedInTheFuture,
    #[error("the sealed message was acted on before")]
    AlreadyActedOn,
    /// Sealed with our key, yet this build cannot read it: another build
    /// of the function wrote it (a newer one, mid-deploy, naming a
    /// follow-up this one does not know). Kept for a worker that can.
    #[error("the sealed message was written by another build of the function")]
    AnotherBuild { written_at: Option<i64> },
    #[error("the message's {0}")]
    Field(FieldError),
}

/// The kinds of sealed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueMessage {
    Device(QueuedDevice),
    Track(TrackedAction),
    /// A terminating instance held for its offboard (`domain::lifecycle`).
    Lifecycle(HeldInstance),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackBody {
    track: TrackedAction,
}

/// `{"lifecycle": ..., "enqueued_at": ...}`: the top-level `enqueued_at`
/// is what a build before this kind reads as the time it was written
/// (`another_build`), so such a worker keeps the message for a newer one
/// instead of sending it to the dead-letter queue.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LifecycleBody {
    lifecycle: HeldInstance,
    enqueued_at: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    v: u64,
    mac: String,
    msg: String,
}

/// The queue's MAC keys, never printed: sign with the first, accept any
/// (rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys(Vec<Redacted<Vec<u8>>>);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueueKeyError {
    #[error(
        "the secret has no key 'webhook_secrets.queue', which seals the queue's messages (QUEUE_URL is set)"
    )]
    Missing,
    #[error(
        "the secret's key 'webhook_secrets.queue' holds a value with less than {MIN_KEY_LEN} bytes of key"
    )]
    Weak,
    #[error("the secret's key 'webhook_secrets.queue' holds a whsec_ value that is not base64")]
    NotBase64,
}

impl QueueKeys {
    /// `webhook_secrets.queue`, which the queue needs: there is no other
    /// key (one derived from the rest of the secret would be no stronger
    /// than its weakest, possibly public, part).
    pub fn from_secret(secret: &AppSecret) -> Result<Self, QueueKeyError> {
        let configured = secret.webhook_secrets(QUEUE_SECRET_KEY);
        if configured.is_empty() {
            return Err(QueueKeyError::Missing);
        }
        // Each value a key by the webhook key rules.
        configured
            .iter()
            .map(|v| match strong_key(v) {
                Ok(key) => Ok(Redacted(key)),
                Err(KeyError::NotBase64) => Err(QueueKeyError::NotBase64),
                Err(KeyError::TooShort) => Err(QueueKeyError::Weak),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// The message body for SQS: the item's JSON and its MAC.
    pub fn seal(&self, item: &QueuedDevice) -> String {
        self.seal_text(serde_json::to_string(item).expect("plain data serialises"))
    }

    /// A track message: the same envelope and MAC, the content wrapped as
    /// `{"track": ...}` so it can never read as a device (and a device
    /// message, strict, never as a track).
    pub fn seal_track(&self, item: &TrackedAction) -> String {
        self.seal_text(
            serde_json::to_string(&TrackBody {
                track: item.clone(),
            })
            .expect("plain data serialises"),
        )
    }

    /// A held instance's message: the same envelope and MAC, wrapped as
    /// `{"lifecycle": ...}` (see `LifecycleBody`).
    pub fn seal_lifecycle(&self, item: &HeldInstance, now: i64) -> String {
        self.seal_text(
            serde_json::to_string(&LifecycleBody {
                lifecycle: item.clone(),
                enqueued_at: now,
            })
            .expect("plain data serialises"),
        )
    }

    fn seal_text(&self, msg: String) -> String {
        let mac = self.mac(&self.0[0], &msg).finalize().into_bytes();
        serde_json::to_string(&Envelope {
            v: ENVELOPE_VERSION,
            mac: B64.encode(mac),
            msg,
        })
        .expect("plain data serialises")
    }

    /// Verifies the MAC (constant time, against every key) and only then
    /// reads the content.
    pub fn open(&self, body: &str) -> Result<QueuedDevice, Rejection> {
        let (msg, _) = self.verified_text(body)?;
        serde_json::from_str(&msg).map_err(|_| Rejection::Malformed)
    }

    /// As `open`, for either kind of message.
    pub fn open_message(&self, body: &str) -> Result<QueueMessage, Rejection> {
        self.open_sealed(body).map(|(m, _)| m)
    }

    /// As `open_message`, with the message's seal.
    pub fn open_sealed(&self, body: &str) -> Result<(QueueMessage, Seal), Rejection> {
        let (msg, seal) = self.verified_text(body)?;
        if let Ok(t) = serde_json::from_str::<TrackBody>(&msg) {
            return Ok((QueueMessage::Track(t.track), seal));
        }
        if let Ok(l) = serde_json::from_str::<LifecycleBody>(&msg) {
            return Ok((QueueMessage::Lifecycle(l.lifecycle), seal));
        }
        serde_json::from_str(&msg)
            .map(|d| (QueueMessage::Device(d), seal))
            .map_err(|_| another_build(&msg))
    }

    fn verified_text(&self, body: &str) -> Result<(String, Seal), Rejection> {
        let env: Envelope = serde_json::from_str(body).map_err(|_| Rejection::NotSealed)?;
        if env.v != ENVELOPE_VERSION {
            return Err(Rejection::UnknownVersion);
        }
        let tag = B64
            .decode(env.mac.as_bytes())
            .map_err(|_| Rejection::BadMac)?;
        let macs = self.0.iter().map(|k| self.mac(k, &env.msg));
        if !any_matches(macs, std::slice::from_ref(&tag)) {
            return Err(Rejection::BadMac);
        }
        Ok((env.msg, Seal::of(&tag)))
    }

    fn mac(&self, key: &Redacted<Vec<u8>>, msg: &str) -> HmacSha256 {
        hmac_sha256(&key.0, &[MAC_PURPOSE, msg.as_bytes()])
    }
}

/// A verified message this build cannot read: when it says when it was
/// written (`enqueued_at`, a track's `requested_at`), another build's;
/// otherwise malformed.
fn another_build(msg: &str) -> Rejection {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(msg) else {
        return Rejection::Malformed;
    };
    let written_at = v
        .get("enqueued_at")
        .or_else(|| v.pointer("/track/requested_at"))
        .and_then(serde_json::Value::as_i64);
    Rejection::AnotherBuild { written_at }
}

/// Why a batch was not taken at all (the messages a queue refused one by
/// one are in `send_batch`'s answer). The text is for the function's own
/// log: an SDK error names the queue URL and the account id.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("the queue could not be reached: {0}")]
    Unreachable(String),
}

/// What the caller of a queued request is told when not every device was
/// queued. Fixed sentences: the SDK's error (queue URL, account id) stays in
/// the function's log.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum Shortfall {
    #[error("the queue did not take every device; retry the request")]
    NotTaken,
    #[error("the request ran out of time before every device was queued; retry the request")]
    OutOfTime,
}

/// Port: where sealed messages go, at most ten per call. `Ok` holds the
/// indexes of the bodies the queue did not take (empty: all taken); `Err`
/// means none was.
pub trait Queue: Send + Sync {
    fn send_batch<'a>(
        &'a self,
        bodies: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<usize>, QueueError>>;

    /// As `send_batch`, each message invisible for `delay` (at most 900 s,
    /// SQS's `DelaySeconds`). A queue that cannot delay delivers at once:
    /// a track message delivered early only sends itself on.
    fn send_batch_delayed<'a>(
        &'a self,
        bodies: &'a [String],
        _delay: Duration,
    ) -> BoxFuture<'a, Result<Vec<usize>, QueueError>> {
        self.send_batch(bodies)
    }
}

/// Most messages one `send_batch` takes (SQS's `SendMessageBatch` limit).
pub const BATCH: usize = 10;

/// How long a warm instance remembers a message SQS accepted, so a retry of
/// a partly queued request does not queue it again.
pub const RECENT_FOR: Duration = Duration::from_secs(15 * 60);
/// Bound of that memory (a hash and an instant each: about 1 MB).
pub const RECENT_MAX: usize = 20_000;

/// Least time a batch is started with: a batch cut off by the deadline
/// leaves the caller unsure what was queued.
const QUEUE_BATCH_TIME: Duration = Duration::from_millis(500);

/// The queue as the request path uses it: the port and what this instance
/// sent lately. Per instance: a retry that lands on another instance queues
/// again, and the worker's Defender check (`already_pending`) is the
/// backstop.
pub struct QueueWriter {
    pub(crate) port: std::sync::Arc<dyn Queue>,
    pub(crate) recent: TtlCache<WorkHash, ()>,
}

impl QueueWriter {
    pub fn new(port: std::sync::Arc<dyn Queue>) -> Self {
        Self {
            port,
            recent: TtlCache::new(RECENT_FOR, RECENT_MAX, usize::MAX, |_| 0),
        }
    }

    /// Sends sealed messages, each invisible for `delay`; answers how many
    /// the queue did not take (each failed batch is logged).
    pub(crate) async fn send_delayed(&self, bodies: &[String], delay: Duration) -> usize {
        let mut refused = 0;
        for chunk in bodies.chunks(BATCH) {
            refused += match self.port.send_batch_delayed(chunk, delay).await {
                Ok(r) => r.len(),
                Err(e) => {
                    tracing::warn!(error = %e, "the queue did not take delayed messages");
                    chunk.len()
                }
            };
        }
        refused
    }

    /// Sends sealed messages ten at a time, each batch only while the deadline
    /// allows, and remembers each message the queue took. Answers how many were
    /// sent, or how many before it stopped and why.
    pub(crate) async fn send(
        &self,
        outgoing: &[(WorkHash, String)],
        deadline: &Deadline,
    ) -> Result<usize, (usize, Shortfall)> {
        let mut sent = 0;
        for chunk in outgoing.chunks(BATCH) {
            let mut pending: Vec<&(WorkHash, String)> = chunk.iter().collect();
            // One resend of the entries SQS did not take; a second refusal is
            // the caller's to retry.
            for _attempt in 0..2 {
                let timeout = match deadline.call_timeout() {
                    Some(t) if deadline.fits(QUEUE_BATCH_TIME) => t,
                    _ => return Err((sent, Shortfall::OutOfTime)),
                };
                let bodies: Vec<String> = pending.iter().map(|(_, b)| b.clone()).collect();
                let refused =
                    match tokio::time::timeout(timeout, self.port.send_batch(&bodies)).await {
                        Ok(Ok(refused)) => refused,
                        Ok(Err(e)) => {
                            // The SDK's text names the queue URL and the account:
                            // for the log only.
                            tracing::warn!(error = %e, "the queue did not take a batch");
                            return Err((sent, Shortfall::NotTaken));
                        }
                        Err(_) => return Err((sent, Shortfall::OutOfTime)),
                    };
                let mut left = Vec::new();
                for (i, entry) in pending.into_iter().enumerate() {
                    if refused.contains(&i) {
                        left.push(entry);
                    } else {
                        self.recent.insert(entry.0, ());
                        sent += 1;
                    }
                }
                pending = left;
                if pending.is_empty() {
                    break;
                }
            }
            if !pending.is_empty() {
                tracing::warn!(refused = pending.len(), "the queue refused messages twice");
                return Err((sent, Shortfall::NotTaken));
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::KeyInit;

    const ID: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

    fn secret(extra: &str) -> AppSecret {
        AppSecret::parse(&format!(
            r#"{{"tenant_id":"t","client_id":"c","client_secret":"s","webhook_secrets":{{"generic":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"{extra}}}}}"#
        ))
        .unwrap()
    }

    /// The secret with a queue key.
    fn keyed() -> AppSecret {
        secret(r#","queue":"0123456789abcdef-queue""#)
    }

    fn item() -> QueuedDevice {
        QueuedDevice {
            source: "generic".into(),
            ticket: "INC1".into(),
            comment: "retired".into(),
            device: ID.into(),
            dry_run: false,
            webhook_id: Some("msg_1".into()),
            enqueued_at: 1_700_000_000,
            callback_url: None,
            notify: None,
            tenant: None,
        }
    }

    #[test]
    fn sealed_messages_open_and_tampered_ones_do_not() {
        let keys = QueueKeys::from_secret(&keyed()).unwrap();
        let body = keys.seal(&item());
        assert_eq!(keys.open(&body).unwrap(), item());

        // The device swapped inside the MACed text.
        let tampered = body.replace(ID, &"f".repeat(40));
        assert_ne!(tampered, body);
        assert_eq!(keys.open(&tampered), Err(Rejection::BadMac));
        // The bare content, as an attacker with SendMessage would write it.
        let bare = serde_json::to_string(&item()).unwrap();
        assert_eq!(keys.open(&bare), Err(Rejection::NotSealed));
        // Another version number in front of a valid MAC.
        let v2 = body.replacen("\"v\":1", "\"v\":2", 1);
        assert_eq!(keys.open(&v2), Err(Rejection::UnknownVersion));
    }

    #[test]
    fn track_and_device_messages_never_read_as_each_other() {
        let keys = QueueKeys::from_secret(&keyed()).unwrap();
        let t = TrackedAction {
            action_id: "b9f0b2d6-0b5e-4a6c-9f46-1c2d3e4f5a6b".into(),
            machine_id: ID.into(),
            ticket: "INC1".into(),
            device: ID.into(),
            source: "generic".into(),
            callback_url: Some("https://hooks.example.com/x".into()),
            notify: Some(crate::domain::notify::NotifyTarget::Jira {
                issue: "IT-1".into(),
            }),
            requested_at: 1,
            attempt: 2,
            due_at: 3,
            tenant: None,
        };
        let sealed = keys.seal_track(&t);
        assert_eq!(keys.open_message(&sealed), Ok(QueueMessage::Track(t)));
        // The device-only opener of older code refuses a track message.
        assert_eq!(keys.open(&sealed), Err(Rejection::Malformed));
        assert_eq!(
            keys.open_message(&keys.seal(&item())),
            Ok(QueueMessage::Device(item()))
        );
        // A track message's MAC is checked like any other.
        let tampered = sealed.replace("\\\"attempt\\\":2", "\\\"attempt\\\":0");
        assert_ne!(tampered, sealed);
        assert_eq!(keys.open_message(&tampered), Err(Rejection::BadMac));
    }

    #[test]
    fn a_held_instance_message_opens_here_and_is_kept_for_newer_by_older_builds() {
        use crate::domain::lifecycle::{HeldInstance, LifecycleAction};
        let keys = QueueKeys::from_secret(&keyed()).unwrap();
        let held = HeldInstance {
            action: LifecycleAction {
                group: "web-asg".into(),
                hook: "offboard".into(),
                token: "87654321-4321-4321-4321-210987654321".into(),
                instance: "i-1234567890abcdef0".into(),
            },
            action_id: "b9f0b2d6-0b5e-4a6c-9f46-1c2d3e4f5a6b".into(),
            machine_id: ID.into(),
            ticket: "web-asg/i-1234567890abcdef0".into(),
            source: "eventbridge".into(),
            held_since: 1_900_000_000,
            checks: 1,
        };
        let sealed = keys.seal_lifecycle(&held, 1_900_000_060);
        assert_eq!(
            keys.open_message(&sealed),
            Ok(QueueMessage::Lifecycle(held))
        );
        // Neither a device nor a track message.
        assert_eq!(keys.open(&sealed), Err(Rejection::Malformed));
        // A build before this kind reads neither a track nor a device in
        // it, and falls to `another_build`, which finds when it was
        // written: it keeps the message for a newer worker (`KEEP_FOR_NEWER`)
        // rather than sending it to the dead-letter queue.
        let env: Envelope = serde_json::from_str(&sealed).unwrap();
        assert!(serde_json::from_str::<TrackBody>(&env.msg).is_err());
        assert!(serde_json::from_str::<QueuedDevice>(&env.msg).is_err());
        assert_eq!(
            another_build(&env.msg),
            Rejection::AnotherBuild {
                written_at: Some(1_900_000_060)
            }
        );
    }

    #[test]
    fn a_mac_without_the_purpose_label_does_not_verify() {
        let keys = QueueKeys::from_secret(&keyed()).unwrap();
        let msg = serde_json::to_string(&item()).unwrap();
        let mut plain = HmacSha256::new_from_slice(&keys.0[0].0).unwrap();
        plain.update(msg.as_bytes());
        let body = serde_json::json!({"v": 1, "mac": B64.encode(plain.finalize().into_bytes()), "msg": msg});
        assert_eq!(keys.open(&body.to_string()), Err(Rejection::BadMac));
    }

    #[test]
    fn without_a_queue_key_there_is_no_key_at_all() {
        // Whatever else the secret holds: a key derived from it would be no
        // stronger than its weakest part (a tenant id and a client id are
        // no secret).
        for extra in [
            "",
            r#","jira":"another-secret-of-length""#,
            r#","queue":[]"#,
        ] {
            let e = QueueKeys::from_secret(&secret(extra)).unwrap_err();
            assert_eq!(e, QueueKeyError::Missing, "{extra}");
            assert!(e.to_string().contains("webhook_secrets.queue"), "{e}");
        }
    }

    #[test]
    fn a_sealed_message_is_good_for_fourteen_days() {
        let sealed_at = item().enqueued_at;
        for (now, ok) in [
            (sealed_at, true),
            (sealed_at + MESSAGE_MAX_AGE, true),
            (sealed_at + MESSAGE_MAX_AGE + 1, false),
            (sealed_at - 60, true),
            (sealed_at - 3600, false),
            (i64::MIN, false),
            (i64::MAX, false),
        ] {
            assert_eq!(item().check_age(now).is_ok(), ok, "{now}");
        }
        assert_eq!(
            item().check_age(sealed_at + MESSAGE_MAX_AGE + 1),
            Err(Rejection::Expired)
        );
    }

    #[test]
    fn a_copy_has_the_seal_of_its_original_and_a_new_seal_is_another() {
        let keys = QueueKeys::from_secret(&keyed()).unwrap();
        let body = keys.seal(&item());
        let (_, a) = keys.open_sealed(&body).unwrap();
        // The same envelope written with other JSON spellings is a copy.
        let env: serde_json::Value = serde_json::from_str(&body).unwrap();
        let respelled = serde_json::to_string_pretty(&env).unwrap();
        assert_ne!(respelled, body);
        assert_eq!(keys.open_sealed(&respelled).unwrap().1, a);
        // The same device sealed again (a new request) is not.
        let again = keys.seal(&QueuedDevice {
            enqueued_at: item().enqueued_at + 1,
            ..item()
        });
        assert_ne!(keys.open_sealed(&again).unwrap().1, a);
        assert_ne!(
            a.claim_key(),
            keys.open_sealed(&again).unwrap().1.claim_key()
        );
    }

    #[test]
    fn a_configured_queue_key_signs_with_the_first_and_accepts_any() {
        let old = "0123456789abcdef-old";
        let new = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let before = QueueKeys::from_secret(&secret(&format!(r#","queue":"{old}""#))).unwrap();
        let during =
            QueueKeys::from_secret(&secret(&format!(r#","queue":["{new}","{old}"]"#))).unwrap();
        let after = QueueKeys::from_secret(&secret(&format!(r#","queue":"{new}""#))).unwrap();
        let in_flight = before.seal(&item());
        assert!(during.open(&in_flight).is_ok(), "old messages still open");
        assert!(after.open(&during.seal(&item())).is_ok(), "new key signs");
        assert_eq!(after.open(&in_flight), Err(Rejection::BadMac));
        // The rest of the secret may rotate without touching queue messages.
        let other = QueueKeys::from_secret(&secret(&format!(
            r#","queue":"{new}","jira":"rotated-jira-secret-1""#
        )))
        .unwrap();
        assert!(other.open(&after.seal(&item())).is_ok());
    }

    #[test]
    fn queue_keys_follow_the_webhook_key_rules() {
        for weak in ["whsec_", "short", "whsec_c2hvcnQ="] {
            assert_eq!(
                QueueKeys::from_secret(&secret(&format!(r#","queue":"{weak}""#))),
                Err(QueueKeyError::Weak),
                "{weak}"
            );
        }
        assert_eq!(
            QueueKeys::from_secret(&secret(r#","queue":"whsec_not base64!!!!!!!!!!""#)),
            Err(QueueKeyError::NotBase64)
        );
        // Unpadded base64, as the official libraries accept.
        assert!(
            QueueKeys::from_secret(&secret(
                r#","queue":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS""#
            ))
            .is_ok()
        );
        assert!(
            QueueKeyError::Weak
                .to_string()
                .contains("webhook_secrets.queue")
        );
    }

    #[test]
    fn the_work_hash_ignores_delivery_and_time_but_not_the_work() {
        let a = item();
        let b = QueuedDevice {
            webhook_id: Some("msg_2".into()),
            enqueued_at: 1_800_000_000,
            ..item()
        };
        assert_eq!(a.work_hash(ID), b.work_hash(ID));
        let c = QueuedDevice {
            dry_run: true,
            ..item()
        };
        assert_ne!(a.work_hash(ID), c.work_hash(ID));
        assert_ne!(a.work_hash(ID), a.work_hash("laptop-1"));
    }

    proptest::proptest! {
        /// Whatever sits on the queue, opening it answers, never panics,
        /// and nothing but a seal of ours opens.
        #[test]
        fn opening_outside_bytes_never_panics(body in ".{0,300}", msg in ".{0,200}", mac in "[A-Za-z0-9+/=]{0,60}") {
            let keys = QueueKeys::from_secret(&keyed()).unwrap();
            proptest::prop_assert!(keys.open(&body).is_err());
            let env = serde_json::json!({"v": 1, "mac": mac, "msg": msg}).to_string();
            proptest::prop_assert!(keys.open(&env).is_err());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn recently_sent_forgets_after_a_while_and_stays_bounded() {
        let r = TtlCache::new(RECENT_FOR, RECENT_MAX, usize::MAX, |_| 0);
        let h = item().work_hash(ID);
        r.insert(h, ());
        assert!(r.contains(&h));
        tokio::time::advance(RECENT_FOR + Duration::from_secs(1)).await;
        assert!(!r.contains(&h));
        for i in 0..(RECENT_MAX + 100) {
            r.insert(item().work_hash(&i.to_string()), ());
        }
        assert_eq!(r.size().0, RECENT_MAX);
    }
}
