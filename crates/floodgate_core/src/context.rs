//! What a request carries through the app and its routes: who is asking, over which
//! connection, and the server-wide parts (metrics, bus, shutdown) every route may need.

use crate::conn::state::ConnState;
use crate::events::bus::Bus;
use crate::limit::ban::Bans;
use crate::limit::key::ClientKey;
use crate::metrics::{Metrics, Rejection};
use crate::observe::access::AccessRecord;
use crate::observe::app::AppMetrics;
use crate::observe::reject::Refusal;
use std::net::IpAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Who is asking, and over which connection.
pub(crate) struct RequestContext {
    pub(crate) client: IpAddr,
    /// The user id from the app's `identify`, when it gave one.
    pub(crate) user: Option<String>,
    pub(crate) conn: Arc<ConnState>,
    pub(crate) metrics: Arc<Metrics>,
    /// What the mounted app counts (its refusals, streams and sockets).
    pub(crate) app: Arc<AppMetrics>,
    pub(crate) bus: Arc<Bus>,
    /// Cancelled when the server starts closing: endless responses (event streams) end then.
    pub(crate) shutdown: CancellationToken,
    /// Where WebSocket sessions are spawned, and the token that aborts them after the drain.
    pub(crate) tracker: tokio_util::task::TaskTracker,
    pub(crate) abort: CancellationToken,
    /// Offender bans, with the `ban` option.
    pub(crate) bans: Option<Arc<Bans>>,
    /// The request's access log record (`accessLog`); an event stream or a WebSocket session
    /// keeps it until it ends.
    pub(crate) access: Option<Arc<AccessRecord>>,
}

impl RequestContext {
    /// Counts a refusal of this request's client (by reason, and as a strike toward banning
    /// its user, or its address when it has none: `Metrics::refuse`).
    pub(crate) fn refuse_with(&self, refusal: Refusal<'_>) {
        self.metrics.refuse(refusal);
    }

    /// Whether this request's user is banned.
    pub(crate) fn user_banned(&self) -> bool {
        match (&self.bans, &self.user) {
            (Some(bans), Some(user)) => bans.is_banned(&ClientKey::User(user.as_str().into())),
            _ => false,
        }
    }
}

impl RequestContext {
    /// A refusal of this request's client (and user, once known), for `Metrics::refuse`.
    pub(crate) fn refusal(&self, reason: Rejection) -> Refusal<'_> {
        Refusal::new(reason)
            .client(self.client)
            .user(self.user.as_deref())
            .app(&self.app)
    }
}
