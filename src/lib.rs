//! mde-offboard: offboards devices from Microsoft Defender for Endpoint when
//! a signed incident or ticket webhook says so.
//!
//! `handler` orchestrates; the other modules each own one concern and keep
//! their logic pure where they can, so most tests need no network.

pub mod auth;
pub mod config;
pub mod credentials;
pub mod defender;
pub mod direct;
pub mod dispatch;
pub mod error;
pub mod handler;
pub mod input;
pub mod ledger;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod offboard;
pub mod policy;
pub mod queue;
pub mod replay;
pub mod runtime;
pub mod sources;
pub mod worker;

pub use handler::App;
