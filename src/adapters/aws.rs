//! The AWS SDK's plumbing, written once for every AWS adapter (Secrets
//! Manager, STS, SQS, DynamoDB, Auto Scaling): the shared configuration, the clients'
//! time limits, the client built on first use, and the sorting of the SDK's
//! errors. It imports nothing of ours but the HTTP client.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::sync::OnceCell;

/// Time limits for a call made inside a request: few attempts, each short,
/// so the SDK's own retries never outlast the Lambda deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLimits {
    pub connect: Duration,
    /// For the answer; our connector (`sdk_http`) applies it to the whole
    /// exchange, so it is never longer than an attempt.
    pub read: Duration,
    pub attempt: Duration,
    /// Every attempt and the pauses between them.
    pub total: Duration,
    pub attempts: u32,
    pub first_backoff: Duration,
}

impl TimeLimits {
    /// Secrets Manager, STS and SQS: two attempts of three seconds.
    pub const REQUEST: Self = Self {
        connect: Duration::from_secs(2),
        read: Duration::from_secs(3),
        attempt: Duration::from_secs(3),
        total: Duration::from_secs(6),
        attempts: 2,
        first_backoff: Duration::from_millis(200),
    };

    /// The ledger's table, read and written on every request: tighter, so
    /// an unreachable table becomes a quick 503.
    pub const TABLE: Self = Self {
        connect: Duration::from_secs(1),
        read: Duration::from_secs(2),
        attempt: Duration::from_secs(2),
        total: Duration::from_secs(4),
        attempts: 2,
        first_backoff: Duration::from_millis(100),
    };

    /// The SDK crates share these types (aws-smithy-types).
    fn configs(&self) -> (TimeoutConfig, RetryConfig) {
        (
            TimeoutConfig::builder()
                .connect_timeout(self.connect)
                .read_timeout(self.read)
                .operation_attempt_timeout(self.attempt)
                .operation_timeout(self.total)
                .build(),
            RetryConfig::standard()
                .with_max_attempts(self.attempts)
                .with_initial_backoff(self.first_backoff),
        )
    }
}

/// An SDK client of ours: its configuration builder, and the client built
/// with its time limits.
pub trait SdkClient: Sized + Send + Sync + 'static {
    type Config: for<'a> From<&'a aws_config::SdkConfig> + Send;
    fn with_limits(conf: Self::Config) -> Self;
}

macro_rules! sdk_clients {
    ($($sdk:ident: $limits:ident),*) => {$(
        impl SdkClient for $sdk::Client {
            type Config = $sdk::config::Builder;
            fn with_limits(conf: Self::Config) -> Self {
                let (timeouts, retries) = TimeLimits::$limits.configs();
                Self::from_conf(conf.timeout_config(timeouts).retry_config(retries).build())
            }
        }
    )*};
}

// STS: the SDK resolves its regional endpoint (`GetWebIdentityToken` is not
// served on the global one) unless `AWS_ENDPOINT_URL_STS` says otherwise.
sdk_clients!(
    aws_sdk_secretsmanager: REQUEST,
    aws_sdk_sts: REQUEST,
    aws_sdk_sqs: REQUEST,
    aws_sdk_dynamodb: TABLE,
    aws_sdk_autoscaling: REQUEST
);

/// A client given, or built from the environment (region, credentials,
/// `AWS_ENDPOINT_URL_<SERVICE>`) when first needed: loading the SDK's
/// configuration takes longer than the rest of init together, and runs
/// beside the runtime loop.
pub struct LazyClient<C>(OnceCell<C>);

impl<C: SdkClient> LazyClient<C> {
    pub fn from_env() -> Self {
        Self(OnceCell::new())
    }

    /// The SDK's configuration is loaded once for every client: the default
    /// chain reads the environment, profile files and builds credential
    /// providers, ~15 ms that need not hold up the runtime loop. Its HTTP
    /// client, shared by every SDK client and the credential providers, is
    /// reqwest over the process's roots (`sdk_http`), as every other call
    /// is.
    pub async fn get(&self) -> &C {
        static SDK: OnceCell<aws_config::SdkConfig> = OnceCell::const_new();
        let load = || {
            let http = super::http_client(Duration::from_secs(2));
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .http_client(super::sdk_http::ReqwestHttpClient(http))
                .load()
        };
        let init = || async { C::with_limits(C::Config::from(SDK.get_or_init(load).await)) };
        self.0.get_or_init(init).await
    }
}

impl<C> From<C> for LazyClient<C> {
    fn from(client: C) -> Self {
        Self(OnceCell::new_with(Some(client)))
    }
}

/// What an SDK error means to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Worth a retry: throttling, a 5xx, a timeout, or no usable answer.
    /// Anything else (a 4xx, a request the SDK could not build) a retry
    /// will not cure: refused.
    pub passing: bool,
    /// Short, naming no resource: the service's error code, or what went
    /// wrong on the way.
    pub summary: String,
    /// The SDK's whole text, which may name the resource and the account.
    pub detail: String,
}

/// Error codes a retry cures, besides every 5xx.
const PASSING_CODES: [&str; 7] = [
    "Throttling",
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionConflictException",
    "InternalServerError",
    "ServiceUnavailable",
];

/// Sorts an SDK error of any of our clients (they share the type).
pub fn sort<E>(e: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (passing, summary) = match e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("unknown");
            let passing = se.raw().status().as_u16() >= 500 || PASSING_CODES.contains(&code);
            (passing, code)
        }
        SdkError::ConstructionFailure(_) => (false, "could not build the request"),
        SdkError::TimeoutError(_) => (true, "timed out"),
        _ => (true, "could not reach the service"),
    };
    Failure {
        passing,
        summary: summary.to_string(),
        detail: DisplayErrorContext(e).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn answered(status: u16, code: &str) -> SdkError<PutItemError, HttpResponse> {
        let err = PutItemError::generic(ErrorMetadata::builder().code(code).build());
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(err, raw)
    }

    #[test]
    fn throttling_5xx_timeouts_and_no_answer_pass_the_rest_is_refused() {
        let sorted = |e: SdkError<PutItemError, HttpResponse>| {
            let f = sort(&e);
            (f.passing, f.summary)
        };
        let cases = [
            (
                answered(400, "ThrottlingException"),
                true,
                "ThrottlingException",
            ),
            (answered(400, "Throttling"), true, "Throttling"),
            (
                answered(400, "ProvisionedThroughputExceededException"),
                true,
                "ProvisionedThroughputExceededException",
            ),
            (answered(503, "Whatever"), true, "Whatever"),
            (
                answered(400, "AccessDeniedException"),
                false,
                "AccessDeniedException",
            ),
            (SdkError::timeout_error("slow"), true, "timed out"),
            (
                SdkError::dispatch_failure(ConnectorError::io("reset".into())),
                true,
                "could not reach the service",
            ),
            (
                SdkError::construction_failure("no table name"),
                false,
                "could not build the request",
            ),
        ];
        for (e, passing, summary) in cases {
            assert_eq!(sorted(e), (passing, summary.to_string()));
        }
        let f = sort(&answered(400, "ResourceNotFoundException"));
        assert!(f.detail.contains("ResourceNotFoundException"), "{f:?}");
    }

    #[test]
    fn every_client_has_its_time_limits() {
        macro_rules! of {
            ($sdk:ident) => {{
                let c: $sdk::Client = SdkClient::with_limits(
                    $sdk::Config::builder().behavior_version(aws_config::BehaviorVersion::latest()),
                );
                let conf = c.config();
                (
                    conf.timeout_config().cloned().unwrap(),
                    conf.retry_config().cloned().unwrap(),
                )
            }};
        }
        let request = TimeLimits::REQUEST.configs();
        assert_eq!(of!(aws_sdk_secretsmanager), request);
        assert_eq!(of!(aws_sdk_sts), request);
        assert_eq!(of!(aws_sdk_sqs), request);
        assert_eq!(of!(aws_sdk_autoscaling), request);
        assert_eq!(of!(aws_sdk_dynamodb), TimeLimits::TABLE.configs());
    }
}
