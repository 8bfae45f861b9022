//! mde-offboard: offboards devices from Microsoft Defender for Endpoint when
//! an authenticated incident, ticket or automation request says so.
//!
//! The folders are the layers, and imports only point down (a test,
//! `tests/layers.rs`, fails on an arrow that points up or a circle):
//!
//! | layer | holds | may import |
//! |---|---|---|
//! | `init` | the composition root: adapters wired to ports | everything |
//! | `inbound` | the Lambda edges: an event's kind, HTTP routes, EventBridge and direct invocations, SQS batches | `app` and below |
//! | `app` | the use cases, over ports; answers are domain values, never HTTP | `intake`, `domain`, `error`, `ops`, `support` |
//! | `config`, `error` | the environment, read once; every error, mapped to a status in one place | `intake`, `domain`, `support` |
//! | `intake` | pure parsing of what arrives: auth schemes, sources, the generic body | `domain`, `support`, `ops` |
//! | `adapters` | the ports against Defender, Entra ID, AWS, ticket systems; in-memory ones | `domain`, `ops`, `support` |
//! | `domain` | the model, the rules and every port trait | `support`, `ops` |
//! | `ops`, `support` | logs, metrics; small helpers | nothing of ours |

pub mod adapters;
pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod inbound;
pub mod init;
pub mod intake;
pub mod ops;
pub mod support;

pub use app::App;
