//! Adapter: the outcome callback, a POST signed as Standard Webhooks signs
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`
//! over `{id}.{timestamp}.{body}`), so any receiver that verifies
//! Standard Webhooks (Svix's libraries, a SOAR's webhook action) can check
//! it came from this function.

use std::convert::Infallible;
use std::time::Duration;

use thiserror::Error;

use futures_util::future::BoxFuture;

use super::{Sent, send_retried};
use crate::domain::follow_up::{FinalOutcome, FollowUp};
use crate::domain::limits::Deadline;
use crate::domain::secret::AppSecret;
use crate::ops::metrics;
use crate::support::time::unix_now;
use crate::support::webhook_sig::StandardWebhooks;

/// The `webhook_secrets` key that signs callbacks.
pub const CALLBACK_SECRET_KEY: &str = "callback";
/// Waits before the second, third and fourth attempt: bounded, so a
/// receiver that stays down costs the worker seconds, not its invocation.
pub const RETRY_WAITS: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SigningKeyError {
    #[error("the secret has no 'webhook_secrets.callback' to sign callbacks with")]
    Missing,
    #[error(
        "the secret's 'webhook_secrets.callback' is not a whsec_ value with at least 16 bytes of key"
    )]
    Invalid,
}

/// A callback signing key: a `whsec_<base64>` value, as Standard Webhooks
/// libraries read it. It signs `v1,<base64 HMAC-SHA256>` of
/// `{id}.{timestamp}.{body}`, and is never printed.
pub fn signing_key(value: &str) -> Result<StandardWebhooks, SigningKeyError> {
    if !value.starts_with("whsec_") {
        return Err(SigningKeyError::Invalid);
    }
    StandardWebhooks::from_secret(value).map_err(|_| SigningKeyError::Invalid)
}

/// The callback follow-up: the final outcome POSTed, signed, to the
/// request's `callback_url`.
pub struct Callbacks {
    http: reqwest::Client,
}

impl Callbacks {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

impl FollowUp for Callbacks {
    fn deliver<'a>(
        &'a self,
        o: &'a FinalOutcome<'a>,
        secret: &'a AppSecret,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let t = o.action;
            let Some(url) = &t.callback_url else {
                return;
            };
            let key = secret
                .webhook_secrets(CALLBACK_SECRET_KEY)
                .first()
                .ok_or(SigningKeyError::Missing)
                .and_then(|v| signing_key(v));
            let key = match key {
                Ok(k) => k,
                Err(e) => {
                    metrics::count(metrics::names::CALLBACK_FAILED);
                    tracing::warn!(action_id = %t.action_id, error = %e, "callback not sent");
                    return;
                }
            };
            let body = serde_json::json!({
                "type": "offboard.outcome",
                "ticket": t.ticket,
                "device": t.device,
                "machine_id": t.machine_id,
                "action_id": t.action_id,
                "status": o.status.as_str(),
                "detail": o.detail,
                "requested_at": o.requested_at,
                "finished_at": o.finished_at,
            })
            .to_string();
            // One id per outcome, so a receiver can drop a duplicate.
            let id = format!("msg_{}_{}", t.action_id, o.status.as_str());
            let request = || {
                let ts = unix_now();
                Ok::<_, Infallible>(
                    self.http
                        .post(url)
                        .header("content-type", "application/json")
                        .header("webhook-id", &id)
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", key.sign(&id, ts, body.as_bytes()))
                        .body(body.clone()),
                )
            };
            let Ok(sent) = send_retried(&RETRY_WAITS, deadline, false, request).await;
            match sent {
                Sent::Delivered(attempts) => {
                    tracing::info!(action_id = %t.action_id, attempts, "callback delivered");
                }
                Sent::Refused(status) => {
                    metrics::count(metrics::names::CALLBACK_FAILED);
                    tracing::warn!(action_id = %t.action_id, status, "callback refused (4xx); not retried");
                }
                Sent::GaveUp(attempts) => {
                    metrics::count(metrics::names::CALLBACK_FAILED);
                    tracing::warn!(action_id = %t.action_id, attempts, "callback failed on every attempt; given up");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signs_as_the_standard_webhooks_example() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn keys_must_be_whsec_and_long_enough() {
        for bad in ["plain-secret-of-length", "whsec_c2hvcnQ=", "whsec_!!"] {
            assert_eq!(
                signing_key(bad).unwrap_err(),
                SigningKeyError::Invalid,
                "{bad}"
            );
        }
        let key = StandardWebhooks::from_bytes(vec![1; 16]);
        assert!(!format!("{key:?}").contains('1'));
    }
}
