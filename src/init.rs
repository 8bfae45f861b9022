//! The composition root: the only place adapters are wired to ports, and
//! where a bad configuration is reported the way Lambda expects.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::adapters::autoscaling::AutoScaling;
use crate::adapters::callback::Callbacks;
use crate::adapters::defender_http::HttpDefender;
use crate::adapters::dynamodb::DynamoLedger;
use crate::adapters::entra::TokenProvider;
use crate::adapters::entra_keys::HttpSigningKeys;
use crate::adapters::secrets_manager::SecretsManagerSource;
use crate::adapters::sqs::SqsQueue;
use crate::adapters::sts::StsIdentityTokens;
use crate::adapters::tls::{self, TrustRoots};
use crate::adapters::write_back::WriteBacks;
use crate::app::{App, Ports, TenantDefenders};
use crate::config::{Config, ConfigError};
use crate::domain::defender::Defender;
use crate::domain::federation::{IdentityTokenCache, IdentityTokenSource};
use crate::domain::limits::{Deadline, Limiters, SharedLimits};
use crate::domain::secret::{CredentialMode, SecretCache, SecretSource};

/// The app of a Lambda instance, built on first use rather than before the
/// runtime loop: init only reads and checks the configuration (and
/// `MDE_CA_FILE`), which is what can fail; the clients (rustls, reqwest,
/// the limiters, the tracker) are built by the warm-up, beside the runtime's
/// first `GET next`, or by the first invocation if it gets there first.
pub struct LazyApp {
    config: Config,
    instance: OnceLock<Instance>,
}

impl LazyApp {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            instance: OnceLock::new(),
        }
    }

    /// The app; the first call builds it and claims the warm-up's
    /// connections, so an invocation that arrives before the warm-up task
    /// has run (its event was waiting) waits for the warm-up's handshakes
    /// instead of racing them. The caller must see the warm-up run
    /// (`src/main.rs` spawns it whatever comes first).
    pub fn get(&self) -> &App {
        &self.instance().app
    }

    fn instance(&self) -> &Instance {
        self.instance.get_or_init(|| {
            let instance = build_instance(self.config.clone());
            instance.claim_warm_up();
            instance
        })
    }

    /// See `Instance::warm_up`.
    pub async fn warm_up(&self) {
        self.instance().warm_up().await
    }
}

/// The app with Secrets Manager as its secret source, and the queue and the
/// ledger the configuration names, with what its warm-up opens. The AWS
/// clients are made on first use, from the environment as usual (region,
/// credentials, `AWS_ENDPOINT_URL_*`). The roots are set before
/// (`trust_roots`).
pub fn build_instance(config: Config) -> Instance {
    let source = Arc::new(SecretsManagerSource::from_env(config.secret_id.clone()));
    let queue_url = config.queue_url.clone();
    let ledger_table = config.ledger_table.clone();
    if !config.tracks() {
        // The presets' write-back is inert without tracking: said once,
        // not left for an operator to discover on a ticket.
        let notifying: Vec<&str> = config.sources.notifying().collect();
        if !notifying.is_empty() {
            tracing::info!(
                sources = %notifying.join(","),
                "write-back is off: outcomes are followed and written back only with the ledger (LEDGER_TABLE) and the queue (QUEUE_URL)"
            );
        }
    }
    let ledger = ledger_table.map(|table| Arc::new(DynamoLedger::from_env(table)));
    let mut wiring = Wiring::new(config, source);
    if let Some(ledger) = &ledger {
        // Defender's limits counted in the table, across every instance.
        wiring = wiring.shared_limits(ledger.clone());
    }
    let mut instance = wiring.instance();
    if let Some(url) = queue_url {
        instance.app = instance.app.with_queue(Arc::new(SqsQueue::from_env(url)));
    }
    if let Some(ledger) = ledger {
        instance.app = instance.app.with_ledger(ledger);
    }
    instance
}

/// The HTTP client every adapter shares (`adapters::http_client`).
pub fn http_client() -> reqwest::Client {
    crate::adapters::http_client(Duration::from_secs(3))
}

/// The adapters an app is built over. By default the real ones: the
/// Defender API and Entra ID over HTTPS (STS for federated credentials),
/// callbacks and ticket write-backs; a test or a simulation replaces a part.
pub struct Wiring {
    config: Config,
    secret_source: Arc<dyn SecretSource>,
    limiters: Option<Limiters>,
    shared_limits: Option<Arc<dyn SharedLimits>>,
    identity: Option<Arc<dyn IdentityTokenSource>>,
    defender: Option<Arc<dyn Defender>>,
}

impl Wiring {
    pub fn new(config: Config, secret_source: Arc<dyn SecretSource>) -> Self {
        Self {
            config,
            secret_source,
            limiters: None,
            shared_limits: None,
            identity: None,
            defender: None,
        }
    }

    /// Defender's rate limits (simulations scale time).
    pub fn limiters(mut self, limiters: Limiters) -> Self {
        self.limiters = Some(limiters);
        self
    }

    /// Defender's limits counted across instances in `shared` (the
    /// ledger's table; an in-memory one in tests).
    pub fn shared_limits(mut self, shared: Arc<dyn SharedLimits>) -> Self {
        self.shared_limits = Some(shared);
        self
    }

    /// Federated mode's web identity tokens from `identity` (an STS client
    /// pointed where a test says) rather than STS from the environment.
    pub fn identity_tokens(mut self, identity: Arc<dyn IdentityTokenSource>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Any Defender instead of the API over HTTPS (an in-memory one).
    pub fn defender(mut self, defender: Arc<dyn Defender>) -> Self {
        self.defender = Some(defender);
        self
    }

    pub fn build(self) -> App {
        self.instance().app
    }

    /// As `build`, with what its warm-up opens.
    pub fn instance(self) -> Instance {
        let config = self.config;
        let http = http_client();
        let secrets = Arc::new(
            SecretCache::new(self.secret_source, config.secret_ttl).for_mode(config.credentials),
        );
        let mut tenant_defenders: Option<TenantDefenders> = None;
        let (defender, warm): (Arc<dyn Defender>, _) = match self.defender {
            Some(defender) => (defender, None),
            None => {
                // Federated: STS through the SDK, its client made on first
                // use from the environment (`AWS_ENDPOINT_URL_STS`
                // included); one identity token serves every tenant.
                let identity = (config.credentials == CredentialMode::Federated).then(|| {
                    let source = self
                        .identity
                        .unwrap_or_else(|| Arc::new(StsIdentityTokens::from_env()));
                    Arc::new(IdentityTokenCache::new(source))
                });
                let (login, scope, api) = (
                    config.login_url.clone(),
                    config.scope.clone(),
                    config.api_url.clone(),
                );
                let (rate, minute) = (config.rate_per_minute, config.limit_minute);
                let shared = self.shared_limits;
                let (http2, secrets2) = (http.clone(), secrets.clone());
                let make = move |limiters: Limiters| {
                    let mut tokens =
                        TokenProvider::new(http2.clone(), login.clone(), scope.clone());
                    if let Some(identity) = &identity {
                        tokens = tokens.federated(identity.clone());
                    }
                    let d = HttpDefender::new(
                        http2.clone(),
                        api.clone(),
                        secrets2.clone(),
                        Arc::new(tokens),
                        Arc::new(limiters),
                    );
                    // Defender's limits counted across instances too.
                    match &shared {
                        Some(shared) => d.with_shared_limits(shared.clone()),
                        None => d,
                    }
                };
                let limiters = self
                    .limiters
                    .unwrap_or_else(|| Limiters::scaled(rate, minute));
                let defender = Arc::new(make(limiters));
                // Each tenant: its own token and its own limits, as
                // Defender counts them per tenant.
                tenant_defenders = Some(Arc::new(move |tenant: &str| {
                    Arc::new(make(Limiters::scaled(rate, minute)).for_tenant(tenant))
                        as Arc<dyn Defender>
                }));
                (defender.clone(), Some(defender))
            }
        };
        let ports = Ports {
            secrets,
            defender,
            // Asked in this order for each final outcome.
            follow_ups: vec![
                Arc::new(Callbacks::new(http.clone())),
                Arc::new(WriteBacks::new(http.clone())),
            ],
            signing_keys: Arc::new(HttpSigningKeys::new(http)),
            lifecycle: Arc::new(AutoScaling::from_env()),
        };
        let mut app = App::new(config, ports);
        if let Some(make) = tenant_defenders {
            app = app.with_tenant_defenders(make);
        }
        Instance { app, warm }
    }
}

/// An app and, where it calls the Defender API over HTTPS, what its
/// warm-up opens.
pub struct Instance {
    pub app: App,
    warm: Option<Arc<HttpDefender>>,
}

impl Instance {
    fn claim_warm_up(&self) {
        if let Some(d) = &self.warm {
            d.claim_warm_up();
        }
    }

    /// Fetches the secret and a token and opens the TLS connections to the
    /// API and login hosts, all at once, so the first invocation waits for
    /// no handshake that could have been made before it arrived. Failures
    /// are left for the first request to meet and report.
    pub async fn warm_up(&self) {
        let app = &self.app;
        let deadline = Deadline::after(Duration::from_secs(4));
        let login = async {
            if let Some(d) = &self.warm {
                d.warm_up_login().await
            }
        };
        let creds = async {
            // The login host's handshake runs beside the secret fetch, and
            // the token request waits for it rather than racing it with a
            // second connection.
            let (secret, ()) = tokio::join!(app.secrets().get(), login);
            match secret {
                Ok(secret) => {
                    if let Err(e) = app.defender.ready(&secret, &deadline).await {
                        tracing::warn!(error = %e, "warm-up: no token yet");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "warm-up: no secret yet"),
            }
        };
        let api = async {
            if let Some(d) = &self.warm {
                d.warm_up().await
            }
        };
        // The source presets are parsed once the calls above are on their
        // way (they are CPU only, and this is one thread).
        let presets = async {
            tokio::task::yield_now().await;
            app.config().sources.prepare();
        };
        let _ = tokio::time::timeout(Duration::from_secs(4), async {
            tokio::join!(creds, api, presets)
        })
        .await;
    }
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
