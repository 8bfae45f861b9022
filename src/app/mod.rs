//! The application core: the use cases every door shares, over ports.
//!
//! An edge (`inbound`) turns an event into a call of one use case and its
//! answer back into what Lambda expects; nothing here knows HTTP or an
//! adapter. The use cases:
//! - `offboarding`: a delivery (generic body or a source's mapping) through
//!   replay protection to the devices' outcomes, or the queue (`enqueue`);
//! - `work`: one queued message (a device, or a tracking check);
//! - `tracking`: an action followed to its end, and its follow-ups;
//! - `actions`: read and cancel an action, list a ticket's devices.
//!
//! Everything `App` holds is built once per instance by the composition
//! root (`init`) and shared by warm invocations.

pub mod actions;
pub mod audit;
pub mod enqueue;
pub mod health;
pub mod idempotency;
pub mod lifecycle;
pub mod offboarding;
pub mod tracking;
pub mod work;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;
use crate::domain::defender::Defender;
use crate::domain::follow_up::FollowUp;
use crate::domain::ledger::{DeliveryClaims, DeviceRecords, OffboardBudget};
use crate::domain::offboard::{Budget, Offboarder};
use crate::domain::queue::{Queue, QueueWriter};
use crate::domain::secret::{AppSecret, SecretCache};
use crate::domain::signing_keys::{SigningKeyCache, SigningKeySource};
use crate::error::ApiError;
use crate::intake::auth::{Admitted, AuthDef, AuthError, KeyRing, Presented};
use idempotency::ReplayCache;

/// Builds a tenant's Defender: its own token and limits. Without one,
/// every tenant shares the app's Defender (an in-memory one in tests).
pub type TenantDefenders = Arc<dyn Fn(&str) -> Arc<dyn Defender> + Send + Sync>;

/// One tenant's Defender and the domain over it.
pub(crate) struct TenantPorts {
    pub defender: Arc<dyn Defender>,
    pub offboarder: Offboarder,
}

/// The ports the core runs over, wired by `init` (or a test).
pub struct Ports {
    pub secrets: Arc<SecretCache>,
    pub defender: Arc<dyn Defender>,
    /// Where a final outcome goes besides the ledger and the audit line
    /// (callbacks, ticket write-backs), each asked in turn.
    pub follow_ups: Vec<Arc<dyn FollowUp>>,
    /// Entra ID's published keys, for `entra-jwt` sources.
    pub signing_keys: Arc<dyn SigningKeySource>,
    /// Auto Scaling, to let a held terminating instance go.
    pub lifecycle: Arc<dyn crate::domain::lifecycle::LifecycleActions>,
}

pub struct App {
    pub(crate) config: Config,
    pub(crate) secrets: Arc<SecretCache>,
    pub(crate) defender: Arc<dyn Defender>,
    pub(crate) offboarder: Offboarder,
    pub(crate) queue: Option<QueueWriter>,
    pub(crate) claims: Option<Arc<dyn DeliveryClaims>>,
    pub(crate) records: Option<Arc<dyn DeviceRecords>>,
    pub(crate) replay: ReplayCache,
    pub(crate) tracker: tracking::Tracker,
    pub(crate) follow_ups: Vec<Arc<dyn FollowUp>>,
    pub(crate) signing_keys: SigningKeyCache,
    tenant_defenders: Option<TenantDefenders>,
    /// Each tenant's ports, made on first use and kept by the instance.
    tenants: std::sync::Mutex<std::collections::HashMap<String, Arc<TenantPorts>>>,
    pub(crate) lifecycle: Arc<dyn crate::domain::lifecycle::LifecycleActions>,
    /// Until the first invocation: for the `cold_start` log key.
    pub cold: AtomicBool,
}

/// What a use case answers: the contract's status (200, 202, or 503 with
/// `retry_after`) and the JSON text. The edge renders it as an HTTP
/// response or as the invocation's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<Duration>,
    /// Answered again from memory or the ledger (`x-mde-replay`).
    pub replayed: bool,
}

impl Outcome {
    pub fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            body: body.to_string(),
            retry_after: None,
            replayed: false,
        }
    }

    pub fn ok(body: &Value) -> Self {
        Self::json(200, body)
    }

    pub fn accepted(body: &Value) -> Self {
        Self::json(202, body)
    }
}

impl App {
    pub fn new(config: Config, ports: Ports) -> Self {
        let tracker = tracking::Tracker::new(config.rate_per_minute);
        let offboarder = Offboarder::new(ports.defender.clone(), config.protected_tags.clone())
            .with_platforms(config.supported_platforms)
            .with_host_names(config.host_names);
        Self {
            config,
            secrets: ports.secrets,
            defender: ports.defender,
            offboarder,
            queue: None,
            claims: None,
            records: None,
            replay: ReplayCache::default(),
            tracker,
            follow_ups: ports.follow_ups,
            signing_keys: SigningKeyCache::new(ports.signing_keys),
            tenant_defenders: None,
            tenants: Default::default(),
            lifecycle: ports.lifecycle,
            cold: AtomicBool::new(true),
        }
    }

    /// Each tenant gets its own Defender from `make` (its own token and
    /// limits); without, they share the app's.
    pub fn with_tenant_defenders(mut self, make: TenantDefenders) -> Self {
        self.tenant_defenders = Some(make);
        self.tenants = Default::default();
        self
    }

    /// Enables `"mode": "queue"` with this queue.
    pub fn with_queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Some(QueueWriter::new(queue));
        self
    }

    /// Enables the durable ledger: idempotency across instances, device
    /// records, and the hourly budget when `MAX_OFFBOARDS_PER_HOUR` is set.
    pub fn with_ledger<L>(mut self, ledger: Arc<L>) -> Self
    where
        L: DeliveryClaims + DeviceRecords + OffboardBudget + 'static,
    {
        let budget = self.config.max_offboards_per_hour.map(|per_hour| Budget {
            ledger: ledger.clone(),
            per_hour,
            scope: String::new(),
        });
        // Ports made before carry no budget: made again on first use.
        self.tenants = Default::default();
        self.offboarder = self.offboarder.with_budget(budget);
        self.claims = Some(ledger.clone());
        self.records = Some(ledger);
        self
    }

    /// The ports of `tenant` (the deployment's own without tenants): each
    /// tenant has its own Defender (token, limits) and budget, made once
    /// per instance.
    pub(crate) fn tenant(&self, tenant: Option<&str>) -> Arc<TenantPorts> {
        // The deployment's own ports sit under "" (no tenant name is
        // empty): made once, like a tenant's, not cloned per request.
        let key = tenant.unwrap_or("");
        let mut map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ports) = map.get(key) {
            return ports.clone();
        }
        let ports = Arc::new(match tenant {
            None => TenantPorts {
                defender: self.defender.clone(),
                offboarder: self.offboarder.clone(),
            },
            Some(name) => {
                let defender = match &self.tenant_defenders {
                    Some(make) => make(name),
                    None => self.defender.clone(),
                };
                TenantPorts {
                    offboarder: self.offboarder.for_tenant(defender.clone(), name),
                    defender,
                }
            }
        });
        map.insert(key.to_string(), ports.clone());
        ports
    }

    /// The tenant a request acts in, as `tenant::resolve` says, refused
    /// as the contract says (422 `unknown_tenant`, 403
    /// `tenant_not_allowed`). The metrics of the request carry it.
    pub(crate) fn resolve_tenant(
        &self,
        secret: &AppSecret,
        named: Option<&str>,
        field: &str,
        allow: &crate::domain::tenant::TenantAllow,
    ) -> Result<Option<String>, ApiError> {
        let t = crate::domain::tenant::resolve(secret.tenants.as_ref(), named, field, allow)
            .map_err(ApiError::Tenant)?;
        if let Some(name) = &t {
            crate::ops::metrics::tenant(name);
        }
        Ok(t)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn secrets(&self) -> &SecretCache {
        &self.secrets
    }

    /// Checks a request as `auth` says. A request without the headers its
    /// schemes read is refused before the secret is fetched, so unsigned
    /// floods cost no Secrets Manager call.
    pub async fn authenticate(
        &self,
        presented: &Presented<'_>,
        auth: &AuthDef,
    ) -> Result<(Arc<AppSecret>, Admitted), ApiError> {
        auth.precheck(presented)?;
        // The caller is not authenticated yet: what Secrets Manager said
        // stays in the log, the caller learns only the kind of problem.
        let secret = self.secrets.get().await.map_err(|e| {
            tracing::warn!(error = %e, "the secret could not be used to check a request");
            e.for_an_unknown_caller()
        })?;
        // `entra-jwt`: the tenant's signing keys, fetched (or taken from
        // the cache) only for a token that could be accepted.
        let mut ring = KeyRing::default();
        for (tenant, kid) in auth.keys_wanted(presented, &secret, &self.config.login_url) {
            if let Ok(keys) = self.signing_keys.keys_for(&tenant, &kid).await {
                ring.insert(tenant, keys);
            }
        }
        let admitted = auth
            .verify_with(presented, &secret, &ring)
            .inspect_err(|e| {
                if e.is_config_error() {
                    tracing::warn!(reason = %e, "webhook secret configuration error");
                }
            })
            .map_err(|e| match e {
                AuthError::KeysUnavailable => ApiError::AuthUnavailable,
                e => e.into(),
            })?;
        Ok((secret, admitted))
    }
}
