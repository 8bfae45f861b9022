//! Machine actions and tickets: read an action, cancel a mistaken offboard,
//! list what the ledger holds for a ticket.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::audit::Origin;
use super::{App, Outcome};
use crate::domain::defender::{DefenderError, MachineAction};
use crate::domain::ledger::ActionStatus;
use crate::domain::limits::Deadline;
use crate::domain::model::{Comment, Ticket};
use crate::domain::secret::AppSecret;
use crate::error::ApiError;

/// MachineAction ids are GUIDs; anything else cannot exist.
fn action_ref(action_id: &str) -> Result<&str, ApiError> {
    if action_id.len() > 64
        || !action_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::ActionNotFound(action_id.to_string()));
    }
    Ok(action_id)
}

fn action_json(a: &MachineAction) -> Value {
    json!({
        "action_id": a.id,
        "machine_id": a.machine_id,
        "type": a.action_type,
        "status": a.status,
        "last_update": a.last_update(),
    })
}

fn is_final(a: &MachineAction) -> bool {
    ActionStatus::parse(a.status.as_deref().unwrap_or("")).is_some_and(ActionStatus::is_final)
}

impl App {
    /// `GET /v1/actions/{id}`: the action as Defender holds it.
    pub async fn action(
        &self,
        secret: &AppSecret,
        tenant: Option<&str>,
        action_id: &str,
        deadline: &Deadline,
    ) -> Result<Outcome, ApiError> {
        let action_id = action_ref(action_id)?;
        let defender = self.tenant(tenant).defender.clone();
        defender.ready(secret, deadline).await?;
        let a = read_action(&*defender, action_id, deadline).await?;
        Ok(Outcome::ok(&action_json(&a)))
    }

    /// `POST /v1/actions/{id}/cancel`: undoes a mistaken offboard while
    /// Defender has not carried it out. The action is read first: Defender
    /// documents no error code for cancelling a final action, so finality
    /// is judged by its status.
    pub async fn cancel(
        &self,
        secret: &AppSecret,
        action_id: &str,
        comment: &Comment,
        origin: &Origin,
        deadline: &Deadline,
    ) -> Result<Outcome, ApiError> {
        let action_id = action_ref(action_id)?;
        let defender = self.tenant(origin.tenant.as_deref()).defender.clone();
        defender.ready(secret, deadline).await?;
        let before = read_action(&*defender, action_id, deadline).await?;
        let not_cancellable = |a: &MachineAction| ApiError::NotCancellable {
            action_id: action_id.to_string(),
            status: a.status.clone().unwrap_or_default(),
        };
        // Offboards only: an isolation or a live response the SOC started
        // is never undone through this route.
        if before.action_type.as_deref() != Some("Offboard") {
            return Err(ApiError::NotAnOffboard {
                action_id: action_id.to_string(),
                action_type: before.action_type.clone().unwrap_or_default(),
            });
        }
        // With the ledger, only an offboard this deployment requested.
        if !self.requested_here(&before).await? {
            return Err(ApiError::ActionNotFound(action_id.to_string()));
        }
        if is_final(&before) {
            return Err(not_cancellable(&before));
        }
        let a = match defender
            .cancel_action(action_id, comment.as_str(), deadline)
            .await
        {
            Ok(a) => a,
            // It may have become final in between: say so if it did.
            Err(refused @ DefenderError::Refused { .. }) => {
                let now = read_action(&*defender, action_id, deadline).await?;
                if is_final(&now) {
                    return Err(not_cancellable(&now));
                }
                return Err(ApiError::Defender(refused));
            }
            Err(DefenderError::NotFound) => {
                return Err(ApiError::ActionNotFound(action_id.to_string()));
            }
            Err(e) => return Err(ApiError::Defender(e)),
        };
        tracing::info!(
            target: "audit",
            event = "action_cancelled",
            source = %origin.source,
            action_id = %a.id,
            machine_id = a.machine_id.as_deref().unwrap_or(""),
            status = a.status.as_deref().unwrap_or(""),
            comment = comment.as_str(),
            source_ip = origin.source_ip.as_deref().unwrap_or(""),
            webhook_id = origin.webhook_id(),
            "machine action cancelled"
        );
        self.record_cancel(&a).await;
        Ok(Outcome::ok(&action_json(&a)))
    }

    /// Whether this deployment requested the action: the ledger holds a
    /// device record of it. Without the ledger there is nothing to ask.
    async fn requested_here(&self, a: &MachineAction) -> Result<bool, ApiError> {
        let Some(records) = &self.records else {
            return Ok(true);
        };
        let Some(machine_id) = a.machine_id.as_deref() else {
            return Ok(false);
        };
        let held = records.machine_records(machine_id).await?;
        Ok(held.iter().any(|r| r.action_id == a.id))
    }

    /// The ledger's records of a cancelled action follow it. Best effort:
    /// the cancel has happened and is audited.
    async fn record_cancel(&self, a: &MachineAction) {
        let Some(ledger) = &self.records else {
            return;
        };
        let status = a
            .status
            .as_deref()
            .and_then(ActionStatus::parse)
            .unwrap_or(ActionStatus::Cancelled);
        let Some(machine_id) = a.machine_id.as_deref() else {
            return;
        };
        let records = match ledger.machine_records(machine_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(action_id = %a.id, error = %e, "cancel not recorded in the ledger");
                return;
            }
        };
        for rec in records.iter().filter(|r| r.action_id == a.id) {
            if let Err(e) = ledger
                .update_action_status(&rec.key(), status, SystemTime::now())
                .await
            {
                tracing::warn!(action_id = %a.id, error = %e, "cancel not recorded in the ledger");
            }
        }
    }

    /// Whether `GET /v1/tickets/{ticket}` exists here: it needs the ledger.
    pub fn has_tickets(&self) -> bool {
        self.records.is_some()
    }

    /// `GET /v1/tickets/{ticket}`: every device outcome the ledger holds
    /// for a ticket (one Query). A ticket with none answers an empty list.
    pub async fn ticket(&self, ticket: &str, tenant: Option<&str>) -> Result<Outcome, ApiError> {
        let ledger = self
            .records
            .as_ref()
            .ok_or_else(|| ApiError::NoRoute(format!("/v1/tickets/{ticket}")))?;
        let ticket = Ticket::parse("ticket", ticket)?;
        let mut devices = ledger.ticket_records(ticket.as_str()).await?;
        // One tenant's ticket never shows another's devices.
        devices.retain(|r| r.tenant.as_deref() == tenant);
        Ok(Outcome::ok(
            &json!({"ticket": ticket.as_str(), "devices": devices}),
        ))
    }
}

/// Defender's `GET /api/machineactions/{id}`, a 404 as the route's.
async fn read_action(
    defender: &dyn crate::domain::defender::Defender,
    action_id: &str,
    deadline: &Deadline,
) -> Result<MachineAction, ApiError> {
    match defender.get_action(action_id, deadline).await {
        Ok(a) => Ok(a),
        Err(DefenderError::NotFound) => Err(ApiError::ActionNotFound(action_id.to_string())),
        Err(e) => Err(ApiError::Defender(e)),
    }
}
