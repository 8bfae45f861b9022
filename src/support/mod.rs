//! Small helpers that import nothing of this crate.

pub mod json_pointer;
pub mod time;
pub mod url_policy;
