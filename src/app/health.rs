//! The health check: the secret read afresh, a fresh token, its
//! permissions and one list call, for a Scheduled Event or
//! `GET /v1/health`. It offboards nothing and spends no budget.

use serde_json::Value;

use super::App;
use crate::domain::health::{self, Check, Step};
use crate::domain::limits::Deadline;
use crate::ops::metrics;

/// The version the answer (and the `User-Agent`) carries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl App {
    /// Runs every check and answers `{"status", "version", "checks"}`;
    /// each check's result also goes out as the `HealthCheckFailed`
    /// metric, and each failure as a warning naming the check.
    pub async fn health(&self, deadline: &Deadline) -> Value {
        let checks = self.checks(deadline).await;
        for c in &checks {
            metrics::emit_check(
                &self.config.metrics_namespace,
                c.name.as_str(),
                !c.ok,
                c.tenant.as_deref(),
            );
            if !c.ok {
                tracing::warn!(check = c.name.as_str(), detail = %c.detail, "health check failed");
            }
        }
        health::answer(&checks, VERSION)
    }

    async fn checks(&self, deadline: &Deadline) -> Vec<Check> {
        let secret = match self.secrets.fresh().await {
            Ok(s) => s,
            Err(e) => return health::checks(Step::Failed(e.to_string()), None),
        };
        let probe = self
            .defender
            .probe(&secret, self.config.dry_run, deadline)
            .await;
        health::checks(Step::Passed("read and well formed".into()), Some(probe))
    }
}
