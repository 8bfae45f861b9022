//! One delivery, whichever door it came through: replay protection, then
//! the request (a generic body, or a source's mapping of its payload), then
//! each device's outcome, or the queue.

use serde_json::{Value, json};

use super::audit::{self, Origin};
use super::idempotency::{Claim, DeliveryKey};
use super::{App, Outcome};
use crate::domain::follow_up::FollowUpTargets;
use crate::domain::ledger::{ActionStatus, DeviceRecord, LedgerError, RecordedOutcome};
use crate::domain::limits::Deadline;
use crate::domain::model::{Mode, OffboardRequest};
use crate::domain::offboard::{DeviceResult, Status};
use crate::domain::queue::QueueKeys;
use crate::domain::secret::{AppSecret, CredentialError};
use crate::error::ApiError;
use crate::intake::generic;
use crate::intake::sources::{Mapped, SourceDef};
use crate::ops::metrics;

/// What an admitted delivery carries.
pub enum Content<'a> {
    /// A generic body as sent over HTTP: strict JSON, then the generic
    /// body's rules; its errors are 400 and 422.
    GenericText(&'a [u8]),
    /// A generic body already read (a direct invocation, EventBridge's
    /// `detail`).
    Generic(&'a Value),
    /// A source's payload: its definition maps it, and what it cannot map
    /// is ignored (202), since that sender cannot fix its content.
    Mapped { def: &'a SourceDef, doc: &'a Value },
    /// A request the use case made itself (an Auto Scaling lifecycle
    /// event's instance), with nothing to follow up but the ledger.
    Request(OffboardRequest),
}

/// A delivery whose sender is admitted: who, its replay key, what it says.
pub struct Delivery<'a> {
    pub origin: Origin,
    pub key: DeliveryKey,
    pub content: Content<'a>,
}

/// A source's delivery, once its content is judged.
pub(crate) enum Intake {
    Act(OffboardRequest),
    Ignored(String),
}

fn ignored(reason: String) -> Outcome {
    Outcome::accepted(&json!({"status": "ignored", "reason": reason}))
}

impl App {
    /// Runs a delivery once (see `idempotency`) and answers it.
    pub async fn deliver(
        &self,
        d: Delivery<'_>,
        secret: &AppSecret,
        deadline: &Deadline,
    ) -> Result<Outcome, ApiError> {
        let Delivery {
            origin,
            key,
            content,
        } = d;
        let origin = &origin;
        self.once(origin, &key, deadline, |claim| async move {
            let generic = |v: &Value| -> Result<_, ApiError> {
                let body = generic::parse_generic_body(v, &self.config.callback_hosts)?;
                // A callback is a promise to follow the offboard to its end:
                // refused where nothing can (no ledger or no queue).
                if body.callback_url.is_some() && (self.records.is_none() || self.queue.is_none()) {
                    return Err(ApiError::TrackingUnavailable);
                }
                let to = FollowUpTargets {
                    callback_url: body.callback_url.map(|u| u.as_str().to_string()),
                    notify: None,
                };
                Ok((body.request, to))
            };
            let mapped = matches!(content, Content::Mapped { .. });
            let (request, to) = match content {
                Content::GenericText(bytes) => {
                    let value = generic::strict_json(bytes)?;
                    generic(&value)?
                }
                Content::Generic(value) => generic(value)?,
                Content::Request(request) => (request, FollowUpTargets::default()),
                Content::Mapped { def, doc } => match self.admit(def, doc, origin) {
                    Intake::Act(request) => {
                        let notify = def
                            .notify
                            .as_ref()
                            .and_then(|n| n.target(doc, request.ticket.as_str()));
                        let to = FollowUpTargets {
                            callback_url: None,
                            notify,
                        };
                        (request, to)
                    }
                    Intake::Ignored(reason) => return Ok(ignored(reason)),
                },
            };
            // The tenant: the body's (generic), the source's (mapped); a
            // generic caller only where its source allows it.
            let allow = match origin.source.as_str() {
                crate::intake::sources::GENERIC => self.config.sources.generic_tenants().clone(),
                _ => crate::domain::tenant::TenantAllow::All,
            };
            let tenant =
                match self.resolve_tenant(secret, request.tenant.as_deref(), "tenant", &allow) {
                    Ok(t) => t,
                    // A webhook source's sender cannot fix its content.
                    Err(e) if mapped => {
                        tracing::warn!(source = %origin.source, reason = %e, "delivery ignored: its tenant is not served");
                        return Ok(ignored(e.to_string()));
                    }
                    Err(e) => return Err(e),
                };
            let origin = origin.in_tenant(tenant);
            self.execute(request, secret, &origin, &to, claim, deadline)
                .await
        })
        .await
    }

    /// What a source's delivery becomes: a request to run, or a reason to
    /// ignore it, counted and logged here so every ignored path is seen.
    pub(crate) fn admit(&self, def: &SourceDef, doc: &Value, origin: &Origin) -> Intake {
        let webhook_id = origin.webhook_id();
        let unmapped = |reason: String| {
            metrics::count(metrics::names::UNMAPPED);
            tracing::warn!(source = %def.name, webhook_id, reason = %reason, "delivery unmapped; nothing called");
            Intake::Ignored(reason)
        };
        let mut request = match def.map(doc) {
            Ok(Mapped::Act(r)) => r,
            Ok(Mapped::Ignored { reason }) => {
                metrics::count(metrics::names::IGNORED);
                tracing::info!(source = %def.name, webhook_id, reason = %reason, "event ignored");
                return Intake::Ignored(reason);
            }
            Err(e) => return unmapped(format!("unmapped: {e}")),
        };
        let given = request.devices.len();
        if given > self.config.max_devices {
            if self.queue.is_none() {
                return unmapped(format!(
                    "unmapped: {given} devices are more than MAX_DEVICES ({}) allows in one request, and no queue is configured (QUEUE_URL)",
                    self.config.max_devices
                ));
            }
            if given > self.config.max_queued_devices {
                return unmapped(format!(
                    "unmapped: {given} devices are more than MAX_QUEUED_DEVICES ({}) allows in one request",
                    self.config.max_queued_devices
                ));
            }
            request.mode = Mode::Queue;
        }
        Intake::Act(request)
    }

    /// A request, every device through the domain (or onto the queue).
    async fn execute(
        &self,
        request: OffboardRequest,
        secret: &AppSecret,
        origin: &Origin,
        to: &FollowUpTargets,
        claim: Claim,
        deadline: &Deadline,
    ) -> Result<Outcome, ApiError> {
        let dry_run = self.config.dry_run || request.dry_run;
        if !dry_run && claim == Claim::LedgerDown {
            return Err(ApiError::Ledger(LedgerError::Unavailable(
                "the delivery could not be claimed".into(),
            )));
        }
        if request.mode == Mode::Queue {
            return self
                .enqueue(request, secret, origin, to, dry_run, deadline)
                .await;
        }
        if request.devices.len() > self.config.max_devices {
            return Err(ApiError::TooManyDevices {
                given: request.devices.len(),
                max: self.config.max_devices,
                hint: " (use \"mode\": \"queue\" for more)",
            });
        }
        // With tracking on, each action requested is followed through sealed
        // messages: without the queue key, nothing is sent untracked.
        if !dry_run && self.records.is_some() && self.queue.is_some() {
            QueueKeys::from_secret(secret)
                .map_err(|e| CredentialError::BadSecret(e.to_string()))?;
        }
        // A token problem is the operator's, not a device's: surface it
        // once for the whole request.
        let ports = self.tenant(origin.tenant.as_deref());
        ports.defender.ready(secret, deadline).await?;
        // So is a missing admin consent: one clear refusal, not one 403
        // per device. A dry run needs no offboard permission and goes on.
        let missing = ports.defender.missing_permissions();
        if !dry_run && !missing.is_empty() {
            return Err(ApiError::MissingPermission(missing));
        }
        let results = ports
            .offboarder
            .run(
                &request.devices,
                &request.defender_comment(),
                dry_run,
                deadline,
            )
            .await;
        self.after_run(
            &results,
            request.ticket.as_str(),
            origin,
            to,
            dry_run,
            secret,
        )
        .await;
        let retry_after = results
            .iter()
            .filter(|r| r.status == Status::Failed)
            .filter_map(|r| r.retry_after)
            .max();
        let body = json!({
            "ticket": request.ticket.as_str(),
            "dry_run": dry_run,
            "results": results,
        });
        Ok(match retry_after {
            Some(ra) => Outcome {
                retry_after: Some(ra),
                ..Outcome::json(503, &body)
            },
            None => Outcome::ok(&body),
        })
    }

    /// What follows every run of the domain, from a request or the queue:
    /// an audit line and a metric per device, the ledger's records, and the
    /// tracking of each action requested.
    pub(crate) async fn after_run(
        &self,
        results: &[DeviceResult],
        ticket: &str,
        origin: &Origin,
        to: &FollowUpTargets,
        dry_run: bool,
        secret: &AppSecret,
    ) {
        for r in results {
            audit::device_outcome(r, ticket, origin, dry_run);
            metrics::count(r.status.as_str());
            if r.status == Status::BudgetExceeded {
                metrics::count(metrics::names::BUDGET_EXCEEDED);
            }
        }
        self.record_outcomes(results, ticket, origin).await;
        self.track_requested(results, ticket, origin, to, secret)
            .await;
    }

    /// Writes the outcomes that started (or found) an offboard action, so
    /// `GET /v1/tickets/{ticket}` can list them. A write that fails is
    /// logged: the offboard itself has happened and is audited.
    async fn record_outcomes(&self, results: &[DeviceResult], ticket: &str, origin: &Origin) {
        let Some(ledger) = &self.records else {
            return;
        };
        let now = std::time::SystemTime::now();
        let records: Vec<DeviceRecord> = results
            .iter()
            .filter_map(|r| {
                let status = match r.status {
                    Status::OffboardRequested => RecordedOutcome::OffboardRequested,
                    Status::AlreadyPending => RecordedOutcome::AlreadyPending,
                    _ => return None,
                };
                Some(DeviceRecord {
                    ticket: ticket.to_string(),
                    machine_id: r.machine_id.as_ref()?.as_str().to_string(),
                    device: r.device.clone(),
                    status,
                    action_id: r.action_id.clone().unwrap_or_default(),
                    action_status: ActionStatus::Pending,
                    requested_at: now,
                    updated_at: now,
                    source: origin.source.clone(),
                    tenant: origin.tenant.clone(),
                })
            })
            .collect();
        let writes = records.iter().map(|rec| ledger.record_device(rec));
        for (rec, outcome) in records
            .iter()
            .zip(futures_util::future::join_all(writes).await)
        {
            if let Err(e) = outcome {
                tracing::warn!(ticket, machine_id = %rec.machine_id, error = %e, "device record not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::sources::Sources;

    fn app() -> App {
        let env = [
            ("SECRET_ID", "unused"),
            ("MDE_API_URL", "http://127.0.0.1:9"),
            ("MDE_LOGIN_URL", "http://127.0.0.1:9"),
        ];
        let config = crate::config::Config::from_lookup(|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        crate::init::Wiring::new(
            config,
            std::sync::Arc::new(crate::domain::secret::StaticSecret("{}".into())),
        )
        .build()
    }

    /// `Unmapped` is the only signal an operator gets of a mapping that
    /// no longer matches what the sender sends, since the answer is 202.
    #[tokio::test]
    async fn unmapped_content_is_counted_apart_from_ignored_events() {
        let app = app();
        let sources = Sources::default();
        let jira = sources.get("jira").unwrap();
        let origin = Origin::default();
        let done = json!({"webhookEvent": "jira:issue_updated",
            "changelog": {"items": [{"field": "status"}]},
            "issue": {"key": "IT-1", "fields": {"status": {"statusCategory": {"key": "done"}}}}});
        let mut no_device = done.clone();
        no_device["issue"]["fields"]["customfield_10071"] = json!(null);
        let (admitted, m) = metrics::scope(async { app.admit(jira, &no_device, &origin) }).await;
        let Intake::Ignored(reason) = admitted else {
            panic!("acted")
        };
        assert!(
            reason.contains("/issue/fields/customfield_10071"),
            "{reason}"
        );
        assert_eq!(
            (
                m.get(metrics::names::UNMAPPED),
                m.get(metrics::names::IGNORED)
            ),
            (1.0, 0.0)
        );

        let mut in_progress = done.clone();
        in_progress["issue"]["fields"]["status"]["statusCategory"]["key"] = json!("indeterminate");
        let (_, m) = metrics::scope(async { app.admit(jira, &in_progress, &origin) }).await;
        assert_eq!(
            (
                m.get(metrics::names::UNMAPPED),
                m.get(metrics::names::IGNORED)
            ),
            (0.0, 1.0)
        );

        let mut too_many = done;
        let names: Vec<String> = (0..26).map(|i| format!("pc-{i}")).collect();
        too_many["issue"]["fields"]["customfield_10071"] = json!(names);
        let (admitted, m) = metrics::scope(async { app.admit(jira, &too_many, &origin) }).await;
        let Intake::Ignored(reason) = admitted else {
            panic!("acted without a queue")
        };
        assert!(reason.contains("MAX_DEVICES (25)"), "{reason}");
        assert_eq!(m.get(metrics::names::UNMAPPED), 1.0);
    }
}
