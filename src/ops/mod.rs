//! Operations: logs, metrics and the audit trail, apart from the work.

pub mod logging;
pub mod metrics;
