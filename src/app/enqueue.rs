//! `"mode": "queue"`: one sealed message per distinct device for the
//! worker, 202 with what was queued. Messages this instance put on the
//! queue lately are not sent again, so a retry of a partly queued request
//! adds only what is missing.

use serde_json::{Value, json};

use super::audit::Origin;
use super::{App, Outcome};
use crate::domain::follow_up::FollowUpTargets;
use crate::domain::limits::Deadline;
use crate::domain::model::{Device, OffboardRequest};
use crate::domain::queue::{QueueKeys, QueuedDevice, WorkHash};
use crate::domain::secret::{AppSecret, CredentialError};
use crate::error::ApiError;
use crate::ops::metrics;
use crate::support::time::unix_now;

impl App {
    pub(crate) async fn enqueue(
        &self,
        request: OffboardRequest,
        secret: &AppSecret,
        origin: &Origin,
        to: &FollowUpTargets,
        dry_run: bool,
        deadline: &Deadline,
    ) -> Result<Outcome, ApiError> {
        let writer = self.queue.as_ref().ok_or(ApiError::QueueNotConfigured)?;
        let mut seen = std::collections::HashSet::new();
        let devices: Vec<&Device> = request
            .devices
            .iter()
            .filter(|d| seen.insert(d.target.key()))
            .collect();
        if devices.len() > self.config.max_queued_devices {
            return Err(ApiError::TooManyDevices {
                given: devices.len(),
                max: self.config.max_queued_devices,
                hint: " in queue mode",
            });
        }
        let keys = QueueKeys::from_secret(secret)
            .map_err(|e| CredentialError::BadSecret(e.to_string()))?;
        let enqueued_at = unix_now();
        let outgoing: Vec<(WorkHash, String)> = devices
            .iter()
            .map(|d| {
                let item = QueuedDevice {
                    source: origin.source.clone(),
                    ticket: request.ticket.as_str().to_string(),
                    comment: request.comment.as_str().to_string(),
                    device: d.given.clone(),
                    dry_run,
                    webhook_id: origin.webhook_id.clone(),
                    enqueued_at,
                    callback_url: to.callback_url.clone(),
                    notify: to.notify.clone(),
                    tenant: origin.tenant.clone(),
                };
                (item.work_hash(&d.target.key()), item)
            })
            .filter(|(hash, _)| !writer.recent.contains(hash))
            .map(|(hash, item)| (hash, keys.seal(&item)))
            .collect();
        let already = devices.len() - outgoing.len();
        let sent = writer.send(&outgoing, deadline).await;
        metrics::add(
            metrics::names::QUEUED,
            sent.as_ref().map_or_else(|(n, _)| *n, |n| *n) as f64,
        );
        if let Err((n, shortfall)) = sent {
            tracing::warn!(
                source = %origin.source,
                ticket = request.ticket.as_str(),
                queued = n + already,
                of = devices.len(),
                reason = %shortfall,
                "not every device was queued; a retry queues the rest"
            );
            return Err(ApiError::QueueUnavailable(shortfall));
        }
        tracing::info!(
            target: "audit",
            event = "devices_queued",
            source = %origin.source,
            ticket = request.ticket.as_str(),
            count = devices.len(),
            already_queued = already,
            webhook_id = origin.webhook_id(),
            "devices queued"
        );
        let queued: Vec<Value> = devices.iter().map(|d| json!({"device": d.given})).collect();
        Ok(Outcome::accepted(&json!({
            "ticket": request.ticket.as_str(),
            "dry_run": dry_run,
            "mode": "queue",
            "queued": queued,
        })))
    }
}
