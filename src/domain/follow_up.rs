//! Follow-ups: where a device's final outcome goes besides the ledger and
//! the audit line. A callback to the requester's URL and a note on the
//! ticket it came from are follow-ups; each is an adapter behind one port,
//! registered in `init`, and asked in turn for every final outcome.

use futures_util::future::BoxFuture;

use crate::domain::ledger::ActionStatus;
use crate::domain::limits::Deadline;
use crate::domain::notify::NotifyTarget;
use crate::domain::secret::AppSecret;
use crate::domain::tracking::TrackedAction;

/// Where a request's outcomes should go, as its door named them: the
/// generic body's `callback_url`, a source's `notify` target. Carried with
/// each queued device and each tracked action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowUpTargets {
    pub callback_url: Option<String>,
    pub notify: Option<NotifyTarget>,
}

/// A tracked action's final outcome.
pub struct FinalOutcome<'a> {
    pub action: &'a TrackedAction,
    pub status: ActionStatus,
    pub detail: &'a str,
    /// RFC 3339, as every follow-up writes it.
    pub requested_at: &'a str,
    pub finished_at: &'a str,
}

/// Port: one way of reporting a final outcome. An adapter looks at the
/// action's targets and does nothing where it is not asked; it logs and
/// counts its own failures, and never changes the outcome.
pub trait FollowUp: Send + Sync {
    fn deliver<'a>(
        &'a self,
        outcome: &'a FinalOutcome<'a>,
        secret: &'a AppSecret,
        deadline: &'a Deadline,
    ) -> BoxFuture<'a, ()>;
}
