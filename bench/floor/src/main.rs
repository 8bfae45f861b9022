//! The benchmark's floor: what the Lambda runtime itself costs. It reaches
//! the runtime loop at once and refuses every request, so `bench/run` can
//! put mde-offboard's init, first answer and memory beside the least any
//! `lambda_http` function pays.

use lambda_http::{Body, Error, Request, Response, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::run(service_fn(|_: Request| async {
        Response::builder()
            .status(401)
            .header("content-type", "application/json")
            .body(Body::from(r#"{"error":"unauthenticated"}"#))
            .map_err(Error::from)
    }))
    .await
}
