//! Reading an upload's request body under the app's limits: total size, `readTimeout`,
//! `uploadTimeout`, the minimum rate and upload shaping. Raw uploads and multipart requests
//! read through it alike.

use crate::conn::conformance::malformed_body;
use crate::limit::bucket::piece_size;
use crate::metrics::Rejection;
use crate::upload::UploadLimits;
use bytes::Bytes;
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::time::Instant;

/// Why an upload stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Rejected(Rejection),
    ClientGone,
    Disk,
}

pub struct BodyReader<'a, B> {
    body: B,
    limits: &'a UploadLimits,
    started: Instant,
    size: u64,
}

impl<'a, B> BodyReader<'a, B>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    pub fn new(body: B, limits: &'a UploadLimits) -> Self {
        Self {
            body,
            limits,
            started: Instant::now(),
            size: 0,
        }
    }

    /// The next bytes of the body, `None` at its end. Past `maxUploadSize` or a deadline the
    /// upload stops with the reason; shaping waits before it returns.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Stop> {
        let limits = self.limits;
        loop {
            let read_deadline = Instant::now() + limits.read_timeout;
            let whole_deadline = self.started + limits.upload_timeout;
            // With no more bytes, the average rate falls under the minimum at this instant.
            let rate_deadline = (limits.min_rate > 0).then(|| {
                let allowed = Duration::from_secs_f64(self.size as f64 / limits.min_rate as f64);
                self.started + allowed.max(limits.min_rate_grace)
            });
            let (deadline, reason) = [
                (read_deadline, Rejection::ReadTimeout),
                (whole_deadline, Rejection::UploadTimeout),
            ]
            .into_iter()
            .chain(rate_deadline.map(|at| (at, Rejection::UploadTooSlow)))
            .min_by_key(|(at, _)| *at)
            .expect("at least one deadline");
            let frame = match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Err(Stop::Rejected(reason)),
                Ok(None) => return Ok(None),
                Ok(Some(Err(err))) if malformed_body(&err) => {
                    return Err(Stop::Rejected(Rejection::BadRequest))
                }
                Ok(Some(Err(_))) => return Err(Stop::ClientGone),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let received = data.len() as u64;
            self.size += received;
            if self.size > limits.max_size {
                return Err(Stop::Rejected(Rejection::BodyTooLarge));
            }
            if limits.shaper.is_active() {
                let piece = piece_size(limits.chunk_size, limits.bandwidth);
                let mut owed = received;
                while owed > 0 {
                    let take = owed.min(piece);
                    limits.shaper.take(take).await;
                    owed -= take;
                }
            }
            return Ok(Some(data));
        }
    }
}
