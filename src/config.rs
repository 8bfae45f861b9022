//! Configuration, read once from the environment at init.
//!
//! Every value is parsed into a typed field here, so the handler never sees a
//! raw string from the environment and a bad value stops init with one line
//! that names the variable.

use std::collections::HashSet;
use std::time::Duration;

use thiserror::Error;

use crate::domain::secret::CredentialMode;
use crate::domain::tracking::{DEFAULT_TRACK_FOR, TrackPlan};
use crate::intake::sources::Sources;
use crate::support::url_policy::{CallbackHosts, is_https_or_loopback};

/// A configuration value that is missing or cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

impl ConfigError {
    fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self {
            var,
            reason: reason.into(),
        }
    }
}

/// The Defender sovereign clouds, each with its own API host, login host and
/// token audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Commercial,
    Gcc,
    GccHigh,
    Dod,
}

impl Cloud {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "commercial" => Some(Self::Commercial),
            "gcc" => Some(Self::Gcc),
            "gcc-high" => Some(Self::GccHigh),
            "dod" => Some(Self::Dod),
            _ => None,
        }
    }

    pub fn api_url(self) -> &'static str {
        match self {
            Self::Commercial => "https://api.securitycenter.microsoft.com",
            Self::Gcc => "https://api-gcc.securitycenter.microsoft.us",
            Self::GccHigh | Self::Dod => "https://api-gov.securitycenter.microsoft.us",
        }
    }

    pub fn login_url(self) -> &'static str {
        match self {
            Self::Commercial | Self::Gcc => "https://login.microsoftonline.com",
            Self::GccHigh | Self::Dod => "https://login.microsoftonline.us",
        }
    }

    /// The token audience is the cloud's API, never a regional or test host:
    /// Entra ID issues tokens for the resource, not for the URL called.
    pub fn scope(self) -> String {
        format!("{}/.default", self.api_url())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub secret_id: String,
    pub cloud: Cloud,
    pub api_url: String,
    pub login_url: String,
    pub scope: String,
    pub dry_run: bool,
    pub max_devices: usize,
    pub queue_url: Option<String>,
    /// The durable ledger's DynamoDB table (`LEDGER_TABLE`).
    pub ledger_table: Option<String>,
    /// Most offboard POSTs per rolling hour across instances; needs the
    /// ledger, where it is counted.
    pub max_offboards_per_hour: Option<u32>,
    /// `SUPPORTED_PLATFORMS`: what the preflight lets through.
    pub supported_platforms: crate::domain::policy::Platforms,
    /// `NAME_MATCH=host`: a name without a dot also matches
    /// `<name>.<any domain>`.
    pub host_names: bool,
    pub max_queued_devices: usize,
    /// Lowercased, so a tag check is one set lookup.
    pub protected_tags: HashSet<String>,
    pub secret_ttl: Duration,
    /// The webhook sources: presets with `SOURCES` laid over them.
    pub sources: Sources,
    /// CloudWatch namespace of the EMF metrics.
    pub metrics_namespace: String,
    /// Calls a minute this instance makes to each Defender API.
    pub rate_per_minute: usize,
    /// `RATE_LIMIT_MINUTE_MS`: what the limiters count as a minute (tests
    /// and simulations shorten it; 60 s otherwise).
    pub limit_minute: Duration,
    /// `MDE_MODE=worker`: serve SQS batches only.
    pub worker: bool,
    /// `DIRECT_EVENTS`: the kinds of event without HTTP or SQS it serves.
    pub direct_events: DirectEvents,
    /// `CALLBACK_HOSTS`: where a `callback_url` may point; empty refuses all.
    pub callback_hosts: CallbackHosts,
    /// `MDE_CREDENTIALS`: a client secret, or an STS token as the assertion.
    pub credentials: CredentialMode,
    /// `TRACK_INTERVALS_SECONDS` and `TRACK_FOR_SECONDS`: how offboards
    /// are followed to their final state (with the ledger and the queue).
    pub track: crate::domain::tracking::TrackPlan,
    /// `MDE_CA_FILE`: a PEM file whose certificates every TLS connection
    /// trusts beside the compiled-in roots (read at init, in `init`).
    pub ca_file: Option<String>,
    /// `EC2_DEVICE_MATCH`, `LIFECYCLE_HOLD_SECONDS`,
    /// `LIFECYCLE_CHECK_SECONDS`, `EC2_TENANT`: Auto Scaling scale-in.
    pub lifecycle: crate::domain::lifecycle::LifecycleSettings,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Pure over its lookup, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(get);
        let secret_id = env.trimmed("SECRET_ID").ok_or_else(|| {
            ConfigError::new(
                "SECRET_ID",
                "is required (Secrets Manager secret name or ARN)",
            )
        })?;
        let cloud = env.or("MDE_CLOUD", Cloud::Commercial, |v| {
            Cloud::parse(v)
                .ok_or_else(|| format!("'{v}' is not one of commercial, gcc, gcc-high, dod"))
        })?;
        let ledger_table = env.trimmed("LEDGER_TABLE");
        let config = Self {
            secret_id,
            cloud,
            api_url: env.or("MDE_API_URL", cloud.api_url().to_string(), |v| {
                let url = base_url(v)?;
                if url.ends_with("/api") {
                    return Err("must be the API base without the trailing /api".into());
                }
                Ok(url)
            })?,
            login_url: env.or("MDE_LOGIN_URL", cloud.login_url().to_string(), base_url)?,
            scope: env.trimmed("MDE_SCOPE").unwrap_or_else(|| cloud.scope()),
            dry_run: env.or("DRY_RUN", false, |v| {
                match v.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => Ok(true),
                    "false" | "0" | "no" => Ok(false),
                    _ => Err(format!("'{v}' is not true or false")),
                }
            })?,
            max_devices: env.count("MAX_DEVICES", 25, 1000)?,
            max_queued_devices: env.count("MAX_QUEUED_DEVICES", 5000, 100_000)?,
            queue_url: env.trimmed("QUEUE_URL"),
            host_names: env.or("NAME_MATCH", false, |v| match v.trim() {
                "exact" => Ok(false),
                "host" => Ok(true),
                other => Err(format!("'{other}' is not exact or host")),
            })?,
            supported_platforms: env.or(
                "SUPPORTED_PLATFORMS",
                Default::default(),
                crate::domain::policy::Platforms::parse,
            )?,
            max_offboards_per_hour: env.or("MAX_OFFBOARDS_PER_HOUR", None, |v| {
                // A budget nobody counts would be a promise not kept.
                if ledger_table.is_none() {
                    return Err(
                        "needs LEDGER_TABLE: the budget is counted in the ledger table".into(),
                    );
                }
                count(v, 100_000).map(|n| Some(n as u32))
            })?,
            ledger_table,
            protected_tags: env
                .get("PROTECTED_TAGS")
                .unwrap_or_default()
                .split(',')
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty())
                .collect(),
            secret_ttl: Duration::from_secs(env.count("SECRET_TTL_SECONDS", 300, 86_400)? as u64),
            sources: env.or("SOURCES", Sources::default(), |v| Sources::load(Some(v)))?,
            metrics_namespace: env
                .trimmed("METRICS_NAMESPACE")
                .unwrap_or_else(|| "MdeOffboard".into()),
            // Above Defender's published 100 only for a tenant with a raised
            // quota, or against a fake (the benchmark, which measures the
            // function and not the limiter).
            rate_per_minute: env.count("RATE_LIMIT_PER_MINUTE", 100, 1_000_000)?,
            limit_minute: Duration::from_millis(
                env.count("RATE_LIMIT_MINUTE_MS", 60_000, 60_000)?.max(1) as u64,
            ),
            worker: env.or("MDE_MODE", false, |v| match v.trim() {
                "http" => Ok(false),
                "worker" => Ok(true),
                other => Err(format!("'{other}' is not http or worker")),
            })?,
            direct_events: env.or(
                "DIRECT_EVENTS",
                DirectEvents::default(),
                DirectEvents::parse,
            )?,
            callback_hosts: env
                .get("CALLBACK_HOSTS")
                .map(|v| CallbackHosts::parse(&v))
                .unwrap_or_default(),
            credentials: env.or("MDE_CREDENTIALS", CredentialMode::Secret, |v| {
                CredentialMode::parse(v)
                    .ok_or_else(|| format!("'{}' is not secret or federated", v.trim()))
            })?,
            track: TrackPlan {
                intervals: env.or(
                    "TRACK_INTERVALS_SECONDS",
                    TrackPlan::default().intervals,
                    TrackPlan::parse_intervals,
                )?,
                track_for: env.count(
                    "TRACK_FOR_SECONDS",
                    DEFAULT_TRACK_FOR as usize,
                    90 * 86_400,
                )? as u64,
            },
            ca_file: env.trimmed("MDE_CA_FILE"),
            lifecycle: lifecycle_settings(&env)?,
        };
        config.promises_only_what_it_tracks()?;
        Ok(config)
    }

    /// Whether final outcomes can be followed (and so written back):
    /// that needs the ledger and the queue.
    pub fn tracks(&self) -> bool {
        self.ledger_table.is_some() && self.queue_url.is_some()
    }

    /// A source that asks for write-back (`notify` written in `SOURCES`)
    /// where nothing can be tracked would promise what never happens: init
    /// stops, naming it. The presets' own `notify` is inert there instead
    /// (init says so once), so a deployment without a ledger still starts.
    fn promises_only_what_it_tracks(&self) -> Result<(), ConfigError> {
        match self.sources.chosen_notify().first() {
            Some(name) if !self.tracks() => Err(ConfigError::new(
                "SOURCES",
                format!(
                    "source '{name}' has \"notify\", but no outcome can be written back without the ledger (LEDGER_TABLE) and the queue (QUEUE_URL): set both, or remove \"notify\""
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The Auto Scaling scale-in settings (contract, "Auto Scaling lifecycle
/// hooks").
fn lifecycle_settings<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<crate::domain::lifecycle::LifecycleSettings, ConfigError> {
    use crate::domain::lifecycle::{self as l, LifecycleSettings as S};
    Ok(S {
        device_match: env.or("EC2_DEVICE_MATCH", Vec::new(), S::parse_device_match)?,
        hold_seconds: env.count(
            "LIFECYCLE_HOLD_SECONDS",
            l::DEFAULT_HOLD_SECONDS as usize,
            l::MAX_HOLD_SECONDS as usize,
        )? as u64,
        // SQS delays a message by at most 900 seconds.
        check_seconds: env.count(
            "LIFECYCLE_CHECK_SECONDS",
            l::DEFAULT_CHECK_SECONDS as usize,
            900,
        )? as u64,
        tenant: env.or("EC2_TENANT", None, |v| S::parse_tenant(v).map(Some))?,
    })
}

/// The environment through a lookup. An empty variable is treated as
/// unset: SAM and CloudFormation parameters often end up as "" rather than
/// absent.
struct Env<F>(F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    fn trimmed(&self, var: &str) -> Option<String> {
        self.get(var).map(|v| v.trim().to_string())
    }

    /// `var` read by `parse`, or `default` when unset; an error names `var`.
    fn or<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse(&v).map_err(|reason| ConfigError::new(var, reason)),
        }
    }

    fn count(&self, var: &'static str, default: usize, max: usize) -> Result<usize, ConfigError> {
        self.or(var, default, |v| count(v, max))
    }
}

fn count(v: &str, max: usize) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("'{v}' is not a whole number from 1 to {max}")),
    }
}

/// `DIRECT_EVENTS`: the doors opened to events that come without HTTP or
/// SQS (contract, "Doors"). Empty opens none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectEvents {
    pub eventbridge: bool,
    pub invoke: bool,
}

impl DirectEvents {
    fn parse(list: &str) -> Result<Self, String> {
        let mut open = Self::default();
        for kind in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            match kind.to_ascii_lowercase().as_str() {
                "eventbridge" => open.eventbridge = true,
                "invoke" => open.invoke = true,
                "none" => {}
                other => return Err(format!("'{other}' is not eventbridge or invoke")),
            }
        }
        Ok(open)
    }
}

fn base_url(v: &str) -> Result<String, String> {
    let v = v.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(v).map_err(|e| format!("'{v}' is not a URL ({e})"))?;
    if parsed.host().is_none() {
        return Err(format!("'{v}' has no host"));
    }
    // The client secret and the bearer token travel to these hosts: plain
    // http only where the traffic never leaves the machine.
    if !is_https_or_loopback(&parsed) {
        return Err(format!(
            "'{v}' must be an https:// URL (http:// only for 127.0.0.1, ::1 or localhost)"
        ));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_contract_defaults() {
        let c = cfg(&[("SECRET_ID", "mde")]).unwrap();
        assert_eq!(c.cloud, Cloud::Commercial);
        assert_eq!(c.api_url, "https://api.securitycenter.microsoft.com");
        assert_eq!(c.login_url, "https://login.microsoftonline.com");
        assert_eq!(c.scope, "https://api.securitycenter.microsoft.com/.default");
        assert!(!c.dry_run);
        assert_eq!(c.max_devices, 25);
        assert_eq!(c.max_queued_devices, 5000);
        assert_eq!(c.secret_ttl, Duration::from_secs(300));
        assert!(c.protected_tags.is_empty());
        assert!(c.queue_url.is_none());
        assert_eq!(c.lifecycle, Default::default());
        assert_eq!(
            (c.lifecycle.hold_seconds, c.lifecycle.check_seconds),
            (900, 60)
        );
        let c = cfg(&[
            ("SECRET_ID", "mde"),
            ("EC2_DEVICE_MATCH", "tag,hostname"),
            ("EC2_TENANT", "contoso"),
        ])
        .unwrap();
        assert_eq!(c.lifecycle.device_match.len(), 2);
        assert_eq!(c.lifecycle.tenant.as_deref(), Some("contoso"));
    }

    #[test]
    fn credential_mode_defaults_to_secret_and_a_bad_value_names_the_variable() {
        let c = cfg(&[("SECRET_ID", "mde")]).unwrap();
        assert_eq!(c.credentials, CredentialMode::Secret);
        let c = cfg(&[("SECRET_ID", "mde"), ("MDE_CREDENTIALS", " Federated ")]).unwrap();
        assert_eq!(c.credentials, CredentialMode::Federated);
        let e = cfg(&[("SECRET_ID", "mde"), ("MDE_CREDENTIALS", "oidc")]).unwrap_err();
        assert_eq!(e.var, "MDE_CREDENTIALS");
        assert!(e.to_string().contains("'oidc'"), "{e}");
    }

    #[test]
    fn missing_secret_id_names_the_variable() {
        let e = cfg(&[]).unwrap_err();
        assert_eq!(e.var, "SECRET_ID");
        assert!(e.to_string().starts_with("SECRET_ID: "));
    }

    #[test]
    fn clouds_pick_hosts_and_scope() {
        let gcc = cfg(&[("SECRET_ID", "s"), ("MDE_CLOUD", "gcc")]).unwrap();
        assert_eq!(gcc.api_url, "https://api-gcc.securitycenter.microsoft.us");
        assert_eq!(gcc.login_url, "https://login.microsoftonline.com");
        assert_eq!(
            gcc.scope,
            "https://api-gcc.securitycenter.microsoft.us/.default"
        );
        for name in ["gcc-high", "DoD"] {
            let c = cfg(&[("SECRET_ID", "s"), ("MDE_CLOUD", name)]).unwrap();
            assert_eq!(c.api_url, "https://api-gov.securitycenter.microsoft.us");
            assert_eq!(c.login_url, "https://login.microsoftonline.us");
            assert_eq!(
                c.scope,
                "https://api-gov.securitycenter.microsoft.us/.default"
            );
        }
        let e = cfg(&[("SECRET_ID", "s"), ("MDE_CLOUD", "moon")]).unwrap_err();
        assert_eq!(e.var, "MDE_CLOUD");
    }

    #[test]
    fn overrides_keep_the_cloud_scope() {
        let c = cfg(&[
            ("SECRET_ID", "s"),
            (
                "MDE_API_URL",
                "https://api-eu.securitycenter.microsoft.com/",
            ),
            ("MDE_LOGIN_URL", "http://127.0.0.1:9000"),
        ])
        .unwrap();
        assert_eq!(c.api_url, "https://api-eu.securitycenter.microsoft.com");
        assert_eq!(c.login_url, "http://127.0.0.1:9000");
        assert_eq!(c.scope, "https://api.securitycenter.microsoft.com/.default");
        let c = cfg(&[("SECRET_ID", "s"), ("MDE_SCOPE", "api://x/.default")]).unwrap();
        assert_eq!(c.scope, "api://x/.default");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, val) in [
            ("DRY_RUN", "maybe"),
            ("MAX_DEVICES", "0"),
            ("MAX_DEVICES", "ten"),
            ("MAX_QUEUED_DEVICES", "-1"),
            ("SECRET_TTL_SECONDS", "1.5"),
            ("MDE_API_URL", "not a url"),
            (
                "MDE_API_URL",
                "https://api.securitycenter.microsoft.com/api",
            ),
            ("MDE_LOGIN_URL", "ftp://login"),
            ("EC2_DEVICE_MATCH", "name"),
            ("LIFECYCLE_HOLD_SECONDS", "172801"),
            ("LIFECYCLE_CHECK_SECONDS", "901"),
            ("EC2_TENANT", "Contoso"),
        ] {
            let e = cfg(&[("SECRET_ID", "s"), (var, val)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={val}");
        }
    }

    #[test]
    fn api_and_login_urls_must_be_https_unless_loopback() {
        for var in ["MDE_API_URL", "MDE_LOGIN_URL"] {
            for bad in [
                "http://api.securitycenter.microsoft.com",
                "http://login.example.com:8080",
                "http://10.0.0.5",
                "http://127.0.0.2",
                "http://localhost.evil.example",
                "ws://127.0.0.1:9000",
            ] {
                let e = cfg(&[("SECRET_ID", "s"), (var, bad)]).unwrap_err();
                assert_eq!(e.var, var, "{bad}");
                assert!(e.reason.contains("https://"), "{e}");
            }
            for good in [
                "https://api-eu.securitycenter.microsoft.com",
                "http://127.0.0.1:9000",
                "http://localhost:9000",
                "http://LOCALHOST",
                "http://[::1]:9000",
                "https://127.0.0.1:9443",
            ] {
                assert!(
                    cfg(&[("SECRET_ID", "s"), (var, good)]).is_ok(),
                    "{var}={good}"
                );
            }
        }
    }

    #[test]
    fn callback_hosts_are_a_lowercased_comma_list() {
        let c = cfg(&[("SECRET_ID", "s")]).unwrap();
        assert!(c.callback_hosts.is_empty());
        let c = cfg(&[
            ("SECRET_ID", "s"),
            ("CALLBACK_HOSTS", " Hooks.Example.com, ,soar.example.org"),
        ])
        .unwrap();
        assert!(c.callback_hosts.allows("hooks.example.com"));
        assert!(c.callback_hosts.allows("SOAR.example.org"));
        assert!(!c.callback_hosts.allows("example.com"));
    }

    #[test]
    fn a_bad_source_definition_names_sources_and_the_source() {
        let e = cfg(&[
            ("SECRET_ID", "s"),
            ("SOURCES", r#"{"sources": {"tines": {"ticket": "/t"}}}"#),
        ])
        .unwrap_err();
        assert_eq!(e.var, "SOURCES");
        assert!(e.reason.contains("tines"), "{e}");
        let ok = cfg(&[("SECRET_ID", "s")]).unwrap();
        assert!(ok.sources.get("jira").is_some());
    }

    #[test]
    fn a_source_asking_for_write_back_needs_the_ledger_and_the_queue() {
        let sources = r#"{"sources": {"jira": {"extends": "jira", "notify": "jira"}}}"#;
        let e = cfg(&[("SECRET_ID", "s"), ("SOURCES", sources)]).unwrap_err();
        assert_eq!(e.var, "SOURCES");
        assert!(
            e.reason.contains("'jira'") && e.reason.contains("LEDGER_TABLE"),
            "{e}"
        );
        let e = cfg(&[
            ("SECRET_ID", "s"),
            ("SOURCES", sources),
            ("LEDGER_TABLE", "t"),
        ])
        .unwrap_err();
        assert!(
            e.reason.contains("QUEUE_URL"),
            "the ledger alone is not enough: {e}"
        );
        let both = [
            ("SECRET_ID", "s"),
            ("SOURCES", sources),
            ("LEDGER_TABLE", "t"),
            ("QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/q"),
        ];
        assert!(cfg(&both).unwrap().tracks());
        // A preset's own write-back, inherited or built in, does not stop
        // a deployment without a ledger.
        let inherited = r#"{"sources": {"jira": {"extends": "jira", "id_header": "x-id"}}}"#;
        let c = cfg(&[("SECRET_ID", "s"), ("SOURCES", inherited)]).unwrap();
        assert!(!c.tracks() && c.sources.notifying().any(|n| n == "jira"));
        let dropped = r#"{"sources": {"jira": {"extends": "jira", "notify": null}}}"#;
        assert!(cfg(&[("SECRET_ID", "s"), ("SOURCES", dropped)]).is_ok());
    }

    #[test]
    fn protected_tags_are_trimmed_and_lowercased() {
        let c = cfg(&[
            ("SECRET_ID", "s"),
            ("PROTECTED_TAGS", " VIP, domain-controller ,,"),
        ])
        .unwrap();
        assert_eq!(c.protected_tags.len(), 2);
        assert!(c.protected_tags.contains("vip"));
        assert!(c.protected_tags.contains("domain-controller"));
    }
}
