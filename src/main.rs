use std::sync::Arc;

use lambda_http::{Error, LambdaEvent, service_fn};
use mde_offboard::{config::Config, dispatch, init, ops::logging};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init();
    let config = Config::from_env().unwrap_or_else(|e| init::init_failed(&e));
    let app = Arc::new(init::build_app(config).await);
    // Secret, token and the API's TLS connection are fetched beside the
    // runtime loop, not before it: init stays short, and the first
    // invocation waits only for what is still in flight.
    tokio::spawn({
        let app = app.clone();
        async move { app.warm_up().await }
    });
    // One entry point for every kind of event (HTTP, EventBridge, direct
    // invocation, SQS), told apart by shape in `dispatch`.
    lambda_http::lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let app = app.clone();
        async move { dispatch::dispatch(&app, event).await }
    }))
    .await
}
