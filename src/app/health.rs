//! The health check: the secret read afresh, a fresh token, its
//! permissions and one list call, for a Scheduled Event or
//! `GET /v1/health`. It offboards nothing and spends no budget.

use serde_json::Value;

use super::App;
use crate::domain::health::{self, Check, Step};
use crate::domain::limits::Deadline;
use crate::domain::tenant::TenantAllow;
use crate::ops::metrics;

/// The version the answer (and the `User-Agent`) carries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl App {
    /// Runs every check and answers `{"status", "version", "checks"}`,
    /// for each tenant `allow` lets the caller see (`only`: that one);
    /// each check's result also goes out as the `HealthCheckFailed`
    /// metric, and each failure as a warning naming the check.
    pub async fn health(
        &self,
        allow: &TenantAllow,
        only: Option<&str>,
        deadline: &Deadline,
    ) -> Value {
        let checks = self.checks(allow, only, deadline).await;
        for c in &checks {
            metrics::emit_check(
                &self.config.metrics_namespace,
                c.name.as_str(),
                !c.ok,
                c.tenant.as_deref(),
            );
            if !c.ok {
                tracing::warn!(check = c.name.as_str(), tenant = c.tenant.as_deref().unwrap_or(""), detail = %c.detail, "health check failed");
            }
        }
        health::answer(&checks, VERSION)
    }

    async fn checks(
        &self,
        allow: &TenantAllow,
        only: Option<&str>,
        deadline: &Deadline,
    ) -> Vec<Check> {
        let secret = match self.secrets.fresh().await {
            Ok(s) => s,
            Err(e) => return health::checks(Step::Failed(e.to_string()), None),
        };
        let read = || Step::Passed("read and well formed".into());
        let Some(tenants) = &secret.tenants else {
            let probe = self
                .defender
                .probe(&secret, self.config.dry_run, deadline)
                .await;
            return health::checks(read(), Some(probe));
        };
        // Each tenant on its own: one failing never hides another.
        let names: Vec<&String> = tenants
            .keys()
            .filter(|t| allow.allows(t) && only.is_none_or(|o| o == t.as_str()))
            .collect();
        let probes = names.iter().map(|name| async {
            let mut checks = match &tenants[name.as_str()] {
                Err(e) => health::checks(Step::Failed(e.clone()), None),
                Ok(_) => {
                    let defender = self.tenant(Some(name.as_str())).defender.clone();
                    let probe = defender.probe(&secret, self.config.dry_run, deadline).await;
                    health::checks(read(), Some(probe))
                }
            };
            for c in &mut checks {
                c.tenant = Some(name.to_string());
            }
            checks
        });
        futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}
