//! What a request carries through the app and its routes: who is asking, over which
//! connection, and the server-wide parts (metrics, bus, shutdown) every route may need.

use crate::conn::state::ConnState;
use crate::events::bus::Bus;
use crate::metrics::{Metrics, Rejection};
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
