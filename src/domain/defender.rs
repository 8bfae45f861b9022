//! The Defender for Endpoint API as the domain sees it: machines, machine
//! actions, the errors that matter to a device's outcome, and the port the
//! domain calls. The HTTP adapter is `adapters::defender_http`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use thiserror::Error;

use crate::domain::limits::Deadline;
use crate::domain::model::{DeviceName, MachineId};
use crate::domain::secret::{AppSecret, CredentialError};

/// A machine as Defender describes it; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub id: String,
    pub computer_dns_name: Option<String>,
    pub os_platform: Option<String>,
    pub os_build: Option<u64>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub machine_tags: Vec<String>,
}

/// A MachineAction. The docs spell the update time both ways; both are read.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MachineAction {
    pub id: String,
    #[serde(rename = "type")]
    pub action_type: Option<String>,
    pub status: Option<String>,
    pub machine_id: Option<String>,
    // Two fields, not an alias: an answer carrying both spellings must not
    // fail as a duplicate field.
    pub last_update_date_time_utc: Option<String>,
    pub last_update_time_utc: Option<String>,
}

impl MachineAction {
    pub fn last_update(&self) -> Option<&str> {
        self.last_update_date_time_utc
            .as_deref()
            .or(self.last_update_time_utc.as_deref())
    }
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DefenderError {
    #[error("Defender does not know this machine or action")]
    NotFound,
    /// A 4xx with Defender's `error.code`.
    #[error("Defender refused the call: {code} (HTTP {status})")]
    Refused { status: u16, code: RefusalCode },
    #[error(
        "Defender answered 401 with a fresh token: the app registration is not accepted by this tenant's API"
    )]
    Unauthorized,
    #[error(
        "Defender answered 403: the application lacks the permission (Machine.Offboard, Machine.Read.All) or admin consent"
    )]
    Forbidden,
    #[error("Defender is throttling; retry after {}s", retry_after.as_secs())]
    Throttled { retry_after: Duration },
    /// A 3xx: never followed, since it would carry the bearer token to
    /// wherever `Location` points.
    #[error("Defender answered HTTP {0}, a redirect, which is never followed; check MDE_API_URL")]
    Redirected(u16),
    #[error("Defender is unavailable: {0}")]
    Unavailable(String),
    #[error("the Lambda deadline left no time for this call")]
    Deadline,
    #[error(transparent)]
    Credentials(#[from] CredentialError),
}

/// Defender's `error.code` on a refusal: the ones the domain acts on, by
/// name; any other as Defender wrote it. Never matched on the message.
/// A code the domain knows is shown as Defender writes it.
#[derive(Debug, Clone, PartialEq, Eq, strum::EnumString, strum::Display)]
pub enum RefusalCode {
    /// An offboard action for this machine is already pending.
    ActiveRequestAlreadyExists,
    /// The offboard API does not support the machine's OS platform.
    OsPlatformNotSupported,
    #[strum(default)]
    Other(String),
}

impl DefenderError {
    /// Errors a later retry of the same request can cure: the answer turns
    /// into 503 with Retry-After.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after } => Some(*retry_after),
            Self::Unavailable(_) | Self::Deadline => Some(Duration::from_secs(10)),
            Self::Credentials(e) if e.is_retryable() => Some(Duration::from_secs(10)),
            _ => None,
        }
    }
}

/// Port: the Defender calls the domain needs.
pub trait Defender: Send + Sync {
    fn find_by_name<'a>(
        &'a self,
        name: &'a DeviceName,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<Vec<Machine>, DefenderError>>;
    /// Machines whose `computerDnsName` is the short name or starts with
    /// `<name>.` (`NAME_MATCH=host`). Without a query of its own, a
    /// Defender finds the exact name only.
    fn find_by_host<'a>(
        &'a self,
        name: &'a DeviceName,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<Vec<Machine>, DefenderError>> {
        self.find_by_name(name, deadline)
    }
    /// Machines carrying exactly this tag (`GET /api/machines/findbytag`,
    /// `useStartsWithFilter=false`). A Defender without that query finds
    /// none it could vouch for: an error, never an empty answer.
    fn find_by_tag<'a>(
        &'a self,
        _tag: &'a str,
        _deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<Vec<Machine>, DefenderError>> {
        Box::pin(async {
            Err(DefenderError::Unavailable(
                "this Defender cannot find machines by tag".into(),
            ))
        })
    }
    fn get_machine<'a>(
        &'a self,
        id: &'a MachineId,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<Machine, DefenderError>>;
    fn offboard<'a>(
        &'a self,
        id: &'a MachineId,
        comment: &'a str,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>>;
    fn get_action<'a>(
        &'a self,
        action_id: &'a str,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>>;
    /// `POST /api/machineactions/{id}/cancel`. Defender documents no error
    /// code for an action already final (it answers a 4xx): callers judge
    /// by reading the action, not by the code.
    fn cancel_action<'a>(
        &'a self,
        action_id: &'a str,
        comment: &'a str,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<MachineAction, DefenderError>>;

    /// Checks that the API's credentials can be had (a token), so that a
    /// credentials problem is surfaced once for a request rather than once
    /// per device. Adapters without credentials have nothing to check.
    fn ready<'a>(
        &'a self,
        _secret: &'a AppSecret,
        _deadline: &'a Deadline,
    ) -> BoxFuture<'a, Result<(), CredentialError>> {
        Box::pin(async { Ok(()) })
    }

    /// The application permissions the API's credentials are known to lack
    /// (from the token's roles); empty when none are, or nothing is known.
    fn missing_permissions(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// The health check's view of the API, from a fresh token (never the
    /// cached one): the token, the permissions it carries, and
    /// `GET /api/machines?$top=1` with it. Adapters without credentials
    /// have nothing to check.
    fn probe<'a>(
        &'a self,
        _secret: &'a AppSecret,
        _dry_run: bool,
        _deadline: &'a Deadline,
    ) -> BoxFuture<'a, crate::domain::health::ApiProbe> {
        Box::pin(async { crate::domain::health::ApiProbe::nothing_to_check() })
    }
}
