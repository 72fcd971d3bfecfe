//! The limits one streamed response is delivered under: chunking, shaping, deadlines.

pub(crate) mod body;
pub(crate) mod file_body;

use crate::conn::state::ConnState;
use crate::delivery::body::Body;
use crate::delivery::file_body::{FileStream, Segment};
use crate::limit::bucket::{ClientBuckets, Shaper};
use crate::metrics::Metrics;
use std::collections::VecDeque;
use std::fs::File;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct Delivery {
    pub metrics: Arc<Metrics>,
    pub conn: Arc<ConnState>,
    pub chunk_size: u64,
    /// Bytes per second per connection; 0 when unshaped.
    pub per_connection: u64,
    /// The client's shared bucket and key, when per-client shaping is on.
    pub client: Option<(Arc<ClientBuckets>, IpAddr)>,
    pub client_rate: u64,
    /// 0 when unbounded.
    pub download_timeout: Duration,
}

impl Delivery {
    /// Streams `segments` of `file`; the whole-response deadline starts now.
    pub fn stream_file(self, file: File, segments: VecDeque<Segment>) -> Body {
        let deadline = (!self.download_timeout.is_zero()).then(|| {
            let deadline = Instant::now() + self.download_timeout;
            self.conn.set_response_deadline(deadline);
            deadline
        });
        let slowest = [self.per_connection, self.client_rate]
            .into_iter()
            .filter(|r| *r > 0)
            .min();
        FileStream {
            file,
            segments,
            chunk_size: self.chunk_size,
            bandwidth: slowest.unwrap_or(0),
            shaper: Shaper::new(self.per_connection, self.chunk_size, self.client),
            deadline,
            metrics: self.metrics,
        }
        .into_body()
    }
}
