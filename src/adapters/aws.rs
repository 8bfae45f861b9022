//! The AWS SDK's shared configuration and client set-up: the one place every
//! AWS adapter builds its client from, importing nothing of ours but the
//! HTTP client.

/// The SDK's configuration, loaded once: the default chain reads the
/// environment, profile files and builds credential providers, ~15 ms that
/// need not hold up the runtime loop. Its HTTP client, shared by every SDK
/// client and the credential providers, is reqwest over the process's
/// roots (`sdk_http`), as every other call is.
pub async fn sdk_config() -> &'static aws_config::SdkConfig {
    static SDK: tokio::sync::OnceCell<aws_config::SdkConfig> = tokio::sync::OnceCell::const_new();
    SDK.get_or_init(|| {
        let http = super::http_client(std::time::Duration::from_secs(2));
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(super::sdk_http::ReqwestHttpClient::new(http))
            .load()
    })
    .await
}

/// Time limits for a call made inside a request: two attempts, each short,
/// so the SDK's own retries never outlast the Lambda deadline. The SDK
/// crates share these types (aws-smithy-types).
fn request_time_limits() -> (
    aws_config::timeout::TimeoutConfig,
    aws_config::retry::RetryConfig,
) {
    use std::time::Duration;
    (
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2))
            .operation_attempt_timeout(Duration::from_secs(3))
            .operation_timeout(Duration::from_secs(6))
            .build(),
        aws_config::retry::RetryConfig::standard()
            .with_max_attempts(2)
            .with_initial_backoff(Duration::from_millis(200)),
    )
}

/// The Secrets Manager client, with the request time limits.
pub fn secrets_client(
    conf: aws_sdk_secretsmanager::config::Builder,
) -> aws_sdk_secretsmanager::Client {
    let (timeouts, retries) = request_time_limits();
    let conf = conf.timeout_config(timeouts).retry_config(retries).build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

/// The STS client for `GetWebIdentityToken`, with the request time limits.
/// The SDK resolves STS's regional endpoint (the operation is not served on
/// the global one) unless `AWS_ENDPOINT_URL_STS` says otherwise.
pub fn sts_client(conf: aws_sdk_sts::config::Builder) -> aws_sdk_sts::Client {
    let (timeouts, retries) = request_time_limits();
    let conf = conf.timeout_config(timeouts).retry_config(retries).build();
    aws_sdk_sts::Client::from_conf(conf)
}
