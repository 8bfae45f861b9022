use std::sync::Arc;

use lambda_http::aws_lambda_events::sqs::SqsEvent;
use lambda_http::{Error, LambdaEvent, Request, service_fn};
use mde_offboard::{config::Config, logging, runtime};

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init();
    let config = Config::from_env().unwrap_or_else(|e| runtime::init_failed(&e));
    let worker = config.worker;
    let app = Arc::new(runtime::build_app(config).await);
    // Secret, token and the API's TLS connection are fetched beside the
    // runtime loop, not before it: init stays short, and the first
    // invocation, which Lambda hands over at once, waits only for what is
    // still in flight (both caches let one fetch run at a time).
    tokio::spawn({
        let app = app.clone();
        async move { app.warm_up().await }
    });
    if worker {
        // The queue worker: SQS batches in, batch item failures out.
        return lambda_http::lambda_runtime::run(service_fn(move |ev: LambdaEvent<SqsEvent>| {
            let app = app.clone();
            async move {
                let ctx = ev.context;
                Ok::<_, Error>(
                    app.handle_queue(ev.payload, &ctx.request_id, ctx.deadline)
                        .await,
                )
            }
        }))
        .await;
    }
    lambda_http::run(service_fn(move |req: Request| {
        let app = app.clone();
        async move { Ok::<_, Error>(app.handle(req).await) }
    }))
    .await
}
