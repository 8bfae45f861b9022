//! The domain: what happens to a device (validate, resolve, check the
//! platform, tags and budget, offboard), over small port traits that the
//! adapters implement: `defender::Defender`, `secret::SecretSource`,
//! `queue::Queue` and the ledger's `DeliveryClaims`, `DeviceRecords` and
//! `OffboardBudget`. Pure where it can be; tested with in-memory fakes.

pub mod defender;
pub mod federation;
pub mod follow_up;
pub mod health;
pub mod ledger;
pub mod lifecycle;
pub mod limits;
pub mod model;
pub mod notify;
pub mod offboard;
pub mod policy;
pub mod queue;
pub mod secret;
pub mod signing_keys;
pub mod tenant;
pub mod tracking;
