//! Adapter: AWS STS `GetWebIdentityToken` (IAM outbound identity
//! federation), through the SDK: a JWT that names the function's role,
//! signed by the account's issuer, for Entra ID to accept as the client
//! assertion.

use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use crate::domain::federation::{IdentityToken, IdentityTokenSource};
use crate::domain::secret::CredentialError;

/// RS256 is the algorithm Entra ID verifies federated assertions with.
const SIGNING_ALGORITHM: &str = "RS256";

pub struct StsIdentityTokens {
    /// Built on first use, like the Secrets Manager client.
    client: tokio::sync::OnceCell<aws_sdk_sts::Client>,
}

impl StsIdentityTokens {
    pub fn new(client: aws_sdk_sts::Client) -> Self {
        Self {
            client: tokio::sync::OnceCell::new_with(Some(client)),
        }
    }

    /// The client comes from the environment (region, credentials,
    /// `AWS_ENDPOINT_URL_STS`) when first needed.
    pub fn from_env() -> Self {
        Self {
            client: tokio::sync::OnceCell::new(),
        }
    }
}

impl IdentityTokenSource for StsIdentityTokens {
    fn fetch<'a>(
        &'a self,
        audience: &'a str,
        lifetime: Duration,
    ) -> BoxFuture<'a, Result<IdentityToken, CredentialError>> {
        use aws_sdk_sts::error::ProvideErrorMetadata;
        Box::pin(async move {
            let client = self
                .client
                .get_or_init(|| async {
                    crate::adapters::aws::sts_client(aws_sdk_sts::config::Builder::from(
                        crate::adapters::aws::sdk_config().await,
                    ))
                })
                .await;
            let out = client
                .get_web_identity_token()
                .audience(audience)
                .signing_algorithm(SIGNING_ALGORITHM)
                .duration_seconds(i32::try_from(lifetime.as_secs()).unwrap_or(300))
                .send()
                .await
                .map_err(|e| {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    let code = e.code().unwrap_or("unknown").to_string();
                    classify(&e, status, code)
                })?;
            let jwt = out
                .web_identity_token
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    CredentialError::IdentityTokenUnavailable(
                        "the answer holds no usable WebIdentityToken".into(),
                    )
                })?;
            // Without an expiry the token is used once and not kept.
            let expires_at = out
                .expiration
                .and_then(|d| SystemTime::try_from(d).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Ok(IdentityToken::new(jwt, expires_at))
        })
    }
}

fn classify<E, R>(
    e: &aws_sdk_sts::error::SdkError<E, R>,
    status: Option<u16>,
    code: String,
) -> CredentialError {
    use aws_sdk_sts::error::SdkError;
    match e {
        SdkError::ServiceError(_) if code == "OutboundWebIdentityFederationDisabledException" => {
            CredentialError::FederationDisabled
        }
        SdkError::ServiceError(_)
            if status.is_some_and(|s| s < 500)
                && code != "Throttling"
                && code != "ThrottlingException" =>
        {
            CredentialError::IdentityTokenRefused(code)
        }
        SdkError::ServiceError(_) => CredentialError::IdentityTokenUnavailable(code),
        SdkError::TimeoutError(_) => CredentialError::IdentityTokenUnavailable("timed out".into()),
        _ => CredentialError::IdentityTokenUnavailable("could not reach the service".into()),
    }
}

#[cfg(test)]
mod tests {
    /// `GetWebIdentityToken` is not served on `sts.amazonaws.com`: the
    /// client must resolve the region's own endpoint, as the SDK does when
    /// nothing asks for the global one.
    #[tokio::test]
    async fn the_endpoint_is_the_regional_one() {
        use aws_sdk_sts::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
        for region in ["us-east-1", "eu-west-1"] {
            let params = Params::builder().region(region).build().unwrap();
            let ep = DefaultResolver::new()
                .resolve_endpoint(&params)
                .await
                .unwrap();
            assert_eq!(ep.url(), format!("https://sts.{region}.amazonaws.com"));
        }
    }
}
