//! Metrics in CloudWatch Embedded Metric Format: one JSON line on stdout per
//! request, turned into metrics by CloudWatch Logs itself, so recording
//! costs no API call and no latency.
//!
//! Adapters deep in the call tree record through a task-local collector
//! that the handler scopes around each request; what is recorded outside a
//! request (the secret and token fetched during init) waits in a global
//! collector and goes out with the next request's line.
//!
//! Written by hand rather than with an EMF crate: the format is one JSON
//! object, and the crates that exist wrap the `metrics` facade and a
//! background flusher, more than one line per invocation needs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Collector {
    counts: BTreeMap<&'static str, f64>,
    latencies_ms: Vec<f64>,
    /// The tenant the request acted in: the `Tenant` dimension.
    tenant: Option<String>,
}

tokio::task_local! {
    static CURRENT: std::cell::RefCell<Collector>;
}

static OUTSIDE: Mutex<Collector> = Mutex::new(Collector {
    counts: BTreeMap::new(),
    latencies_ms: Vec::new(),
    tenant: None,
});

/// Metric names, in one place so the template's alarms and this code agree.
pub mod names {
    pub const AUTH_REJECTED: &str = "AuthRejected";
    /// Queue messages the worker refused (no valid MAC, or a field invalid).
    pub const REJECTED: &str = "Rejected";
    /// Sealed messages another build wrote, put back for a worker that
    /// reads them (a rolling deploy).
    pub const KEPT_FOR_NEWER: &str = "KeptForNewer";
    /// Events refused at the door (`MDE_MODE`, `DIRECT_EVENTS`).
    pub const EVENT_REFUSED: &str = "EventRefused";
    pub const IGNORED: &str = "Ignored";
    /// An authenticated webhook delivery whose content maps to no request
    /// (no ticket, no device, a bad value): answered 202, so only this
    /// metric and its alarm tell the operator the mapping is wrong.
    pub const UNMAPPED: &str = "Unmapped";
    pub const BUDGET_EXCEEDED: &str = "BudgetExceeded";
    pub const DEFENDER_THROTTLED: &str = "DefenderThrottled";
    pub const DEFENDER_ERRORS: &str = "DefenderErrors";
    pub const SECRET_FETCHES: &str = "SecretFetches";
    pub const TOKEN_FETCHES: &str = "TokenFetches";
    pub const DEFENDER_LATENCY: &str = "DefenderLatency";
    pub const REPLAYED: &str = "Replayed";
    pub const QUEUED: &str = "Queued";
    /// Final statuses of tracked offboards, one metric each.
    pub const ACTION_SUCCEEDED: &str = "ActionSucceeded";
    pub const ACTION_FAILED: &str = "ActionFailed";
    pub const ACTION_CANCELLED: &str = "ActionCancelled";
    pub const ACTION_TIMED_OUT: &str = "ActionTimeOut";
    pub const ACTION_NOT_CONFIRMED: &str = "ActionNotConfirmed";
    /// Requested offboards whose first track message the queue refused.
    pub const TRACK_NOT_QUEUED: &str = "TrackNotQueued";
    /// Callbacks refused (4xx), given up on, or unsigned (no key).
    pub const CALLBACK_FAILED: &str = "CallbackFailed";
    /// Write-backs to Jira, ServiceNow or PagerDuty that did not land.
    pub const NOTIFY_FAILED: &str = "NotifyFailed";
    /// A real request refused because the credentials do not work: the
    /// secret missing or malformed, a token refused, a permission missing
    /// (read from the token or from Defender's 403).
    pub const CREDENTIAL_FAILURE: &str = "CredentialFailure";
    /// A whole request answered 503 (the ledger, Secrets Manager or the
    /// login host unavailable): the sender retries, but nothing is done
    /// until it passes.
    pub const UNAVAILABLE: &str = "Unavailable";
    /// One health check: 1 failed, 0 passed, with the dimension `Check`.
    pub const HEALTH_CHECK_FAILED: &str = "HealthCheckFailed";
}

fn with(f: impl FnOnce(&mut Collector)) {
    if CURRENT.try_with(|_| ()).is_ok() {
        CURRENT.with(|c| f(&mut c.borrow_mut()));
    } else {
        f(&mut OUTSIDE.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The tenant this request acts in: its metrics carry the `Tenant`
/// dimension too.
pub fn tenant(name: &str) {
    with(|c| c.tenant = Some(name.to_string()));
}

pub fn count(name: &'static str) {
    add(name, 1.0);
}

pub fn add(name: &'static str, n: f64) {
    with(|c| *c.counts.entry(name).or_default() += n);
}

pub fn defender_latency(d: Duration) {
    with(|c| {
        c.latencies_ms
            .push((d.as_secs_f64() * 1_000_000.0).round() / 1000.0)
    });
}

/// Runs `fut` with a fresh collector and returns what it recorded, plus
/// anything recorded outside a request since the last one.
pub async fn scope<F: std::future::Future>(fut: F) -> (F::Output, Collector) {
    let cell = std::cell::RefCell::new(Collector::default());
    CURRENT
        .scope(cell, async move {
            let out = fut.await;
            let mut collected = CURRENT.with(|c| c.take());
            let outside = std::mem::take(&mut *OUTSIDE.lock().unwrap_or_else(|e| e.into_inner()));
            for (k, v) in outside.counts {
                *collected.counts.entry(k).or_default() += v;
            }
            collected.latencies_ms.extend(outside.latencies_ms);
            (out, collected)
        })
        .await
}

impl Collector {
    pub fn get(&self, name: &str) -> f64 {
        self.counts.get(name).copied().unwrap_or(0.0)
    }

    /// The EMF object: metrics with the `Source` dimension and, for alarms
    /// across sources, with no dimension at all.
    pub fn to_emf(
        &self,
        namespace: &str,
        source: &str,
        timestamp_ms: u64,
        request_id: &str,
    ) -> Value {
        let mut defs: Vec<Value> = self
            .counts
            .keys()
            .map(|k| json!({"Name": k, "Unit": "Count"}))
            .collect();
        let mut root = Map::new();
        if !self.latencies_ms.is_empty() {
            defs.push(json!({"Name": names::DEFENDER_LATENCY, "Unit": "Milliseconds"}));
            root.insert(names::DEFENDER_LATENCY.into(), json!(self.latencies_ms));
        }
        for (k, v) in &self.counts {
            root.insert((*k).into(), json!(v));
        }
        root.insert("Source".into(), json!(source));
        let dimensions = match &self.tenant {
            Some(t) => {
                root.insert("Tenant".into(), json!(t));
                json!([["Source"], ["Tenant"], []])
            }
            None => json!([["Source"], []]),
        };
        root.insert("function_request_id".into(), json!(request_id));
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": dimensions,
                    "Metrics": defs,
                }]
            }),
        );
        Value::Object(root)
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.latencies_ms.is_empty()
    }

    /// Writes the EMF line to stdout, where the Lambda log agent reads it.
    pub fn emit(&self, namespace: &str, source: &str, request_id: &str) {
        if self.is_empty() {
            return;
        }
        println!("{}", self.to_emf(namespace, source, now_ms(), request_id));
    }
}

/// One health check's EMF object: `HealthCheckFailed` (1 failed, 0
/// passed) with the dimension `Check` (and `Tenant` where given), and with
/// none, for the one alarm over every check.
pub fn check_emf(
    namespace: &str,
    check: &str,
    failed: bool,
    tenant: Option<&str>,
    timestamp_ms: u64,
) -> Value {
    let mut dims = vec![json!(["Check"]), json!([])];
    let mut root = Map::new();
    root.insert(names::HEALTH_CHECK_FAILED.into(), json!(u8::from(failed)));
    root.insert("Check".into(), json!(check));
    if let Some(t) = tenant {
        dims.insert(1, json!(["Check", "Tenant"]));
        root.insert("Tenant".into(), json!(t));
    }
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": dims,
                "Metrics": [{"Name": names::HEALTH_CHECK_FAILED, "Unit": "Count"}],
            }]
        }),
    );
    Value::Object(root)
}

/// Writes one health check's EMF line to stdout.
pub fn emit_check(namespace: &str, check: &str, failed: bool, tenant: Option<&str>) {
    println!("{}", check_emf(namespace, check, failed, tenant, now_ms()));
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_inside_the_scope_and_picks_up_what_came_before() {
        // As during init. Other unit tests record outside a scope too, so
        // this one checks only its own name.
        count("OutsideForTest");
        let ((), c) = scope(async {
            count("offboard_requested");
            add("offboard_requested", 2.0);
            defender_latency(Duration::from_millis(12));
        })
        .await;
        assert_eq!(c.get("offboard_requested"), 3.0);
        assert_eq!(c.get("OutsideForTest"), 1.0);
        assert_eq!(c.latencies_ms, vec![12.0]);
        let ((), next) = scope(async {}).await;
        assert_eq!(next.get("OutsideForTest"), 0.0, "init metrics go out once");
        assert_eq!(next.get("offboard_requested"), 0.0);
    }

    #[test]
    fn a_check_line_carries_its_check_as_a_dimension() {
        let v = check_emf("Ns", "token", true, None, 1);
        assert_eq!(v["HealthCheckFailed"], 1);
        assert_eq!(v["Check"], "token");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Check"], []])
        );
        let v = check_emf("Ns", "secret", false, Some("contoso"), 1);
        assert_eq!(v["HealthCheckFailed"], 0);
        assert_eq!(v["Tenant"], "contoso");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Check"], ["Check", "Tenant"], []])
        );
    }

    /// The EMF specification's required structure.
    #[test]
    fn emf_has_the_required_structure() {
        let mut c = Collector::default();
        c.counts.insert("failed", 1.0);
        c.counts.insert(names::AUTH_REJECTED, 2.0);
        c.latencies_ms = vec![10.5, 20.0];
        let v = c.to_emf("MdeOffboard", "jira", 1_795_683_600_000, "req-1");
        let aws = &v["_aws"];
        assert_eq!(aws["Timestamp"], 1_795_683_600_000u64);
        let cwm = aws["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(cwm.len(), 1);
        assert_eq!(cwm[0]["Namespace"], "MdeOffboard");
        for set in cwm[0]["Dimensions"].as_array().unwrap() {
            for d in set.as_array().unwrap() {
                assert!(
                    v.get(d.as_str().unwrap()).is_some_and(Value::is_string),
                    "dimension {d} is a top-level string"
                );
            }
        }
        for m in cwm[0]["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            let value = &v[name];
            assert!(
                value.is_number()
                    || value
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_number)),
                "{name}"
            );
        }
        assert_eq!(v["failed"], 1.0);
        assert_eq!(v["DefenderLatency"], json!([10.5, 20.0]));
    }
}
