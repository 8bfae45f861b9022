//! Init: building the adapters from configuration, and reporting a bad
//! configuration the way Lambda expects.

use std::sync::{Arc, OnceLock};

use crate::App;
use crate::adapters::dynamodb::DynamoLedger;
use crate::adapters::secrets_manager::SecretsManagerSource;
use crate::adapters::sqs::SqsQueue;
use crate::adapters::tls::{self, TrustRoots};
use crate::config::{Config, ConfigError};

/// The app of a Lambda instance, built on first use rather than before the
/// runtime loop: init only reads and checks the configuration (and
/// `MDE_CA_FILE`), which is what can fail; the clients (rustls, reqwest,
/// the limiters, the tracker) are built by the warm-up, beside the runtime's
/// first `GET next`, or by the first invocation if it gets there first.
pub struct LazyApp {
    config: Config,
    app: OnceLock<App>,
}

impl LazyApp {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            app: OnceLock::new(),
        }
    }

    /// The app; the first call builds it and claims the warm-up's
    /// connections, so an invocation that arrives before the warm-up task
    /// has run (its event was waiting) waits for the warm-up's handshakes
    /// instead of racing them. The caller must see the warm-up run
    /// (`src/main.rs` spawns it whatever comes first).
    pub fn get(&self) -> &App {
        self.app.get_or_init(|| {
            let app = build_app(self.config.clone());
            app.claim_warm_up();
            app
        })
    }
}

/// Builds the app with Secrets Manager as its secret source. The AWS
/// clients are made on first use, from the environment as usual (region,
/// credentials, `AWS_ENDPOINT_URL_SECRETS_MANAGER`). The roots are set
/// before (`trust_roots`).
pub fn build_app(config: Config) -> App {
    let source = Arc::new(SecretsManagerSource::from_env(config.secret_id.clone()));
    let queue_url = config.queue_url.clone();
    let ledger_table = config.ledger_table.clone();
    let mut app = App::new(config, source, App::http_client());
    if let Some(url) = queue_url {
        app = app.with_queue(Arc::new(SqsQueue::from_env(url)));
    }
    if let Some(table) = ledger_table {
        app = app.with_ledger(Arc::new(DynamoLedger::from_env(table)));
    }
    app
}

/// Sets the roots every TLS connection trusts, before any client is built:
/// the compiled-in ones, plus `MDE_CA_FILE`'s certificates when it is set.
pub fn trust_roots(config: &Config) -> Result<(), ConfigError> {
    let roots = match &config.ca_file {
        None => TrustRoots::bundled(),
        Some(path) => TrustRoots::load(path).map_err(|reason| ConfigError {
            var: "MDE_CA_FILE",
            reason,
        })?,
    };
    if roots.extra_count() > 0 {
        tracing::info!(
            extra_roots = roots.extra_count(),
            "trusting MDE_CA_FILE's certificates beside the compiled-in roots"
        );
    }
    tls::install(roots);
    Ok(())
}

/// Ends init: one line on stderr naming the variable, the same text posted
/// to the Runtime API's init error endpoint (so it shows in the console and
/// the invoke's answer), then exit 1. Never a panic trace.
pub fn init_failed(e: &ConfigError) -> ! {
    let message = format!("configuration error: {e}");
    eprintln!("mde-offboard: {message}");
    if let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") {
        let body = serde_json::json!({
            "errorMessage": message,
            "errorType": "Runtime.ConfigError",
        });
        let url = format!("http://{api}/2018-06-01/runtime/init/error");
        // A blocking post from a fresh thread: we are inside the tokio
        // runtime, and this is the last thing the process does.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = reqwest::Client::new()
                        .post(url)
                        .header("Lambda-Runtime-Function-Error-Type", "Runtime.ConfigError")
                        .timeout(std::time::Duration::from_secs(2))
                        .json(&body)
                        .send()
                        .await;
                });
            }
        })
        .join();
    }
    std::process::exit(1)
}
