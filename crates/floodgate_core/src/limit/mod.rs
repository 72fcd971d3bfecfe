//! Limits: offender bans (`ban`), connection caps (`conn`) keyed by one client key (`key`), request rates (`rate`),
//! bandwidth (`bucket`), bounded queues with an overflow policy (`queue`), all on tokio's
//! clock (`clock`).

pub(crate) mod ban;
pub(crate) mod bucket;
pub(crate) mod clock;
pub(crate) mod conn;
pub(crate) mod key;
pub(crate) mod queue;
pub(crate) mod rate;
