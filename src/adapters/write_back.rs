//! Adapter: the write-back calls, each in the shape its API documents.
//! - Jira Cloud: `POST {base}/rest/api/3/issue/{key}/comment`, basic auth
//!   `email:api_token`, `{"body": <Atlassian Document Format doc>}`; 201.
//! - ServiceNow: `PATCH {base}/api/now/table/{table}/{sys_id}`, basic auth,
//!   `{"work_notes": "..."}`; 200.
//! - PagerDuty: `POST {base}/incidents/{id}/notes`, `Authorization: Token
//!   token=...`, `From: <email>`, `Accept: application/vnd.pagerduty+json;
//!   version=2`, `{"note": {"content": "..."}}`; 201.
//!
//! 5xx, 429 and network errors are retried a bounded number of times;
//! any other 4xx is not (credentials, a deleted record: a retry cannot cure
//! it).

use std::time::Duration;

use serde_json::{Map, Value, json};
use thiserror::Error;

use futures_util::future::BoxFuture;

use super::{Sent, send_retried};
use crate::domain::follow_up::{FinalOutcome, FollowUp};
use crate::domain::limits::Deadline;
use crate::domain::notify::NotifyTarget;
use crate::domain::secret::AppSecret;
use crate::ops::metrics;
use crate::support::url_policy::is_https_or_loopback;

/// Waits before the second and third attempt.
pub const RETRY_WAITS: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(750)];

/// Why a write-back did not land. Never carries a credential or the
/// answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotifyError {
    #[error("the secret has no '{0}'; nothing written")]
    NoCredentials(&'static str),
    #[error("{0}")]
    BadCredentials(String),
    #[error("{system} refused the write-back: HTTP {status}")]
    Refused { system: &'static str, status: u16 },
    #[error("{system} did not take the write-back after {attempts} attempts")]
    GaveUp { system: &'static str, attempts: u32 },
}

impl NotifyError {
    /// A missing credential is the operator's choice, not a failure.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::NoCredentials(_))
    }
}

/// The comment as a one-paragraph Atlassian Document Format document.
pub fn adf(text: &str) -> Value {
    json!({"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": text}]}
    ]})
}

pub const PAGERDUTY_API: &str = "https://api.pagerduty.com";

/// One section of the secret (`jira_api`, say): its `base_url` (`default`
/// when it names none) and the two values `names` names, in that order.
/// Read only when a write-back needs them, so a typo there never stops
/// offboards.
fn creds(
    sections: &Map<String, Value>,
    key: &'static str,
    default: Option<&str>,
    names: [&str; 2],
) -> Result<(String, [String; 2]), NotifyError> {
    let bad = |what: String| NotifyError::BadCredentials(format!("the secret's '{key}{what}"));
    let o = sections
        .get(key)
        .ok_or(NotifyError::NoCredentials(key))?
        .as_object()
        .ok_or_else(|| bad("' must be an object".into()))?;
    let base_url = match (o.get("base_url").and_then(Value::as_str), default) {
        (None, Some(default)) => default.to_string(),
        (None, None) => return Err(bad("' has no base_url".into())),
        (Some(v), _) => match reqwest::Url::parse(v.trim()) {
            Ok(url) if is_https_or_loopback(&url) => v.trim().trim_end_matches('/').to_string(),
            Ok(_) => return Err(bad(".base_url' must be https://".into())),
            Err(_) => return Err(bad(".base_url' is not a URL".into())),
        },
    };
    let text = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().to_string())
            .ok_or_else(|| bad(format!("' has no '{k}'")))
    };
    Ok((base_url, [text(names[0])?, text(names[1])?]))
}

/// Writes `text` to the target's ticket, with the credentials `sections`
/// (the secret's `*_api` sections) hold for its system.
pub async fn write_back(
    http: &reqwest::Client,
    target: &NotifyTarget,
    sections: &Map<String, Value>,
    text: &str,
    deadline: &Deadline,
) -> Result<(), NotifyError> {
    let system = target.system();
    let build = || {
        Ok(match target {
            NotifyTarget::Jira { issue } => {
                let (base, [email, token]) =
                    creds(sections, "jira_api", None, ["email", "api_token"])?;
                http.post(format!("{base}/rest/api/3/issue/{issue}/comment"))
                    .basic_auth(email, Some(token))
                    .json(&json!({ "body": adf(text) }))
            }
            NotifyTarget::Servicenow { table, sys_id } => {
                let (base, [user, password]) =
                    creds(sections, "servicenow_api", None, ["user", "password"])?;
                http.patch(format!("{base}/api/now/table/{table}/{sys_id}"))
                    .basic_auth(user, Some(password))
                    .header("accept", "application/json")
                    .json(&json!({ "work_notes": text }))
            }
            NotifyTarget::Pagerduty { incident } => {
                let (base, [token, from]) = creds(
                    sections,
                    "pagerduty_api",
                    Some(PAGERDUTY_API),
                    ["token", "from"],
                )?;
                http.post(format!("{base}/incidents/{incident}/notes"))
                    .header("authorization", format!("Token token={token}"))
                    .header("from", from)
                    .header("accept", "application/vnd.pagerduty+json;version=2")
                    .json(&json!({ "note": { "content": text } }))
            }
        })
    };
    match send_retried(&RETRY_WAITS, deadline, true, build).await? {
        Sent::Delivered(_) => Ok(()),
        Sent::Refused(status) => Err(NotifyError::Refused { system, status }),
        Sent::GaveUp(attempts) => Err(NotifyError::GaveUp { system, attempts }),
    }
}

/// The note text, the same words in each system.
fn note_text(o: &FinalOutcome<'_>) -> String {
    let t = o.action;
    let detail = match o.detail {
        "" => String::new(),
        d if d.ends_with('.') => format!(" {d}"),
        d => format!(" {d}."),
    };
    format!(
        "mde-offboard: the offboard of {} (Defender machine {}) ended {} at {}; Defender action {}.{detail}",
        t.device,
        t.machine_id,
        o.status.as_str(),
        o.finished_at,
        t.action_id
    )
}

/// The ticket follow-up: the final outcome as a note on the ticket a
/// source's `notify` names.
pub struct WriteBacks {
    http: reqwest::Client,
}

impl WriteBacks {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

impl FollowUp for WriteBacks {
    fn deliver<'a>(
        &'a self,
        o: &'a FinalOutcome<'a>,
        secret: &'a AppSecret,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let t = o.action;
            let Some(target) = &t.notify else {
                return;
            };
            let text = note_text(o);
            let system = target.system();
            match write_back(&self.http, target, &secret.write_back, &text, deadline).await {
                Ok(()) => {
                    tracing::info!(action_id = %t.action_id, ticket = %t.ticket, system, "outcome written back to the ticket");
                }
                Err(e) if !e.is_failure() => {
                    tracing::info!(action_id = %t.action_id, system, reason = %e, "no write-back");
                }
                Err(e) => {
                    metrics::count(metrics::names::NOTIFY_FAILED);
                    tracing::warn!(action_id = %t.action_id, ticket = %t.ticket, system, error = %e, "write-back failed; the outcome stands");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_comment_is_a_valid_adf_doc() {
        let d = adf("done");
        assert_eq!(d["type"], "doc");
        assert_eq!(d["version"], 1);
        assert_eq!(d["content"][0]["content"][0]["text"], "done");
    }

    #[tokio::test]
    async fn without_credentials_nothing_is_sent_and_it_is_not_a_failure() {
        let e = write_back(
            &reqwest::Client::new(),
            &NotifyTarget::Jira {
                issue: "IT-1".into(),
            },
            &Map::new(),
            "x",
            &Deadline::after(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
        assert_eq!(e, NotifyError::NoCredentials("jira_api"));
        assert!(!e.is_failure());
    }

    #[test]
    fn credentials_are_read_only_when_whole_and_never_printed() {
        let obj = json!({
            "jira_api": {"base_url": "https://contoso.atlassian.net/", "email": "a@b.c", "api_token": "tok-secret"},
            "servicenow_api": {"base_url": "http://evil.example.com", "user": "u", "password": "p"},
            "pagerduty_api": {"token": "pd-secret"}
        });
        let c = obj.as_object().unwrap();
        let jira = creds(c, "jira_api", None, ["email", "api_token"]).unwrap();
        assert_eq!(jira.0, "https://contoso.atlassian.net");
        assert!(
            creds(c, "servicenow_api", None, ["user", "password"]).is_err(),
            "plain http off loopback"
        );
        let pd = creds(c, "pagerduty_api", Some(PAGERDUTY_API), ["token", "from"])
            .unwrap_err()
            .to_string();
        assert!(pd.contains("'from'"), "{pd}");
        // The secret holds the sections; its Debug never shows them.
        let mut secret = obj.clone();
        secret["tenant_id"] = json!("t");
        secret["client_id"] = json!("c");
        secret["client_secret"] = json!("s");
        let secret = AppSecret::parse(&secret.to_string()).unwrap();
        assert_eq!(&secret.write_back, c);
        let printed = format!("{secret:?}");
        assert!(!printed.contains("tok-secret") && !printed.contains("pd-secret"));
        assert_eq!(
            creds(&Map::new(), "jira_api", None, ["email", "api_token"]).unwrap_err(),
            NotifyError::NoCredentials("jira_api")
        );
    }
}
