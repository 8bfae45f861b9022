//! The queue worker's use case: one batch of messages, each a device to
//! offboard or an action to check, through the same per-device pipeline as
//! a request.
//!
//! Messages are handled one after another so the rate limiter paces them;
//! a device that failed (throttled, Defender down, a refusal a retry might
//! cure) is answered as one to retry, so SQS delivers it again later and,
//! after the queue's maxReceiveCount, moves it to the dead-letter queue.
//! Nothing is dropped, and a redelivered message that was in fact done
//! comes back `already_pending` from Defender.
//!
//! A message is acted on only when its MAC verifies (`domain::queue`) and
//! every field passes the HTTP path's checks (`validate`): anyone with
//! `sqs:SendMessage` can write to the queue, so its content is no more
//! trusted than a request. A device message is acted on only within 14 days
//! of its seal and, with the ledger, once: the worker claims its seal in the
//! ledger (`DeliveryClaims`, as a delivery is claimed) before acting, so a
//! copy taken from the queue or the dead-letter queue and put back is
//! refused. A refused message is retried too, so it ends in the dead-letter
//! queue where an operator sees it. Track messages only read Defender: they
//! are sealed and re-validated, not claimed (their own window,
//! `TRACK_FOR_SECONDS`, ends them).

use std::fmt::Display;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::App;
use super::audit::Origin;
use crate::domain::follow_up::FollowUpTargets;
use crate::domain::ledger::{Begin, Fingerprint, IdempotencyKey, StoredAnswer};
use crate::domain::lifecycle::HeldInstance;
use crate::domain::limits::Deadline;
use crate::domain::model::{Comment, Device, MachineId, Ticket};
use crate::domain::offboard::Status;
use crate::domain::queue::{
    MESSAGE_MAX_AGE, QueueKeys, QueueMessage, QueuedDevice, Rejection, Seal,
};
use crate::domain::secret::AppSecret;
use crate::domain::tracking::{MAX_DELAY_SECONDS, TrackedAction, valid_action_id};
use crate::intake::generic::callback_url;
use crate::ops::metrics;
use crate::support::time::unix_now;
use crate::support::url_policy::CallbackHosts;

/// One message of a batch, as the queue delivered it.
pub struct Message<'a> {
    pub id: Option<&'a str>,
    pub body: &'a str,
}

/// How long a message another build wrote is kept for a worker that can
/// read it, counted from when it was written.
pub const KEEP_FOR_NEWER: i64 = 14 * 86_400;

/// A queued device whose every field passed the HTTP path's checks, and
/// the values they were read as.
#[derive(Debug)]
struct VerifiedDevice {
    queued: QueuedDevice,
    ticket: Ticket,
    comment: Comment,
    device: Device,
    /// The message's seal: its claim in the ledger.
    seal: Seal,
}

/// The ledger's claim on a device message while the worker acts on it.
struct Claimed(Option<(IdempotencyKey, Fingerprint)>);

/// What the claim step made of a device message.
enum Claim {
    /// Act on it (claimed, or no ledger to claim it in).
    Go(Claimed),
    /// Refused (audited and counted): a copy of one acted on before.
    Refused,
    /// Not now: another invocation holds it, or the ledger is down.
    Later,
}

/// What a verified message asks of the worker.
#[derive(Debug)]
enum Work {
    Device(Box<VerifiedDevice>),
    Track(Box<TrackedAction>),
    Lifecycle(Box<HeldInstance>),
}

/// A message, opened.
enum Opened {
    Work(Work),
    /// Written by another build (see `Rejection::AnotherBuild`): put back
    /// on the queue, as it is, for a worker of that build.
    KeepForNewer,
    /// Refused (audited and counted): left for the dead-letter queue.
    Refused,
}

impl App {
    /// One batch; answers the ids of the messages to deliver again.
    pub async fn work(&self, batch: &[Message<'_>], deadline: &Deadline) -> Vec<String> {
        let ids = |ms: &mut dyn Iterator<Item = &Message<'_>>| -> Vec<String> {
            ms.filter_map(|m| m.id.map(str::to_string)).collect()
        };
        // The MAC key is in the secret: while the secret cannot be read,
        // every message goes back to the queue.
        let secret = match self.secrets.get().await {
            Ok(secret) => secret,
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), "no secret; the batch goes back to the queue");
                return ids(&mut batch.iter());
            }
        };
        // A secret without a usable queue key: no message can be trusted,
        // and each is refused (it ends in the dead-letter queue, where it
        // can be redriven once the key is set, within its 14 days).
        let keys = match QueueKeys::from_secret(&secret) {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), "no usable queue key; every message is refused");
                for m in batch {
                    self.refuse(m, &e, None);
                }
                return ids(&mut batch.iter());
            }
        };
        // Refused messages never reach Defender, nor cost a token.
        let mut retry = Vec::new();
        let mut accepted: Vec<(&Message<'_>, Work, Claimed)> = Vec::new();
        for m in batch {
            let work = match self.open(&keys, m) {
                Opened::Work(work) => work,
                // Another build's message needs no token: it goes back.
                Opened::KeepForNewer if self.keep_for_newer(m).await => continue,
                Opened::KeepForNewer | Opened::Refused => {
                    retry.extend(m.id.map(str::to_string));
                    continue;
                }
            };
            let claim = match &work {
                Work::Device(d) => self.claim(m, d, deadline).await,
                Work::Track(_) | Work::Lifecycle(_) => Claim::Go(Claimed(None)),
            };
            match claim {
                Claim::Go(claimed) => accepted.push((m, work, claimed)),
                Claim::Refused | Claim::Later => retry.extend(m.id.map(str::to_string)),
            }
        }
        if accepted.is_empty() {
            return retry;
        }
        // With tenants, each message's tenant is checked with its device.
        let ready = match secret.tenants {
            None => self.defender.ready(&secret, deadline).await,
            Some(_) => Ok(()),
        };
        if let Err(e) = ready {
            tracing::warn!(error = %e, records = accepted.len(), "no token; the messages go back to the queue");
            for (m, _, claimed) in accepted {
                self.release(claimed, None).await;
                retry.extend(m.id.map(str::to_string));
            }
            return retry;
        }
        for (m, work, claimed) in accepted {
            let done = match work {
                Work::Device(item) => {
                    let sealed_at = item.queued.enqueued_at;
                    let status = self.offboard_queued(*item, &secret, deadline).await;
                    let done = status.is_some();
                    self.release(claimed, status.map(|s| (s, sealed_at))).await;
                    done
                }
                Work::Track(t) => self.handle_track(*t, &keys, &secret, deadline).await,
                Work::Lifecycle(h) => self.handle_held(*h, &keys, deadline).await,
            };
            if !done {
                retry.extend(m.id.map(str::to_string));
            }
        }
        retry
    }

    /// Claims a device message's seal in the ledger, so it is acted on
    /// once. A copy of a message acted on before is refused; one another
    /// invocation holds, or any message while the ledger cannot be reached,
    /// comes back later (a dry run goes on unclaimed, as over HTTP).
    async fn claim(&self, m: &Message<'_>, d: &VerifiedDevice, deadline: &Deadline) -> Claim {
        let Some(ledger) = &self.claims else {
            return Claim::Go(Claimed(None));
        };
        let (key, seal) = (d.seal.claim_key(), d.seal.fingerprint());
        let message_id = m.id.unwrap_or("");
        match ledger
            .begin(&key, &seal, SystemTime::now(), deadline.wall_clock())
            .await
        {
            Ok(Begin::Started) => Claim::Go(Claimed(Some((key, seal)))),
            // (`Reused` would take another message with the same key: a
            // hash collision; refused all the same.)
            Ok(Begin::Done(_) | Begin::Reused) => {
                self.refuse(m, &Rejection::AlreadyActedOn, Some(&d.queued));
                Claim::Refused
            }
            Ok(Begin::InProgress { .. }) => {
                tracing::info!(
                    message_id,
                    "a copy of this message is being acted on elsewhere; it comes back later"
                );
                Claim::Later
            }
            Err(e) if d.queued.dry_run || self.config.dry_run => {
                tracing::warn!(message_id, error = %e, "ledger unreachable: a dry run goes on unclaimed");
                Claim::Go(Claimed(None))
            }
            Err(e) => {
                tracing::warn!(message_id, error = %e, "ledger unreachable: the message comes back later");
                Claim::Later
            }
        }
    }

    /// Ends a claim: kept (for the rest of the message's life) once the
    /// message is done with, `done` holding its device's status and when it
    /// was sealed; dropped when SQS is to deliver it again. A claim the
    /// ledger does not take ends by itself at the invocation's deadline.
    async fn release(&self, claimed: Claimed, done: Option<(Status, i64)>) {
        let (Some(ledger), Claimed(Some((key, seal)))) = (&self.claims, claimed) else {
            return;
        };
        let ended = match done {
            Some((status, sealed_at)) => {
                let answer = StoredAnswer {
                    status: 200,
                    body: serde_json::json!({"status": status}).to_string(),
                };
                // An hour past its expiry, for clocks that differ.
                let until = sealed_at.saturating_add(MESSAGE_MAX_AGE + 3600).max(0) as u64;
                let until = (UNIX_EPOCH + Duration::from_secs(until))
                    .max(SystemTime::now() + Duration::from_secs(3600));
                ledger.complete(&key, &seal, &answer, until).await
            }
            None => ledger.abandon(&key).await,
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, "the ledger did not take the message's claim's end");
        }
    }

    /// Opens a message and re-validates it; a refusal is audited and
    /// counted here, and the message left for the dead-letter queue.
    fn open(&self, keys: &QueueKeys, m: &Message<'_>) -> Opened {
        let message_id = m.id.unwrap_or("");
        let opened = match keys.open_sealed(m.body) {
            Err(Rejection::AnotherBuild {
                written_at: Some(at),
            }) if unix_now() - at < KEEP_FOR_NEWER => return Opened::KeepForNewer,
            opened => opened,
        };
        let known = |s: &str| self.config.sources.is_known(s);
        let hosts = &self.config.callback_hosts;
        let reason = match opened
            .clone()
            .and_then(|(msg, seal)| validate(msg, seal, known, hosts, unix_now()))
        {
            Ok(work) => return Opened::Work(work),
            Err(reason) => reason,
        };
        // Fields are quoted only when the MAC proved this function wrote
        // them; an unsealed message's claims would be a false audit line.
        let sealed = match opened {
            Ok((QueueMessage::Track(_) | QueueMessage::Lifecycle(_), _)) => {
                metrics::count(metrics::names::REJECTED);
                tracing::warn!(detail = %reason, message_id, "track message rejected; left for the dead-letter queue");
                return Opened::Refused;
            }
            Ok((QueueMessage::Device(d), _)) => Some(d),
            Err(_) => None,
        };
        self.refuse(m, &reason, sealed.as_ref());
        Opened::Refused
    }

    /// A device message refused: counted, and an audit line `rejected`
    /// whose fields are quoted from `sealed` (only a message whose MAC
    /// verified); the message is left for the dead-letter queue.
    fn refuse(&self, m: &Message<'_>, reason: &dyn Display, sealed: Option<&QueuedDevice>) {
        let message_id = m.id.unwrap_or("");
        metrics::count(metrics::names::REJECTED);
        let field = |f: fn(&QueuedDevice) -> &str| sealed.map(f).unwrap_or("");
        tracing::warn!(
            target: "audit",
            event = "device_outcome",
            source = field(|i| &i.source),
            ticket = field(|i| &i.ticket),
            device = field(|i| &i.device),
            machine_id = "",
            computer_dns_name = "",
            status = "rejected",
            action_id = "",
            detail = %reason,
            dry_run = sealed.is_some_and(|i| i.dry_run),
            source_ip = "",
            webhook_id = field(|i| i.webhook_id.as_deref().unwrap_or("")),
            message_id,
            "queue message rejected; left for the dead-letter queue"
        );
    }

    /// A rolling deploy's rule: a message a newer build wrote (naming a
    /// follow-up this build does not know, say) goes back on the queue with
    /// the longest delay SQS allows, so a newer worker takes it; it is never
    /// sent to the dead-letter queue while it is younger than
    /// `KEEP_FOR_NEWER`. `true` once it is back on the queue.
    async fn keep_for_newer(&self, m: &Message<'_>) -> bool {
        let Some(writer) = &self.queue else {
            return false;
        };
        let delay = std::time::Duration::from_secs(MAX_DELAY_SECONDS);
        let kept = writer.send_delayed(&[m.body.to_string()], delay).await == 0;
        metrics::count(metrics::names::KEPT_FOR_NEWER);
        tracing::info!(
            message_id = m.id.unwrap_or(""),
            kept,
            "a message another build wrote; put back for a worker that reads it"
        );
        kept
    }

    /// The device's status when the message is done with (whatever the
    /// outcome), `None` when SQS should deliver it again.
    async fn offboard_queued(
        &self,
        item: VerifiedDevice,
        secret: &AppSecret,
        deadline: &Deadline,
    ) -> Option<Status> {
        let dry_run = item.queued.dry_run || self.config.dry_run;
        // A tenant the secret no longer serves: the message goes back, and
        // ends in the dead-letter queue, which pages someone.
        let all = crate::domain::tenant::TenantAllow::All;
        let tenant = match self.resolve_tenant(
            secret,
            item.queued.tenant.as_deref(),
            "tenant",
            &all,
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(reason = %e, "a queued device's tenant is not served; the message goes back");
                return None;
            }
        };
        let ports = self.tenant(tenant.as_deref());
        let results = ports
            .offboarder
            .run(
                std::slice::from_ref(&item.device),
                // As the HTTP path's `OffboardRequest::defender_comment`.
                &format!("{}: {}", item.ticket.as_str(), item.comment.as_str()),
                dry_run,
                deadline,
            )
            .await;
        let q = item.queued;
        let origin = Origin::new(&q.source, None, q.webhook_id).in_tenant(tenant);
        let to = FollowUpTargets {
            callback_url: q.callback_url,
            notify: q.notify,
        };
        self.after_run(
            &results,
            item.ticket.as_str(),
            &origin,
            &to,
            dry_run,
            secret,
        )
        .await;
        // Over budget is not a failure of the device: the message comes
        // back after its visibility timeout, when the hour has room again.
        let status = results[0].status;
        (!matches!(status, Status::Failed | Status::BudgetExceeded)).then_some(status)
    }
}

/// Re-validates a message as the HTTP path validates a request, in its
/// order, after the device message's age (`now`, unix seconds). A valid MAC
/// proves who wrote it, not that the writer's checks were the ones this
/// build makes.
fn validate(
    msg: QueueMessage,
    seal: Seal,
    known_source: impl Fn(&str) -> bool,
    hosts: &CallbackHosts,
    now: i64,
) -> Result<Work, Rejection> {
    if let QueueMessage::Device(d) = &msg {
        d.check_age(now)?;
    }
    let (source, ticket) = match &msg {
        QueueMessage::Device(d) => (&d.source, &d.ticket),
        QueueMessage::Track(t) => (&t.source, &t.ticket),
        QueueMessage::Lifecycle(h) => (&h.source, &h.ticket),
    };
    if !known_source(source) {
        return Err(Rejection::UnknownSource);
    }
    let ticket = Ticket::parse("ticket", ticket).map_err(Rejection::Field)?;
    let work = match msg {
        QueueMessage::Device(d) => Work::Device(Box::new(VerifiedDevice {
            comment: Comment::parse("comment", &d.comment).map_err(Rejection::Field)?,
            device: Device::parse("device", &d.device).map_err(Rejection::Field)?,
            ticket,
            queued: d,
            seal,
        })),
        QueueMessage::Track(t)
            if valid_action_id(&t.action_id) && MachineId::parse(&t.machine_id).is_some() =>
        {
            Work::Track(Box::new(t))
        }
        QueueMessage::Track(_) => return Err(Rejection::Malformed),
        QueueMessage::Lifecycle(h) if super::lifecycle::valid_held(&h) => {
            Work::Lifecycle(Box::new(h))
        }
        QueueMessage::Lifecycle(_) => return Err(Rejection::Malformed),
    };
    let (url, notify) = match &work {
        Work::Device(d) => (&d.queued.callback_url, &d.queued.notify),
        Work::Track(t) => (&t.callback_url, &t.notify),
        Work::Lifecycle(_) => (&None, &None),
    };
    if let Some(url) = url {
        callback_url("callback_url", url, hosts).map_err(Rejection::Field)?;
    }
    if notify.as_ref().is_some_and(|n| !n.is_valid()) {
        return Err(Rejection::Malformed);
    }
    Ok(work)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> QueuedDevice {
        QueuedDevice {
            source: "generic".into(),
            ticket: "INC1".into(),
            comment: "retired".into(),
            device: "1e5bc9d7e413ddd7902c2932e418702b84d0cc07".into(),
            dry_run: false,
            webhook_id: Some("msg_1".into()),
            enqueued_at: 1_700_000_000,
            callback_url: None,
            notify: None,
            tenant: None,
        }
    }

    #[test]
    fn validation_is_the_http_paths() {
        let known = |s: &str| s == "generic";
        let hosts = CallbackHosts::parse("");
        let now = item().enqueued_at;
        let validate = |d| {
            validate(
                QueueMessage::Device(d),
                Seal::of(b"mac"),
                known,
                &hosts,
                now,
            )
        };
        assert!(validate(item()).is_ok());
        let cases: Vec<(QueuedDevice, &str)> = vec![
            (
                QueuedDevice {
                    source: "nobody".into(),
                    ..item()
                },
                "source",
            ),
            (
                QueuedDevice {
                    ticket: " ".into(),
                    ..item()
                },
                "ticket",
            ),
            (
                QueuedDevice {
                    comment: "a\u{7}b".into(),
                    ..item()
                },
                "comment",
            ),
            (
                QueuedDevice {
                    device: "two words".into(),
                    ..item()
                },
                "device",
            ),
        ];
        let expired = QueuedDevice {
            enqueued_at: now - MESSAGE_MAX_AGE - 1,
            ..item()
        };
        assert_eq!(validate(expired).unwrap_err(), Rejection::Expired);
        for (bad, what) in cases {
            let e = validate(bad).unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
    }
}
