//! Delivery: the one place that paces and bounds a response body. Every body that is
//! written over time (a file, a streamed JS response) goes through a [`Pacing`]: its shaper
//! (per connection and per client), the largest piece it may send at once (from the slowest
//! of those rates), and the whole-response deadline of `downloadTimeout`, which the socket
//! wrapper also watches so a blocked write cannot outlive it.
//!
//! Event streams are endless by design: they are bounded by their queue and `sendTimeout`,
//! not by `downloadTimeout`, and are not shaped (`events::sse`).

pub(crate) mod body;
pub(crate) mod file_body;
pub(crate) mod zero_copy;

use crate::conn::h2_stream;
use crate::conn::state::ConnState;
use crate::delivery::body::Body;
use crate::delivery::file_body::{FileStream, Segment};
use crate::js::bridge::Call;
use crate::js::stream::StreamReader;
use crate::limit::bucket::{piece_size, slowest_rate, ClientBuckets, Shaper};
use crate::metrics::{Metrics, Rejection};
use futures_util::stream;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The limits a response is delivered under, as its app sets them.
pub(crate) struct Delivery {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) conn: Arc<ConnState>,
    pub(crate) chunk_size: u64,
    /// Bytes per second per connection; 0 when unshaped.
    pub(crate) per_connection: u64,
    /// The client's shared bucket and key, when per-client shaping is on.
    pub(crate) client: Option<(Arc<ClientBuckets>, IpAddr)>,
    pub(crate) client_rate: u64,
    /// 0 when unbounded.
    pub(crate) download_timeout: Duration,
}

impl Delivery {
    /// Streams `segments` of `file`, with `sendfile` when the connection can and the body is
    /// not small; the whole-response deadline starts now.
    pub(crate) fn stream_file(self, file: File, segments: VecDeque<Segment>) -> Body {
        let file_bytes: u64 = segments
            .iter()
            .map(|segment| match segment {
                Segment::File { start, end } => end + 1 - start,
                Segment::Bytes(_) => 0,
            })
            .sum();
        let zero_copy = (file_bytes >= zero_copy::MIN_BODY && self.conn.zero_copy().is_some())
            .then(|| Arc::clone(&self.conn));
        FileStream {
            file: Arc::new(file),
            segments,
            pacing: self.pacing(),
            zero_copy,
        }
        .into_body()
    }

    /// Streams the chunks JS writes; the whole-response deadline starts now. The exchange ends
    /// normally at the stream's end; dropped early (client gone, deadline), it aborts in JS.
    pub(crate) fn stream_js(self, reader: StreamReader, call: Call) -> Body {
        let state = Some((reader, Some(call), self.pacing()));
        let frames = stream::unfold(state, |state| async move {
            let (mut reader, mut call, pacing) = state?;
            match reader.next().await {
                Some(bytes) => match pacing.admit(bytes.len() as u64).await {
                    Ok(()) => Some((Ok(Frame::data(bytes)), Some((reader, call, pacing)))),
                    // The stream ends after the error; dropping the call aborts it in JS.
                    Err(err) => Some((Err(err), None)),
                },
                None => {
                    if let Some(call) = call.take() {
                        call.finish();
                    }
                    None
                }
            }
        });
        StreamBody::new(frames).boxed_unsync()
    }

    /// The pacing of one response, its deadline starting now.
    fn pacing(self) -> Pacing {
        let deadline = (!self.download_timeout.is_zero()).then(|| {
            let deadline = Instant::now() + self.download_timeout;
            self.conn.set_response_deadline(deadline);
            h2_stream::set_deadline(deadline);
            deadline
        });
        let slowest = slowest_rate([self.per_connection, self.client_rate]);
        Pacing {
            piece: piece_size(self.chunk_size, slowest),
            shaper: Shaper::new(
                (self.per_connection > 0).then(|| {
                    self.conn
                        .download_bucket(self.per_connection, self.chunk_size)
                }),
                self.client,
            ),
            deadline,
            metrics: self.metrics,
        }
    }
}

/// How one response body goes out: shaped, in pieces, before its deadline.
pub(crate) struct Pacing {
    shaper: Shaper,
    /// The most the shaper lets through at once.
    piece: u64,
    deadline: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl Pacing {
    /// The largest piece to read or send at once.
    pub(crate) fn piece(&self) -> u64 {
        self.piece
    }

    /// Whether a shaper paces this body (else `admit` only checks the deadline).
    pub(crate) fn is_shaped(&self) -> bool {
        self.shaper.is_active()
    }

    /// Waits until `bytes` may be sent, then checks the response deadline: past it, the
    /// response is cut off (`download_timeout`).
    pub(crate) async fn admit(&self, bytes: u64) -> io::Result<()> {
        if self.shaper.is_active() {
            let mut owed = bytes;
            while owed > 0 {
                let take = owed.min(self.piece);
                self.shaper.take(take).await;
                owed -= take;
            }
        }
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => {
                self.metrics.reject(Rejection::DownloadTimeout);
                Err(io::Error::new(io::ErrorKind::TimedOut, "download timeout"))
            }
            _ => Ok(()),
        }
    }
}
