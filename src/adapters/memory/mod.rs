//! In-process adapters: the ports without the services behind them, for
//! tests and the local run.

pub mod ledger;
pub mod limits;
