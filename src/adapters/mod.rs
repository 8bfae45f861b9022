//! Adapters: the ports of the domain, implemented against the real
//! services (the Defender API and Entra ID over HTTPS, AWS through the SDK),
//! plus the in-memory ledger. `aws` is the leaf every SDK client is built
//! from, and `tls` the one trust store both HTTP stacks use.

pub mod aws;
pub mod callback;
pub mod defender_http;
pub mod dynamodb;
pub mod entra;
pub mod memory_ledger;
pub mod secrets_manager;
pub mod sqs;
pub mod sts;
pub mod tls;
pub mod write_back;
