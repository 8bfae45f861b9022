//! The errors a request can end with, and the one place each becomes an
//! HTTP status and a JSON body.

use std::time::Duration;

use lambda_http::http::StatusCode;
use lambda_http::{Body, Response};
use serde_json::json;
use thiserror::Error;

use crate::domain::defender::DefenderError;
use crate::domain::ledger::LedgerError;
use crate::domain::limits::retry_after_secs;
use crate::domain::model::FieldError;
use crate::domain::secret::CredentialError;
use crate::intake::auth::AuthError;
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
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute(_) | Self::UnknownSource(_) | Self::ActionNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotJson(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) | Self::Stale(_) => StatusCode::UNAUTHORIZED,
            Self::Field(
                FieldError::Missing { .. }
                | FieldError::WrongType { .. }
                | FieldError::Unknown { .. }
                | FieldError::Duplicate { .. },
            ) => StatusCode::BAD_REQUEST,
            Self::Field(FieldError::OutOfBounds { .. } | FieldError::CallbackNotAllowed { .. })
            | Self::TooManyDevices { .. }
            | Self::QueueNotConfigured => StatusCode::UNPROCESSABLE_ENTITY,
            Self::QueueUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Credentials(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Credentials(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Defender(e) if e.retry_after().is_some() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Defender(_) => StatusCode::BAD_GATEWAY,
            Self::InProgress(_)
            | Self::NotCancellable { .. }
            | Self::NotAnOffboard { .. }
            | Self::DeliveryIdReused => StatusCode::CONFLICT,
            Self::MissingPermission(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Ledger(LedgerError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Ledger(LedgerError::Refused(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRoute(_) => "not_found",
            Self::UnknownSource(_) => "unknown_source",
            Self::ActionNotFound(_) => "action_not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::TooLarge => "payload_too_large",
            Self::NotJson(_) => "invalid_json",
            Self::Unauthorized(_) => "unauthorized",
            Self::Stale(_) => "stale",
            Self::Field(FieldError::Missing { .. }) => "missing_field",
            Self::Field(FieldError::WrongType { .. }) => "wrong_type",
            Self::Field(FieldError::OutOfBounds { .. }) => "invalid_value",
            Self::Field(FieldError::Unknown { .. }) => "unknown_field",
            // A repeated key is malformed JSON for this API, whatever a
            // lenient parser makes of it.
            Self::Field(FieldError::Duplicate { .. }) => "invalid_json",
            Self::Field(FieldError::CallbackNotAllowed { .. }) => "callback_not_allowed",
            Self::TooManyDevices { .. } => "too_many_devices",
            Self::QueueNotConfigured => "queue_not_configured",
            Self::QueueUnavailable(_) => "queue_unavailable",
            Self::Credentials(CredentialError::BadSecret(_)) => "bad_secret",
            Self::Credentials(CredentialError::SecretRefused(_)) => "secret_refused",
            Self::Credentials(CredentialError::SecretUnavailable(_)) => "secret_unavailable",
            Self::Credentials(CredentialError::BadCredentials(_)) => "bad_credentials",
            Self::Credentials(CredentialError::LoginUnavailable(_)) => "login_unavailable",
            Self::Credentials(CredentialError::LoginRedirected(_)) => "login_redirected",
            Self::Credentials(CredentialError::FederationDisabled) => "federation_disabled",
            Self::Credentials(CredentialError::IdentityTokenRefused(_)) => "identity_token_refused",
            Self::Credentials(CredentialError::IdentityTokenUnavailable(_)) => {
                "identity_token_unavailable"
            }
            Self::Credentials(CredentialError::AssertionRefused(r)) => r.code(),
            Self::Defender(e) if e.retry_after().is_some() => "defender_unavailable",
            Self::Defender(_) => "defender_error",
            Self::InProgress(_) => "in_progress",
            Self::MissingPermission(_) => "missing_permission",
            Self::NotCancellable { .. } => "not_cancellable",
            Self::NotAnOffboard { .. } => "not_an_offboard",
            Self::DeliveryIdReused => "delivery_id_reused",
            Self::Ledger(LedgerError::Unavailable(_)) => "ledger_unavailable",
            Self::Ledger(LedgerError::Refused(_)) => "ledger_refused",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Credentials(e) if e.is_retryable() => Some(Duration::from_secs(10)),
            Self::QueueUnavailable(_) => Some(Duration::from_secs(10)),
            Self::Defender(e) => e.retry_after(),
            Self::InProgress(ra) => Some(*ra),
            Self::Ledger(e) => e.retry_after(),
            _ => None,
        }
    }

    /// The one sentence the caller reads. Auth failures say little on
    /// purpose: which header was wrong, never what was expected.
    pub fn message(&self) -> String {
        let mut m = match self {
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

    pub fn into_response(self) -> Response<Body> {
        let mut b = Response::builder()
            .status(self.status())
            .header("content-type", "application/json");
        if let Some(ra) = self.retry_after() {
            b = b.header("retry-after", retry_after_secs(ra).to_string());
        }
        if let Self::MethodNotAllowed { allowed, .. } = &self {
            b = b.header("allow", *allowed);
        }
        let body = json!({"error": {"code": self.code(), "message": self.message()}});
        b.body(Body::Text(body.to_string()))
            .expect("static headers are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ApiError::Unauthorized(AuthError::NoMatch),
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
            let r = e.into_response();
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
        let r = down.into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "10");
    }
}
