//! The AWS SDK's shared configuration and client set-up: a leaf that every
//! AWS adapter builds its client from, importing nothing of ours.

/// The SDK's configuration, loaded once: the default chain reads the
/// environment, profile files and builds credential providers, ~15 ms that
/// need not hold up the runtime loop.
pub async fn sdk_config() -> &'static aws_config::SdkConfig {
    static SDK: tokio::sync::OnceCell<aws_config::SdkConfig> = tokio::sync::OnceCell::const_new();
    SDK.get_or_init(|| aws_config::defaults(aws_config::BehaviorVersion::latest()).load())
        .await
}

/// The Secrets Manager client with time limits that fit in a request: the
/// SDK's own retries (two attempts) must not outlast the Lambda deadline.
pub fn secrets_client(
    conf: aws_sdk_secretsmanager::config::Builder,
) -> aws_sdk_secretsmanager::Client {
    use aws_sdk_secretsmanager::config::retry::RetryConfig;
    use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
    use std::time::Duration;
    let conf = conf
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(6))
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

/// The STS client for `GetWebIdentityToken`, with the same time limits as
/// Secrets Manager. The SDK resolves STS's regional endpoint (the operation
/// is not served on the global one) unless `AWS_ENDPOINT_URL_STS` says
/// otherwise.
pub fn sts_client(conf: aws_sdk_sts::config::Builder) -> aws_sdk_sts::Client {
    use aws_sdk_sts::config::retry::RetryConfig;
    use aws_sdk_sts::config::timeout::TimeoutConfig;
    use std::time::Duration;
    let conf = conf
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(6))
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .build();
    aws_sdk_sts::Client::from_conf(conf)
}
