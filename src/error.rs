//! The errors a request can end with, and the one place each becomes an
//! HTTP status and a JSON body.

use std::time::Duration;

use http::StatusCode;
use thiserror::Error;

use crate::domain::defender::DefenderError;
use crate::domain::ledger::LedgerError;
use crate::domain::limits::retry_after_secs;
use crate::domain::model::FieldError;
use crate::domain::secret::CredentialError;
use crate::intake::auth::AuthError;
use crate::intake::generic::JsonError;
use crate::intake::sources::StaleError;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method {method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("the body is larger than 256 KiB")]
    TooLarge,
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    #[error("the signature could not be verified: {0}")]
    Unauthorized(#[from] AuthError),
    /// The caller's credentials could not be checked now (Entra ID's keys
    /// unreachable): never an acceptance, a retry later.
    #[error(
        "the request's credentials cannot be checked at the moment; retry later (the function's log says why)"
    )]
    AuthUnavailable,
    #[error("the delivery is not fresh: {0}")]
    Stale(#[from] StaleError),
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error(
        "field 'devices' names {given} devices; at most {max} may be named in one request{hint}"
    )]
    TooManyDevices {
        given: usize,
        max: usize,
        hint: &'static str,
    },
    #[error("field 'mode' is \"queue\", but no queue is configured (QUEUE_URL)")]
    QueueNotConfigured,
    #[error(
        "field 'callback_url' asks for each device's final outcome, but this deployment cannot follow an offboard to its end: that needs the ledger (LEDGER_TABLE) and the queue (QUEUE_URL)"
    )]
    TrackingUnavailable,
    #[error("Defender knows no machine action '{0}'")]
    ActionNotFound(String),
    #[error("{0}")]
    QueueUnavailable(crate::domain::queue::Shortfall),
    #[error("no webhook source is named '{0}'")]
    UnknownSource(String),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("Defender: {0}")]
    Defender(DefenderError),
    #[error("this delivery is still being processed by another invocation; retry after {}s", retry_after_secs(*.0))]
    InProgress(Duration),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the Defender application lacks the {} application permission: grant it with admin consent in Entra ID (API permissions, WindowsDefenderATP); dry runs still work", .0.join(" and "))]
    MissingPermission(Vec<&'static str>),
    #[error("machine action '{action_id}' is already {status} and cannot be cancelled")]
    NotCancellable { action_id: String, status: String },
    #[error(
        "machine action '{action_id}' is not an offboard ({action_type}); only offboards are cancelled here"
    )]
    NotAnOffboard {
        action_id: String,
        action_type: String,
    },
    #[error(
        "this delivery id was already used for another request (another route or body); sign each request with a new id"
    )]
    DeliveryIdReused,
    #[error("{}", tenant_message(.0))]
    Tenant(crate::domain::tenant::TenantRefusal),
}

fn tenant_message(r: &crate::domain::tenant::TenantRefusal) -> String {
    use crate::domain::tenant::TenantRefusal;
    match r {
        TenantRefusal::Unknown { reason, .. } => reason.clone(),
        TenantRefusal::NotAllowed(t) => {
            format!("this caller may not act for the tenant '{t}'; nothing was called")
        }
    }
}

impl ApiError {
    /// Each error's status, code and `Retry-After`, in one place.
    fn answer(&self) -> (StatusCode, &'static str, Option<Duration>) {
        use StatusCode as S;
        let soon = Some(Duration::from_secs(10));
        match self {
            Self::NoRoute(_) => (S::NOT_FOUND, "not_found", None),
            Self::UnknownSource(_) => (S::NOT_FOUND, "unknown_source", None),
            Self::ActionNotFound(_) => (S::NOT_FOUND, "action_not_found", None),
            Self::MethodNotAllowed { .. } => (S::METHOD_NOT_ALLOWED, "method_not_allowed", None),
            Self::TooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large", None),
            Self::NotJson(_) => (S::BAD_REQUEST, "invalid_json", None),
            Self::Unauthorized(_) => (S::UNAUTHORIZED, "unauthorized", None),
            Self::AuthUnavailable => (S::SERVICE_UNAVAILABLE, "auth_unavailable", soon),
            Self::Stale(_) => (S::UNAUTHORIZED, "stale", None),
            Self::Field(e) => match e {
                FieldError::Missing { .. } => (S::BAD_REQUEST, "missing_field", None),
                FieldError::WrongType { .. } => (S::BAD_REQUEST, "wrong_type", None),
                FieldError::Unknown { .. } => (S::BAD_REQUEST, "unknown_field", None),
                // A repeated key is malformed JSON for this API, whatever a
                // lenient parser makes of it.
                FieldError::Duplicate { .. } => (S::BAD_REQUEST, "invalid_json", None),
                FieldError::OutOfBounds { .. } => (S::UNPROCESSABLE_ENTITY, "invalid_value", None),
                FieldError::CallbackNotAllowed { .. } => {
                    (S::UNPROCESSABLE_ENTITY, "callback_not_allowed", None)
                }
            },
            Self::TooManyDevices { .. } => (S::UNPROCESSABLE_ENTITY, "too_many_devices", None),
            Self::QueueNotConfigured => (S::UNPROCESSABLE_ENTITY, "queue_not_configured", None),
            Self::TrackingUnavailable => (S::UNPROCESSABLE_ENTITY, "tracking_unavailable", None),
            Self::QueueUnavailable(_) => (S::SERVICE_UNAVAILABLE, "queue_unavailable", soon),
            Self::Credentials(e) => {
                let code = match e {
                    CredentialError::BadSecret(_) => "bad_secret",
                    CredentialError::SecretRefused(_) => "secret_refused",
                    CredentialError::SecretUnavailable(_) => "secret_unavailable",
                    CredentialError::BadCredentials(_) => "bad_credentials",
                    CredentialError::LoginUnavailable(_) => "login_unavailable",
                    CredentialError::LoginRedirected(_) => "login_redirected",
                    CredentialError::FederationDisabled => "federation_disabled",
                    CredentialError::IdentityTokenRefused(_) => "identity_token_refused",
                    CredentialError::IdentityTokenUnavailable(_) => "identity_token_unavailable",
                    CredentialError::AssertionRefused(r) => r.code(),
                };
                if e.is_retryable() {
                    (S::SERVICE_UNAVAILABLE, code, soon)
                } else {
                    (S::INTERNAL_SERVER_ERROR, code, None)
                }
            }
            Self::Defender(e) => match e.retry_after() {
                Some(ra) => (S::SERVICE_UNAVAILABLE, "defender_unavailable", Some(ra)),
                None => (S::BAD_GATEWAY, "defender_error", None),
            },
            Self::InProgress(ra) => (S::CONFLICT, "in_progress", Some(*ra)),
            Self::NotCancellable { .. } => (S::CONFLICT, "not_cancellable", None),
            Self::NotAnOffboard { .. } => (S::CONFLICT, "not_an_offboard", None),
            Self::DeliveryIdReused => (S::CONFLICT, "delivery_id_reused", None),
            Self::Tenant(crate::domain::tenant::TenantRefusal::Unknown { .. }) => {
                (S::UNPROCESSABLE_ENTITY, "unknown_tenant", None)
            }
            Self::Tenant(crate::domain::tenant::TenantRefusal::NotAllowed(_)) => {
                (S::FORBIDDEN, "tenant_not_allowed", None)
            }
            Self::MissingPermission(_) => (S::INTERNAL_SERVER_ERROR, "missing_permission", None),
            Self::Ledger(e @ LedgerError::Unavailable(_)) => (
                S::SERVICE_UNAVAILABLE,
                "ledger_unavailable",
                e.retry_after(),
            ),
            Self::Ledger(LedgerError::Refused(_)) => {
                (S::INTERNAL_SERVER_ERROR, "ledger_refused", None)
            }
        }
    }

    /// The contract's error body: `{"error": {"code", "message"}}`.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code(), "message": self.message()}}).to_string()
    }

    pub fn status(&self) -> StatusCode {
        self.answer().0
    }

    pub fn code(&self) -> &'static str {
        self.answer().1
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.answer().2
    }

    /// The one sentence the caller reads. A refused caller learns nothing
    /// of the configuration (no key name, scheme setting or upstream
    /// error), and no answer carries AWS's own error text: the log has both.
    pub fn message(&self) -> String {
        let mut m = match self {
            Self::Unauthorized(_) => {
                "the request could not be authenticated; the function's log says why".into()
            }
            Self::Ledger(_) => {
                "the ledger table could not be used; the function's log says why".into()
            }
            Self::Credentials(CredentialError::BadSecret(s)) => {
                format!("the function's secret is not usable: {s}")
            }
            other => other.to_string(),
        };
        if !m.ends_with('.') {
            m.push('.');
        }
        m
    }
}

impl From<JsonError> for ApiError {
    fn from(e: JsonError) -> Self {
        match e {
            JsonError::Syntax(m) => Self::NotJson(m),
            JsonError::Field(f) => Self::Field(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::http::error_response;
    use crate::support::webhook_sig::SigError;
    use lambda_http::{Body, Response};

    fn body_of(r: &Response<Body>) -> serde_json::Value {
        match r.body() {
            Body::Text(t) => serde_json::from_str(t).unwrap(),
            other => panic!("unexpected body {other:?}"),
        }
    }

    #[test]
    fn every_error_has_the_contract_shape() {
        let errors = vec![
            ApiError::NoRoute("/x".into()),
            ApiError::TooLarge,
            ApiError::NotJson("eof".into()),
            ApiError::Unauthorized(AuthError::Signature(SigError::NoMatch)),
            ApiError::Field(FieldError::Missing {
                field: "ticket".into(),
            }),
            ApiError::TooManyDevices {
                given: 30,
                max: 25,
                hint: "",
            },
            ApiError::Credentials(CredentialError::BadSecret(
                "the secret has no key 'client_id'".into(),
            )),
            ApiError::Credentials(CredentialError::SecretUnavailable("timed out".into())),
        ];
        for e in errors {
            let status = e.status();
            let r = error_response(e);
            assert_eq!(r.status(), status);
            assert_eq!(r.headers()["content-type"], "application/json");
            let b = body_of(&r);
            let code = b["error"]["code"].as_str().unwrap();
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}"
            );
            assert!(b["error"]["message"].as_str().unwrap().ends_with('.'));
        }
    }

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(
            ApiError::Field(FieldError::WrongType {
                field: "devices".into(),
                expected: "x"
            })
            .status(),
            400
        );
        assert_eq!(
            ApiError::Field(FieldError::OutOfBounds {
                field: "comment".into(),
                reason: "r".into()
            })
            .status(),
            422
        );
        assert_eq!(ApiError::QueueNotConfigured.status(), 422);
        let stale = ApiError::Stale(StaleError::Missing("/timestamp".into()));
        assert_eq!(
            (stale.status(), stale.code()),
            (StatusCode::UNAUTHORIZED, "stale")
        );
        assert!(stale.message().contains("/timestamp"));
        let bad = ApiError::Credentials(CredentialError::BadSecret(
            "the secret has no key 'client_secret'".into(),
        ));
        assert_eq!(
            (bad.status(), bad.code()),
            (StatusCode::INTERNAL_SERVER_ERROR, "bad_secret")
        );
        assert!(bad.message().contains("client_secret"));
        let down = ApiError::Credentials(CredentialError::SecretUnavailable("x".into()));
        let r = error_response(down);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "10");
    }

    /// I2: what a caller who has not authenticated learns. The key a source
    /// reads, the header its scheme names, and what AWS said stay in the
    /// log. (A stale delivery is authenticated: its answer names the
    /// pointer, which the sender can check.)
    #[test]
    fn refusals_name_no_key_scheme_setting_or_upstream_error() {
        let refusals = [
            ApiError::Unauthorized(AuthError::NoSecret("jira".into())),
            ApiError::Unauthorized(AuthError::WeakKey {
                key: "pagerduty".into(),
                problem: crate::intake::auth::KeyProblem::NotUserPassword,
            }),
            ApiError::Unauthorized(AuthError::Signature(
                crate::support::webhook_sig::SigError::MissingHeader("x-mde-token"),
            )),
            ApiError::Ledger(LedgerError::Unavailable(
                "AccessDeniedException: arn:aws:dynamodb:us-east-1:123456789012:table/t".into(),
            )),
            ApiError::Credentials(
                CredentialError::SecretRefused(
                    "AccessDeniedException: arn:aws:secretsmanager:us-east-1:123456789012".into(),
                )
                .for_an_unknown_caller(),
            ),
        ];
        for e in refusals {
            let body = e.body();
            for leak in [
                "jira",
                "pagerduty",
                "webhook_secrets",
                "x-mde-token",
                "arn:",
                "123456789012",
            ] {
                assert!(!body.contains(leak), "{leak} in {body}");
            }
        }
    }
}
