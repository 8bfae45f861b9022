//! The audit trail: one JSON line per device outcome, with the same keys
//! every time (target `audit`).

use crate::domain::offboard::DeviceResult;
use crate::ingest::Caller;
use crate::ingest::input::OffboardRequest;

/// One audit line per device outcome, the same keys every time.
pub(crate) fn audit(r: &DeviceResult, request: &OffboardRequest, caller: &Caller, dry_run: bool) {
    audit_line(r, request.ticket.as_str(), caller, dry_run);
}

pub(crate) fn audit_line(r: &DeviceResult, ticket: &str, caller: &Caller, dry_run: bool) {
    tracing::info!(
        target: "audit",
        event = "device_outcome",
        source = %caller.source,
        ticket,
        device = %r.device,
        machine_id = r.machine_id.as_ref().map(|m| m.as_str()).unwrap_or(""),
        computer_dns_name = r.computer_dns_name.as_deref().unwrap_or(""),
        status = r.status.as_str(),
        action_id = r.action_id.as_deref().unwrap_or(""),
        detail = r.detail.as_deref().unwrap_or(""),
        dry_run,
        source_ip = caller.source_ip.as_deref().unwrap_or(""),
        webhook_id = caller.webhook_id.as_deref().unwrap_or(""),
        "device outcome"
    );
}
