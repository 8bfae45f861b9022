//! The sources every deployment has, whatever `SOURCES` says: they name
//! where a delivery came from when no definition of the user's does.

use super::Sources;
pub use crate::intake::auth::GENERIC_KEY as GENERIC;

/// EventBridge events no definition claims (their `detail` is a generic body).
pub const EVENTBRIDGE: &str = "eventbridge";
/// Direct invocations (`aws lambda invoke`, a Step Functions task).
pub const INVOKE: &str = "invoke";
/// The read routes' second door (auditors): no auth unless `SOURCES`
/// gives it one, and never accepted by a route that acts.
pub const READER: &str = "reader";

const BUILT_IN: [&str; 3] = [GENERIC, EVENTBRIDGE, INVOKE];

impl Sources {
    /// A source a queued message may name: a built-in one or a definition.
    pub fn is_known(&self, name: &str) -> bool {
        BUILT_IN.contains(&name) || self.get(name).is_some()
    }
}
