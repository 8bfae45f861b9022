//! mde-offboard: offboards devices from Microsoft Defender for Endpoint when
//! an authenticated incident, ticket or automation request says so.
//!
//! The folders are the layers:
//! - `dispatch` (top): tells an event's kind by its shape and hands it to
//!   `ingest`;
//! - `ingest`: HTTP routes, EventBridge and direct invocations, the queue
//!   worker, and the one path they share (authenticate, replay, map,
//!   validate); its `auth`, `sources` and `input` modules are pure;
//! - `domain`: what happens to a device, over port traits;
//! - `adapters`: the ports against Defender, Entra ID and AWS;
//! - `ops`: logs, metrics, audit;
//! - `support`: small helpers that import nothing of this crate.
//!
//! `config` and `error` (every error to one status, in one place) serve all
//! of them; `init` builds the app from the environment.

pub mod adapters;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod ingest;
pub mod init;
pub mod ops;
pub mod support;

pub use ingest::App;
