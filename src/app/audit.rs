//! Who a delivery came from, and the audit trail: one JSON line per device
//! outcome (target `audit`), with the same keys every time.

use crate::domain::offboard::DeviceResult;

/// Who sent a delivery, for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub source: String,
    pub source_ip: Option<String>,
    pub webhook_id: Option<String>,
    /// The tenant the delivery acts in (with the secret's `tenants`).
    pub tenant: Option<String>,
}

impl Origin {
    pub fn new(source: &str, source_ip: Option<String>, webhook_id: Option<String>) -> Self {
        Self {
            source: source.to_string(),
            source_ip,
            webhook_id,
            tenant: None,
        }
    }

    /// The same caller, acting in `tenant`.
    pub fn in_tenant(&self, tenant: Option<String>) -> Self {
        Self {
            tenant,
            ..self.clone()
        }
    }

    pub fn webhook_id(&self) -> &str {
        self.webhook_id.as_deref().unwrap_or("")
    }
}

/// One audit line per device outcome, the same keys every time.
pub fn device_outcome(r: &DeviceResult, ticket: &str, origin: &Origin, dry_run: bool) {
    tracing::info!(
        target: "audit",
        event = "device_outcome",
        source = %origin.source,
        ticket,
        device = %r.device,
        machine_id = r.machine_id.as_ref().map(|m| m.as_str()).unwrap_or(""),
        computer_dns_name = r.computer_dns_name.as_deref().unwrap_or(""),
        status = r.status.as_str(),
        action_id = r.action_id.as_deref().unwrap_or(""),
        detail = r.detail.as_deref().unwrap_or(""),
        dry_run,
        source_ip = origin.source_ip.as_deref().unwrap_or(""),
        webhook_id = origin.webhook_id(),
        tenant = origin.tenant.as_deref().unwrap_or(""),
        "device outcome"
    );
}
