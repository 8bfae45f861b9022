//! The health check (contract, "Health check"): the checks, in the order
//! they depend on each other, and the answer they make. Pure: what each
//! check found comes in as values.

use serde::Serialize;

/// One check's name, as the answer and the `Check` metric dimension say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    /// The secret is readable and well formed for the credential mode.
    Secret,
    /// Entra ID issues a token (a fresh one, never the cached one).
    Token,
    /// The token carries the application permissions offboarding needs.
    Permissions,
    /// `GET /api/machines?$top=1` answers 200 with a list.
    DefenderApi,
}

impl CheckName {
    pub const ALL: [CheckName; 4] = [
        Self::Secret,
        Self::Token,
        Self::Permissions,
        Self::DefenderApi,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Token => "token",
            Self::Permissions => "permissions",
            Self::DefenderApi => "defender_api",
        }
    }
}

/// What one check found: passed or failed, and a sentence saying what was
/// seen (for a failure: what changed, e.g. a status and an error code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Passed(String),
    Failed(String),
}

/// The Defender side of the check, from one fresh token: `None` for a
/// step that could not run (no token, no permissions to read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiProbe {
    pub token: Step,
    pub permissions: Option<Step>,
    pub defender_api: Option<Step>,
}

impl ApiProbe {
    /// A Defender port without credentials (an in-memory fake): nothing to
    /// check beyond being reachable, which it always is.
    pub fn nothing_to_check() -> Self {
        let passed = || Step::Passed("no credentials are used".into());
        Self {
            token: passed(),
            permissions: Some(passed()),
            defender_api: Some(passed()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: CheckName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub ok: bool,
    pub detail: String,
}

/// The checks, every name listed once and in order: a check that could not
/// run because an earlier one failed is `ok: false`, `not run`.
pub fn checks(secret: Step, api: Option<ApiProbe>) -> Vec<Check> {
    let (token, permissions, defender_api) = match api {
        Some(p) => (Some(p.token), p.permissions, p.defender_api),
        None => (None, None, None),
    };
    [Some(secret), token, permissions, defender_api]
        .into_iter()
        .zip(CheckName::ALL)
        .map(|(step, name)| {
            let (ok, detail) = match step {
                Some(Step::Passed(d)) => (true, d),
                Some(Step::Failed(d)) => (false, d),
                None => (false, "not run".to_string()),
            };
            Check {
                name,
                tenant: None,
                ok,
                detail,
            }
        })
        .collect()
}

/// The answer: `{"status": "ok" | "failing", "version", "checks"}`.
pub fn answer(checks: &[Check], version: &str) -> serde_json::Value {
    let status = match checks.iter().all(|c| c.ok) {
        true => "ok",
        false => "failing",
    };
    serde_json::json!({"status": status, "version": version, "checks": checks})
}

/// What the token's roles say of the permissions offboarding needs. A dry
/// run sends no offboard, so a deployment rehearsing with read permission
/// only (the go-live rehearsal) is healthy; anything else missing fails.
pub fn permissions(missing: Option<&[&str]>, offboard: &str, dry_run: bool) -> Step {
    match missing {
        None => Step::Passed(
            "the token's roles are not readable (an opaque token); Defender's answers will tell"
                .into(),
        ),
        Some([]) => Step::Passed("the token carries Machine.Offboard and machine read".into()),
        Some([only]) if *only == offboard && dry_run => Step::Passed(format!(
            "the token lacks {offboard}: enough for dry runs (DRY_RUN=true), not for offboarding"
        )),
        Some(missing) => Step::Failed(format!(
            "the application lacks the {} application permission: grant it with admin consent in Entra ID",
            missing.join(" and ")
        )),
    }
}

/// What Defender's answer to the list call says: 200 with a `value` list
/// passes; anything else fails naming what changed (the status and
/// Defender's error code, or the shape of a 200 that is not a list).
pub fn api_answer(path: &str, status: u16, body: &[u8], code: impl Fn(&[u8]) -> String) -> Step {
    if status == 200 {
        let listed = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .is_some_and(|v| v.get("value").is_some_and(serde_json::Value::is_array));
        return match listed {
            true => Step::Passed(format!("GET {path} answered 200")),
            false => Step::Failed(format!(
                "GET {path} answered 200 but not a list of machines (no 'value' array): the API changed"
            )),
        };
    }
    Step::Failed(format!(
        "GET {path} answered {status} (error code {})",
        code(body)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_secret_leaves_every_later_check_not_run() {
        let c = checks(Step::Failed("no key 'client_id'".into()), None);
        let names: Vec<_> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["secret", "token", "permissions", "defender_api"],
            "every check is listed, in order"
        );
        assert!(c.iter().all(|c| !c.ok));
        assert!(c[1..].iter().all(|c| c.detail == "not run"));
        assert_eq!(answer(&c, "0.2.0")["status"], "failing");
    }

    #[test]
    fn all_passed_is_ok_and_carries_the_version() {
        let c = checks(
            Step::Passed("read".into()),
            Some(ApiProbe::nothing_to_check()),
        );
        let a = answer(&c, "9.9.9");
        assert_eq!(a["status"], "ok");
        assert_eq!(a["version"], "9.9.9");
        assert_eq!(a["checks"][3]["name"], "defender_api");
        assert!(a["checks"][0].get("tenant").is_none());
    }

    #[test]
    fn a_token_refused_leaves_permissions_and_the_api_not_run() {
        let c = checks(
            Step::Passed("read".into()),
            Some(ApiProbe {
                token: Step::Failed("AADSTS7000215".into()),
                permissions: None,
                defender_api: None,
            }),
        );
        assert_eq!(
            c.iter().map(|c| c.ok).collect::<Vec<_>>(),
            [true, false, false, false]
        );
        assert_eq!(c[2].detail, "not run");
    }

    #[test]
    fn an_api_answer_that_changed_fails_naming_status_and_code() {
        let code = |b: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(b)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                .unwrap_or_else(|| "Unknown".into())
        };
        let p = "/api/machines?$top=1";
        assert!(matches!(
            api_answer(p, 200, br#"{"value": []}"#, code),
            Step::Passed(_)
        ));
        let Step::Failed(d) = api_answer(p, 410, br#"{"error": {"code": "ApiRetired"}}"#, code)
        else {
            panic!("a 410 fails")
        };
        assert!(d.contains("410") && d.contains("ApiRetired"), "{d}");
        let Step::Failed(d) = api_answer(p, 200, br#"{"machines": []}"#, code) else {
            panic!("a 200 without a list fails")
        };
        assert!(d.contains("'value'"), "{d}");
    }

    #[test]
    fn permissions_fail_unless_only_offboard_is_missing_in_a_dry_run() {
        let off = "Machine.Offboard";
        assert!(matches!(
            permissions(Some(&[]), off, false),
            Step::Passed(_)
        ));
        assert!(matches!(permissions(None, off, false), Step::Passed(_)));
        assert!(matches!(
            permissions(Some(&[off]), off, true),
            Step::Passed(_)
        ));
        let Step::Failed(d) = permissions(Some(&[off]), off, false) else {
            panic!("missing Machine.Offboard fails a live deployment")
        };
        assert!(d.contains("Machine.Offboard"), "{d}");
        assert!(matches!(
            permissions(Some(&["Machine.Read.All"]), off, true),
            Step::Failed(_)
        ));
    }
}
