//! The domain: what happens to each device. Resolve, read, check, offboard;
//! one device's failure never stops the others.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde::Serialize;

use crate::domain::defender::{Defender, DefenderError, Machine, RefusalCode};
use crate::domain::ledger::OffboardBudget;
use crate::domain::limits::Deadline;
use crate::domain::model::{Device, DeviceName, DeviceRef, InstanceId, InstanceMatch, MachineId};
use crate::domain::policy::{self, Platforms, Refusal};

/// Devices handled at once. Small: every device costs up to three calls
/// against Defender's 100-a-minute limit, and the limiter queues the rest.
const PARALLEL_DEVICES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    OffboardRequested,
    AlreadyPending,
    WouldOffboard,
    NotFound,
    Ambiguous,
    UnsupportedOs,
    Protected,
    BudgetExceeded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OffboardRequested => "offboard_requested",
            Self::AlreadyPending => "already_pending",
            Self::WouldOffboard => "would_offboard",
            Self::NotFound => "not_found",
            Self::Ambiguous => "ambiguous",
            Self::UnsupportedOs => "unsupported_os",
            Self::Protected => "protected",
            Self::BudgetExceeded => "budget_exceeded",
            Self::Failed => "failed",
        }
    }
}

/// One device's outcome, as answered and as audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceResult {
    pub device: String,
    pub machine_id: Option<MachineId>,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For the audit line only.
    #[serde(skip)]
    pub computer_dns_name: Option<String>,
    /// Set when a retry of the request can cure this failure.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl DeviceResult {
    fn new(device: &Device, status: Status) -> Self {
        Self {
            device: device.given.clone(),
            machine_id: match &device.target {
                DeviceRef::Id(id) => Some(id.clone()),
                DeviceRef::Name(_) | DeviceRef::Instance(..) => None,
            },
            status,
            action_id: None,
            detail: None,
            computer_dns_name: None,
            retry_after: None,
        }
    }

    fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }

    /// The error as the detail, and whether a retry can cure it.
    fn with_error(self, e: &DefenderError) -> Self {
        Self {
            retry_after: e.retry_after(),
            ..self.detail(e.to_string())
        }
    }
}

/// The hourly budget: offboard POSTs per rolling hour, counted in the
/// ledger so it holds across instances.
#[derive(Clone)]
pub struct Budget {
    pub ledger: Arc<dyn OffboardBudget>,
    pub per_hour: u32,
    /// Whose budget: "" without tenants, else the tenant's name.
    pub scope: String,
}

#[derive(Clone)]
pub struct Offboarder {
    defender: Arc<dyn Defender>,
    protected_tags: HashSet<String>,
    platforms: Platforms,
    budget: Option<Budget>,
    /// `NAME_MATCH=host`: a short name also matches `<name>.<domain>`.
    host_names: bool,
}

impl Offboarder {
    pub fn new(defender: Arc<dyn Defender>, protected_tags: HashSet<String>) -> Self {
        Self {
            defender,
            protected_tags,
            platforms: Platforms::default(),
            budget: None,
            host_names: false,
        }
    }

    /// The platforms the preflight lets through (`SUPPORTED_PLATFORMS`).
    pub fn with_platforms(mut self, platforms: Platforms) -> Self {
        self.platforms = platforms;
        self
    }

    /// `NAME_MATCH=host`: short names match `<name>.<any domain>` too.
    pub fn with_host_names(mut self, host_names: bool) -> Self {
        self.host_names = host_names;
        self
    }

    /// Checks every offboard against `budget` before it is sent.
    pub fn with_budget(mut self, budget: Option<Budget>) -> Self {
        self.budget = budget;
        self
    }

    /// The same rules for one tenant: its Defender, its own budget.
    pub fn for_tenant(&self, defender: Arc<dyn Defender>, tenant: &str) -> Self {
        let mut o = self.clone();
        o.defender = defender;
        if let Some(b) = &mut o.budget {
            b.scope = tenant.to_string();
        }
        o
    }

    /// Handles every device and answers one result per device, in order.
    /// A device named twice is handled once and answered twice.
    pub async fn run(
        &self,
        devices: &[Device],
        comment: &str,
        dry_run: bool,
        deadline: &Deadline,
    ) -> Vec<DeviceResult> {
        let mut unique: Vec<Device> = Vec::new();
        let mut seen = HashSet::new();
        for d in devices {
            if seen.insert(d.target.key()) {
                unique.push(d.clone());
            }
        }
        // Owned devices: a stream of futures borrowing from its own items
        // trips the compiler's higher-ranked lifetime check.
        let done: HashMap<String, DeviceResult> = futures_util::stream::iter(unique)
            .map(|d: Device| async move {
                let r = self.offboard_device(&d, comment, dry_run, deadline).await;
                (d.target.key(), r)
            })
            .buffered(PARALLEL_DEVICES)
            .collect()
            .await;
        devices
            .iter()
            .map(|d| {
                let mut r = done[&d.target.key()].clone();
                r.device = d.given.clone();
                r
            })
            .collect()
    }

    /// One device: its machine found, read, checked against the policy and
    /// the budget, and offboarded.
    async fn offboard_device(
        &self,
        device: &Device,
        comment: &str,
        dry_run: bool,
        deadline: &Deadline,
    ) -> DeviceResult {
        let id = match &device.target {
            DeviceRef::Id(id) => id.clone(),
            DeviceRef::Name(name) => match self.resolve(device, name, deadline).await {
                Ok(id) => id,
                Err(r) => return r,
            },
            DeviceRef::Instance(instance, by) => {
                match self.resolve_instance(device, instance, by, deadline).await {
                    Ok(id) => id,
                    Err(r) => return r,
                }
            }
        };
        let for_id = |status| DeviceResult {
            machine_id: Some(id.clone()),
            ..DeviceResult::new(device, status)
        };
        let machine = match self.defender.get_machine(&id, deadline).await {
            Ok(m) => m,
            Err(DefenderError::NotFound) => {
                return for_id(Status::NotFound).detail("no machine has this id");
            }
            Err(e) => return for_id(Status::Failed).with_error(&e),
        };
        let result = |status| DeviceResult {
            computer_dns_name: machine.computer_dns_name.clone(),
            ..for_id(status)
        };
        if let Err(refusal) = policy::check(&machine, &self.protected_tags, self.platforms) {
            let status = match refusal {
                Refusal::Protected { .. } => Status::Protected,
                Refusal::UnsupportedOs { .. } => Status::UnsupportedOs,
            };
            return result(status).detail(refusal.detail());
        }
        if dry_run {
            return result(Status::WouldOffboard)
                .detail("dry run: every check passed, nothing was sent");
        }
        // Last check before the POST: only a device that would really be
        // offboarded takes from the budget.
        let mut taken = None;
        if let Some(b) = &self.budget {
            let now = SystemTime::now();
            match b.ledger.take_budget(&b.scope, 1, b.per_hour, now).await {
                Ok(0) => {
                    return result(Status::BudgetExceeded).detail(format!(
                        "the hourly budget of {} offboards (MAX_OFFBOARDS_PER_HOUR) is spent; nothing was sent",
                        b.per_hour
                    ));
                }
                Ok(_) => taken = Some((b, now)),
                Err(e) => {
                    return DeviceResult {
                        retry_after: e.retry_after().or(Some(Duration::from_secs(5))),
                        ..result(Status::Failed).detail(format!(
                            "the budget could not be checked: {e}; nothing was sent"
                        ))
                    };
                }
            }
        }
        let outcome = match self.defender.offboard(&id, comment, deadline).await {
            Ok(action) => DeviceResult {
                action_id: Some(action.id),
                ..result(Status::OffboardRequested)
            },
            Err(DefenderError::Refused {
                code: RefusalCode::ActiveRequestAlreadyExists,
                ..
            }) => result(Status::AlreadyPending)
                .detail("an offboard action for this machine is already pending"),
            Err(DefenderError::Refused {
                code: RefusalCode::OsPlatformNotSupported,
                ..
            }) => result(Status::UnsupportedOs).detail(
                "Defender refused: the machine's OS platform is not supported by the offboard API",
            ),
            Err(DefenderError::NotFound) => {
                result(Status::NotFound).detail("Defender no longer knows this machine")
            }
            Err(e) => result(Status::Failed).with_error(&e),
        };
        // The budget counts offboards Defender accepted: any other answer
        // gives its place back (kept taken if the ledger does not take it).
        if let Some((b, taken_at)) = taken
            && outcome.status != Status::OffboardRequested
            && let Err(e) = b.ledger.give_back_budget(&b.scope, 1, taken_at).await
        {
            tracing::warn!(machine_id = %id.as_str(), error = %e, "a budget place was not given back");
        }
        outcome
    }

    /// The id of the one machine carrying `name`; else the device's result.
    async fn resolve(
        &self,
        device: &Device,
        name: &DeviceName,
        deadline: &Deadline,
    ) -> Result<MachineId, DeviceResult> {
        let result = |status| DeviceResult::new(device, status);
        let host = self.host_names && name.is_short();
        let found = match host {
            true => self.defender.find_by_host(name, deadline).await,
            false => self.defender.find_by_name(name, deadline).await,
        }
        .map_err(|e| result(Status::Failed).with_error(&e))?;
        // Defender's `eq` is case-insensitive already; filtering again
        // guards against a looser match on the server.
        let matching: Vec<&Machine> = found
            .iter()
            .filter(|m| {
                m.computer_dns_name
                    .as_deref()
                    .is_some_and(|n| name.matches(n) || (host && name.matches_host(n)))
            })
            .collect();
        one_machine(device, &matching, "has this name").map_err(|r| *r)
    }

    /// The id of the one machine an EC2 instance id finds
    /// (`EC2_DEVICE_MATCH`); else the device's result.
    async fn resolve_instance(
        &self,
        device: &Device,
        instance: &InstanceId,
        by: &[InstanceMatch],
        deadline: &Deadline,
    ) -> Result<MachineId, DeviceResult> {
        let found =
            crate::domain::lifecycle::find_instance(&*self.defender, instance, by, deadline)
                .await
                .map_err(|e| DeviceResult::new(device, Status::Failed).with_error(&e))?;
        let found: Vec<&Machine> = found.iter().collect();
        one_machine(device, &found, "carries this instance id").map_err(|r| *r)
    }
}

/// The id of the one machine found; none is `not_found`, several are
/// `ambiguous` (`what` says how they matched).
fn one_machine(
    device: &Device,
    found: &[&Machine],
    what: &str,
) -> Result<MachineId, Box<DeviceResult>> {
    let result = |status| DeviceResult::new(device, status);
    match found {
        [] => Err(Box::new(
            result(Status::NotFound).detail(format!("no machine {what}")),
        )),
        [m] => MachineId::parse(&m.id).ok_or_else(|| {
            Box::new(
                result(Status::Failed)
                    .detail("Defender returned a machine id that is not 40 hex characters"),
            )
        }),
        many => {
            let ids: Vec<&str> = many.iter().map(|m| m.id.as_str()).collect();
            let verb = what
                .replacen("has", "have", 1)
                .replacen("carries", "carry", 1);
            Err(Box::new(result(Status::Ambiguous).detail(format!(
                "{} machines {verb} ({}); name one by its machine id",
                many.len(),
                ids.join(", ")
            ))))
        }
    }
}
