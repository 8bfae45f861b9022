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

use std::ops::ControlFlow;
use std::time::Duration;

use serde_json::{Value, json};
use thiserror::Error;

use futures_util::future::BoxFuture;

use crate::adapters::callback::CALL_TIMEOUT;
use crate::domain::follow_up::{FinalOutcome, FollowUp};
use crate::domain::limits::Deadline;
use crate::domain::notify::{NotifyTarget, WriteBackCreds, note_text};
use crate::domain::secret::AppSecret;
use crate::ops::metrics;
use crate::support::retry;

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

/// Writes `text` to the target's ticket.
pub async fn write_back(
    http: &reqwest::Client,
    target: &NotifyTarget,
    creds: &WriteBackCreds,
    text: &str,
    deadline: &Deadline,
) -> Result<(), NotifyError> {
    let system = target.system();
    let bad = |e: &String| NotifyError::BadCredentials(e.clone());
    let build = |http: &reqwest::Client| -> Result<reqwest::RequestBuilder, NotifyError> {
        Ok(match target {
            NotifyTarget::Jira { issue } => {
                let c = creds
                    .jira
                    .as_ref()
                    .ok_or(NotifyError::NoCredentials("jira_api"))?
                    .as_ref()
                    .map_err(bad)?;
                http.post(format!("{}/rest/api/3/issue/{issue}/comment", c.base_url))
                    .basic_auth(&c.user, Some(&c.password.0))
                    .json(&json!({ "body": adf(text) }))
            }
            NotifyTarget::Servicenow { table, sys_id } => {
                let c = creds
                    .servicenow
                    .as_ref()
                    .ok_or(NotifyError::NoCredentials("servicenow_api"))?
                    .as_ref()
                    .map_err(bad)?;
                http.patch(format!("{}/api/now/table/{table}/{sys_id}", c.base_url))
                    .basic_auth(&c.user, Some(&c.password.0))
                    .header("accept", "application/json")
                    .json(&json!({ "work_notes": text }))
            }
            NotifyTarget::Pagerduty { incident } => {
                let c = creds
                    .pagerduty
                    .as_ref()
                    .ok_or(NotifyError::NoCredentials("pagerduty_api"))?
                    .as_ref()
                    .map_err(bad)?;
                http.post(format!("{}/incidents/{incident}/notes", c.base_url))
                    .header("authorization", format!("Token token={}", c.token.0))
                    .header("from", &c.from)
                    .header("accept", "application/vnd.pagerduty+json;version=2")
                    .json(&json!({ "note": { "content": text } }))
            }
        })
    };
    let timeout = || deadline.call_timeout().map(|t| t.min(CALL_TIMEOUT));
    let attempt = |_, timeout| {
        let request = build(http);
        async move {
            let sent = match request {
                Ok(request) => request.timeout(timeout).send().await,
                Err(e) => return ControlFlow::Break(Err(e)),
            };
            match sent {
                Ok(r) if r.status().is_success() => ControlFlow::Break(Ok(())),
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    ControlFlow::Break(Err(NotifyError::Refused {
                        system,
                        status: r.status().as_u16(),
                    }))
                }
                Ok(_) | Err(_) => ControlFlow::Continue(()),
            }
        }
    };
    retry::bounded(&RETRY_WAITS, timeout, |w| deadline.fits(w), attempt)
        .await
        .unwrap_or_else(|attempts| Err(NotifyError::GaveUp { system, attempts }))
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
            let text = note_text(
                &t.device,
                &t.machine_id,
                &t.action_id,
                o.status.as_str(),
                o.detail,
                o.finished_at,
            );
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
            &WriteBackCreds::default(),
            "x",
            &Deadline::after(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
        assert_eq!(e, NotifyError::NoCredentials("jira_api"));
        assert!(!e.is_failure());
    }
}
