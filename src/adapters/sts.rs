//! Adapter: AWS STS `GetWebIdentityToken` (IAM outbound identity
//! federation), through the SDK: a JWT that names the function's role,
//! signed by the account's issuer, for Entra ID to accept as the client
//! assertion.

use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use crate::adapters::aws::{self, LazyClient};
use crate::domain::federation::{IdentityToken, IdentityTokenSource};
use crate::domain::secret::CredentialError;

/// RS256 is the algorithm Entra ID verifies federated assertions with.
const SIGNING_ALGORITHM: &str = "RS256";

pub struct StsIdentityTokens {
    client: LazyClient<aws_sdk_sts::Client>,
}

impl StsIdentityTokens {
    pub fn new(client: impl Into<LazyClient<aws_sdk_sts::Client>>) -> Self {
        Self {
            client: client.into(),
        }
    }

    pub fn from_env() -> Self {
        Self::new(LazyClient::from_env())
    }
}

impl IdentityTokenSource for StsIdentityTokens {
    fn fetch<'a>(
        &'a self,
        audience: &'a str,
        lifetime: Duration,
    ) -> BoxFuture<'a, Result<IdentityToken, CredentialError>> {
        Box::pin(async move {
            let out = self
                .client
                .get()
                .await
                .get_web_identity_token()
                .audience(audience)
                .signing_algorithm(SIGNING_ALGORITHM)
                .duration_seconds(i32::try_from(lifetime.as_secs()).unwrap_or(300))
                .send()
                .await
                .map_err(|e| match aws::sort(&e) {
                    f if f.summary == "OutboundWebIdentityFederationDisabledException" => {
                        CredentialError::FederationDisabled
                    }
                    f if f.passing => CredentialError::IdentityTokenUnavailable(f.summary),
                    f => CredentialError::IdentityTokenRefused(f.summary),
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
