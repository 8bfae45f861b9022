//! Small helpers that import nothing of this crate.

pub mod config_de;
pub mod json_pointer;
pub mod time;
pub mod url_policy;
