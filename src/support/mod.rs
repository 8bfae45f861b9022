//! Small helpers shared across the layers. They import nothing of this
//! crate outside `support`, only std and external crates.

pub mod config_de;
pub mod json_pointer;
pub mod redacted;
pub mod retry;
pub mod time;
pub mod ttl_cache;
pub mod url_policy;
pub mod webhook_sig;
