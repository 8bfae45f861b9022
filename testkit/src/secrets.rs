//! A Secrets Manager endpoint answering `GetSecretValue` as the AWS JSON 1.1
//! protocol does, for a function run on a laptop (`cargo lambda watch`)
//! where moto may not be installed. The AWS SDK reaches it through the
//! standard `AWS_ENDPOINT_URL_SECRETS_MANAGER` override; request signatures
//! are not checked, so any dummy credentials do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// The JSON 1.1 protocol's content type, which the SDK's deserializer
/// expects on answers.
const AMZ_JSON: &str = "application/x-amz-json-1.1";

pub struct FakeSecretsManager {
    addr: SocketAddr,
}

impl FakeSecretsManager {
    /// Serves `secrets` (secret id → SecretString) on `bind`.
    pub async fn start_on(bind: &str, secrets: HashMap<String, String>) -> std::io::Result<Self> {
        let app = Router::new()
            .route("/", post(answer))
            .with_state(Arc::new(secrets));
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr })
    }

    /// The value for `AWS_ENDPOINT_URL_SECRETS_MANAGER`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [("content-type", AMZ_JSON), ("x-amzn-errortype", kind)],
        json!({"__type": kind, "message": message}).to_string(),
    )
        .into_response()
}

async fn answer(
    State(secrets): State<Arc<HashMap<String, String>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if target != "secretsmanager.GetSecretValue" {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestException",
            "only GetSecretValue is simulated",
        );
    }
    let id = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("SecretId")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let Some(id) = id else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterException",
            "SecretId is required",
        );
    };
    let Some(text) = secrets.get(&id) else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ResourceNotFoundException",
            "Secrets Manager can't find the specified secret.",
        );
    };
    let arn = if id.starts_with("arn:") {
        id.clone()
    } else {
        format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{id}-AbCdEf")
    };
    let name = arn.rsplit(':').next().unwrap_or(&id).to_string();
    (
        StatusCode::OK,
        [("content-type", AMZ_JSON)],
        json!({
            "ARN": arn,
            "Name": name,
            "SecretString": text,
            "VersionId": "00000000-0000-4000-8000-000000000001",
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 1_795_680_000.0,
        })
        .to_string(),
    )
        .into_response()
}
