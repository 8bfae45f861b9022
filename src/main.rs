use std::sync::Arc;

use lambda_http::{Error, Request, service_fn};
use mde_offboard::{config::Config, logging, runtime};

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init();
    let config = Config::from_env().unwrap_or_else(|e| runtime::init_failed(&e));
    let app = Arc::new(runtime::build_app(config).await);
    app.warm_up().await;
    lambda_http::run(service_fn(move |req: Request| {
        let app = app.clone();
        async move { Ok::<_, Error>(app.handle(req).await) }
    }))
    .await
}
