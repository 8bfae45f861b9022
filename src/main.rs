use std::sync::Arc;

use lambda_http::{Error, LambdaEvent, service_fn};
use mde_offboard::{config::Config, dispatch, init, ops::logging};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init();
    let config = Config::from_env().unwrap_or_else(|e| init::init_failed(&e));
    let app = Arc::new(init::build_app(config).await);
    // One entry point for every kind of event (HTTP, EventBridge, direct
    // invocation, SQS), told apart by shape in `dispatch`.
    let run = lambda_http::lambda_runtime::run(service_fn({
        let app = app.clone();
        move |event: LambdaEvent<Value>| {
            let app = app.clone();
            async move { dispatch::dispatch(&app, event).await }
        }
    }));
    // Secret, token and the TLS connections are fetched beside the runtime
    // loop, not before it: the warm-up is spawned once the loop has been
    // polled up to its first wait (the connection for `GET next`), so its
    // work does not hold up init, and the first invocation waits only for
    // what is still in flight.
    let warm = async move {
        tokio::task::yield_now().await;
        tokio::spawn(async move { app.warm_up().await });
    };
    let (ran, ()) = tokio::join!(run, warm);
    ran
}
