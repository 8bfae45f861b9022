//! Adapter: EC2 Auto Scaling's `CompleteLifecycleAction` (always
//! `CONTINUE`) and `RecordLifecycleActionHeartbeat`, through the official
//! SDK client (Query protocol, SigV4), made on first use like the others
//! (`AWS_ENDPOINT_URL_AUTO_SCALING` points it elsewhere).

use futures_util::future::BoxFuture;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::adapters::aws::{self, LazyClient};
use crate::domain::lifecycle::{Answered, LifecycleAction, LifecycleActions, LifecycleError};

/// What AWS answers, with the code `ValidationError`, for a lifecycle
/// action that is over already (completed, or its hook timed out):
/// "No active Lifecycle Action found with token <token>" (or "with
/// instance ID <id>").
const ALREADY_OVER: &str = "no active lifecycle action found";

pub struct AutoScaling {
    client: LazyClient<aws_sdk_autoscaling::Client>,
}

impl AutoScaling {
    pub fn new(client: impl Into<LazyClient<aws_sdk_autoscaling::Client>>) -> Self {
        Self {
            client: client.into(),
        }
    }

    pub fn from_env() -> Self {
        Self::new(LazyClient::from_env())
    }
}

/// An SDK error as the domain sees it: over already, or a failure.
fn judge<E>(e: &SdkError<E, HttpResponse>) -> Result<Answered, LifecycleError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(se) = e {
        let over = se.err().code() == Some("ValidationError")
            && se
                .err()
                .message()
                .is_some_and(|m| m.to_ascii_lowercase().contains(ALREADY_OVER));
        if over {
            return Ok(Answered::AlreadyOver);
        }
    }
    let f = aws::sort(e);
    Err(LifecycleError {
        passing: f.passing,
        code: f.summary,
        detail: f.detail,
    })
}

impl LifecycleActions for AutoScaling {
    fn complete<'a>(
        &'a self,
        a: &'a LifecycleAction,
    ) -> BoxFuture<'a, Result<Answered, LifecycleError>> {
        Box::pin(async move {
            let sent = self
                .client
                .get()
                .await
                .complete_lifecycle_action()
                .auto_scaling_group_name(&a.group)
                .lifecycle_hook_name(&a.hook)
                .lifecycle_action_token(&a.token)
                // Never ABANDON: with an instance lifecycle policy that
                // retains on abandon, the instance would keep running.
                .lifecycle_action_result("CONTINUE")
                .send()
                .await;
            match sent {
                Ok(_) => Ok(Answered::Done),
                Err(e) => judge(&e),
            }
        })
    }

    fn heartbeat<'a>(
        &'a self,
        a: &'a LifecycleAction,
    ) -> BoxFuture<'a, Result<Answered, LifecycleError>> {
        Box::pin(async move {
            let sent = self
                .client
                .get()
                .await
                .record_lifecycle_action_heartbeat()
                .auto_scaling_group_name(&a.group)
                .lifecycle_hook_name(&a.hook)
                .lifecycle_action_token(&a.token)
                .send()
                .await;
            match sent {
                Ok(_) => Ok(Answered::Done),
                Err(e) => judge(&e),
            }
        })
    }
}
