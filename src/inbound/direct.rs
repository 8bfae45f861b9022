//! Events that do not come through HTTP: an EventBridge event from a rule,
//! and a direct invocation (`aws lambda invoke`, a Step Functions task)
//! whose payload is a generic body. IAM (the function's resource policy)
//! authenticated them before they arrived, so there is no signature to
//! check; the rest is the core's `deliver`, as for HTTP.

use lambda_http::Context;
use serde_json::Value;

use super::Invocation;
use crate::app::audit::Origin;
use crate::app::idempotency::DeliveryKey;
use crate::app::offboarding::{Content, Delivery};
use crate::app::{App, Outcome};
use crate::error::ApiError;
use crate::intake::sources::{EVENTBRIDGE, INVOKE};

/// An EventBridge event: the first source definition whose `eventbridge`
/// lists match it maps it; else its `detail` is a generic body. Its `id`,
/// kept across EventBridge's retries, is the delivery key: IAM admitted the
/// event, so the id is as trustworthy as a signed one.
pub async fn eventbridge(app: &App, event: &Value, ctx: &Context) -> Result<Outcome, ApiError> {
    let def = app.config().sources.for_eventbridge(event);
    let source = def.map_or(EVENTBRIDGE, |d| d.name.as_str());
    let id = event.get("id").and_then(Value::as_str);
    let key = match id {
        Some(id) => DeliveryKey::signed_id(source, id),
        None => DeliveryKey::body_hash(source, &serde_json::to_vec(event).unwrap_or_default()),
    };
    let detail = event.get("detail").cloned().unwrap_or(Value::Null);
    let content = match def {
        // A source's mapping: content it cannot map is ignored, as for
        // webhooks, since the rule's sender cannot fix it.
        Some(def) => Content::Mapped { def, doc: event },
        None => Content::Generic(&detail),
    };
    let origin = Origin::new(source, None, id.map(str::to_string));
    run(
        app,
        ctx,
        Delivery {
            origin,
            key,
            content,
        },
    )
    .await
}

/// A direct invocation whose payload is a generic body; it has no id, so
/// its body is its key.
pub async fn invoke(app: &App, payload: &Value, ctx: &Context) -> Result<Outcome, ApiError> {
    let body = serde_json::to_vec(payload).unwrap_or_default();
    let delivery = Delivery {
        origin: Origin::new(INVOKE, None, None),
        key: DeliveryKey::body_hash(INVOKE, &body),
        content: Content::Generic(payload),
    };
    run(app, ctx, delivery).await
}

async fn run(app: &App, ctx: &Context, d: Delivery<'_>) -> Result<Outcome, ApiError> {
    let inv = Invocation::begin(
        app,
        &ctx.request_id,
        ctx.xray_trace_id.as_deref(),
        ctx.deadline,
    );
    let deadline = inv.deadline;
    let source = d.origin.source.clone();
    inv.run(&source, async {
        let answer = match app.secrets().get().await {
            Ok(secret) => app.deliver(d, &secret, &deadline).await,
            Err(e) => Err(e.into()),
        };
        match &answer {
            Ok(o) => tracing::info!(source = %source, status = o.status, "event handled"),
            Err(e) => {
                tracing::info!(source = %source, status = e.status().as_u16(), code = e.code(), reason = %e, "event refused")
            }
        }
        answer
    })
    .await
}
