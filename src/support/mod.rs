//! Small helpers shared across the layers. They import nothing of this
//! crate, only std and external crates.

pub mod redacted;
pub mod retry;
pub mod time;
pub mod webhook_sig;
