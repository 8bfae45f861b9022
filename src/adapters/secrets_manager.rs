//! Adapter: the secret from AWS Secrets Manager, through the SDK.

use futures_util::future::BoxFuture;

use crate::domain::secret::{CredentialError, SecretSource};

/// Adapter: AWS Secrets Manager through the SDK.
pub struct SecretsManagerSource {
    /// Built on first use: loading the SDK's configuration takes longer
    /// than the rest of init together, and runs beside the runtime loop.
    client: tokio::sync::OnceCell<aws_sdk_secretsmanager::Client>,
    secret_id: String,
}

impl SecretsManagerSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String) -> Self {
        Self {
            client: tokio::sync::OnceCell::new_with(Some(client)),
            secret_id,
        }
    }

    /// The client comes from the environment (region, credentials,
    /// `AWS_ENDPOINT_URL_SECRETS_MANAGER`) when first needed.
    pub fn from_env(secret_id: String) -> Self {
        Self {
            client: tokio::sync::OnceCell::new(),
            secret_id,
        }
    }
}

impl SecretSource for SecretsManagerSource {
    fn fetch(&self) -> BoxFuture<'_, Result<String, CredentialError>> {
        use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
        Box::pin(async move {
            let client = self
                .client
                .get_or_init(|| async {
                    crate::adapters::aws::secrets_client(
                        aws_sdk_secretsmanager::config::Builder::from(
                            crate::adapters::aws::sdk_config().await,
                        ),
                    )
                })
                .await;
            let out = client
                .get_secret_value()
                .secret_id(&self.secret_id)
                .send()
                .await
                .map_err(|e| {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    let code = e.code().unwrap_or("unknown").to_string();
                    match &e {
                        SdkError::ServiceError(_)
                            if status.is_some_and(|s| s < 500) && code != "ThrottlingException" =>
                        {
                            CredentialError::SecretRefused(code)
                        }
                        SdkError::ServiceError(_) => CredentialError::SecretUnavailable(code),
                        SdkError::TimeoutError(_) => {
                            CredentialError::SecretUnavailable("timed out".into())
                        }
                        _ => {
                            CredentialError::SecretUnavailable("could not reach the service".into())
                        }
                    }
                })?;
            out.secret_string.ok_or_else(|| {
                CredentialError::BadSecret(
                    "the secret has no SecretString (binary secrets are not supported)".into(),
                )
            })
        })
    }
}
