use std::sync::Arc;

use lambda_http::{Error, LambdaEvent, service_fn};
use mde_offboard::{config::Config, inbound, init, init::LazyApp, ops::logging};
use serde_json::value::RawValue;

/// Scheduler rounds the runtime loop gets before the warm-up starts. From
/// its first poll, hyper needs about three to send `GET next` on loopback
/// (connect, handshake, the connection task's write); a round costs
/// microseconds and never waits on the network, so eight leave room.
const ROUNDS_BEFORE_WARM_UP: usize = 8;

// One thread: Lambda gives a function at most a share of its vCPUs and one
// invocation at a time; the handler, hyper's connection tasks and the
// warm-up then wake each other without crossing threads.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    logging::init();
    let config = Config::from_env().unwrap_or_else(|e| init::init_failed(&e));
    init::trust_roots(&config).unwrap_or_else(|e| init::init_failed(&e));
    let app = Arc::new(LazyApp::new(config));
    // One entry point for every kind of event (HTTP, EventBridge, direct
    // invocation, SQS), told apart by shape in `dispatch`.
    let run = lambda_http::lambda_runtime::run(service_fn({
        let app = app.clone();
        move |event: LambdaEvent<Box<RawValue>>| {
            let app = app.clone();
            async move { inbound::dispatch(app.get(), event).await }
        }
    }));
    // The clients, secret, token and TLS connections are made beside the
    // runtime loop, not before it: the warm-up starts once the loop has
    // sent its first `GET next`, so its work holds up neither init nor that
    // request, and the first invocation waits only for what is in flight.
    let warm = async move {
        for _ in 0..ROUNDS_BEFORE_WARM_UP {
            tokio::task::yield_now().await;
        }
        tokio::spawn(async move { app.warm_up().await });
    };
    let (ran, ()) = tokio::join!(run, warm);
    ran
}
