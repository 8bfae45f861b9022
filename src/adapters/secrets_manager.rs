//! Adapter: the secret from AWS Secrets Manager, through the SDK.

use futures_util::future::BoxFuture;

use crate::adapters::aws::{self, LazyClient};
use crate::domain::secret::{CredentialError, SecretSource};

/// Adapter: AWS Secrets Manager through the SDK.
pub struct SecretsManagerSource {
    client: LazyClient<aws_sdk_secretsmanager::Client>,
    secret_id: String,
}

impl SecretsManagerSource {
    pub fn new(
        client: impl Into<LazyClient<aws_sdk_secretsmanager::Client>>,
        secret_id: String,
    ) -> Self {
        Self {
            client: client.into(),
            secret_id,
        }
    }

    pub fn from_env(secret_id: String) -> Self {
        Self::new(LazyClient::from_env(), secret_id)
    }
}

impl SecretSource for SecretsManagerSource {
    fn fetch(&self) -> BoxFuture<'_, Result<String, CredentialError>> {
        Box::pin(async move {
            let out = self
                .client
                .get()
                .await
                .get_secret_value()
                .secret_id(&self.secret_id)
                .send()
                .await
                .map_err(|e| match aws::sort(&e) {
                    f if f.passing => CredentialError::SecretUnavailable(f.summary),
                    f => CredentialError::SecretRefused(f.summary),
                })?;
            out.secret_string.ok_or_else(|| {
                CredentialError::BadSecret(
                    "the secret has no SecretString (binary secrets are not supported)".into(),
                )
            })
        })
    }
}
