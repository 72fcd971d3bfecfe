//! Deadlines of HTTP/2 streams.
//!
//! Over HTTP/1.1 a response that the client stops taking blocks a socket write, and the socket
//! wrapper (`guarded_io`) ends the connection at `sendTimeout` or at the `downloadTimeout`
//! deadline. Over HTTP/2 the socket keeps flowing: a client that keeps one stream's
//! flow-control window shut stalls only that stream, inside hyper, where hyper waits for
//! window capacity before it polls the response body again — so nothing of ours runs, and no
//! write blocks. Each stream is therefore watched from outside: hyper spawns every stream's
//! task through the connection's executor, and [`StreamExecutor`] runs it beside a
//! [`StreamWatch`]. The response body (`delivery::body::Tracked`) and the pacing of the
//! response report to the watch through a task-local; when the stream passes its response
//! deadline, or sits with a frame handed over and the body not polled again for
//! `sendTimeout`, the task is dropped, and h2 resets the stream (`RST_STREAM`) — the
//! connection and its other streams go on.

use crate::metrics::{Metrics, Rejection};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

tokio::task_local! {
    static STREAM: Arc<StreamWatch>;
}

/// How often a watch looks again when no deadline is nearer: a deadline set later (when the
/// response is built) is seen within this.
const RECHECK: Duration = Duration::from_secs(1);

/// What a stream's task reports of its response; times in ms after `origin` (0: none).
pub(crate) struct StreamWatch {
    origin: Instant,
    deadline_ms: AtomicU64,
    send_timeout_ms: AtomicU64,
    /// When the body last handed a frame to hyper (or the response began).
    handed_ms: AtomicU64,
    /// The response exists (its head is on its way); before, only the handler runs.
    responding: AtomicBool,
    /// The body is waiting on its own source (events, JS), not on the client.
    body_idle: AtomicBool,
    finished: AtomicBool,
}

impl StreamWatch {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            deadline_ms: AtomicU64::new(0),
            send_timeout_ms: AtomicU64::new(0),
            handed_ms: AtomicU64::new(0),
            responding: AtomicBool::new(false),
            body_idle: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.origin).as_millis() as u64).max(1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    /// The response's head is ready: from now on, a body not polled counts as stalled.
    pub(crate) fn responding(&self) {
        self.handed_ms.store(self.ms(Instant::now()), Relaxed);
        self.responding.store(true, Relaxed);
    }

    /// The body handed hyper a frame.
    pub(crate) fn handed(&self) {
        self.handed_ms.store(self.ms(Instant::now()), Relaxed);
        self.body_idle.store(false, Relaxed);
    }

    /// The body has nothing to hand over yet: waiting on its source is not a stall.
    pub(crate) fn body_idle(&self) {
        self.body_idle.store(true, Relaxed);
    }

    pub(crate) fn finished(&self) {
        self.finished.store(true, Relaxed);
    }

    fn set_deadline(&self, deadline: Instant) {
        self.deadline_ms.store(self.ms(deadline), Relaxed);
    }

    fn set_send_timeout(&self, timeout: Duration) {
        self.send_timeout_ms
            .store(timeout.as_millis() as u64, Relaxed);
    }

    /// Why the stream must end at `now`, if it must; else when to look again.
    fn check(&self, now: Instant) -> Result<Instant, Rejection> {
        let mut next = now + RECHECK;
        if self.finished.load(Relaxed) {
            return Ok(next);
        }
        match self.deadline_ms.load(Relaxed) {
            0 => {}
            ms if now >= self.at(ms) => return Err(Rejection::DownloadTimeout),
            ms => next = next.min(self.at(ms)),
        }
        let send_timeout = self.send_timeout_ms.load(Relaxed);
        if send_timeout > 0 && self.responding.load(Relaxed) && !self.body_idle.load(Relaxed) {
            let stalled_at = self.at(self.handed_ms.load(Relaxed) + send_timeout);
            if now >= stalled_at {
                return Err(Rejection::SendTimeout);
            }
            next = next.min(stalled_at);
        }
        Ok(next)
    }
}

/// The watch of the HTTP/2 stream this task serves, if it serves one.
pub(crate) fn current() -> Option<Arc<StreamWatch>> {
    STREAM.try_with(Arc::clone).ok()
}

/// Sets the whole-response deadline of the current HTTP/2 stream (no-op over HTTP/1.1).
pub(crate) fn set_deadline(deadline: Instant) {
    let _ = STREAM.try_with(|watch| watch.set_deadline(deadline));
}

/// Sets the send timeout of the current HTTP/2 stream (no-op over HTTP/1.1).
pub(crate) fn set_send_timeout(timeout: Duration) {
    let _ = STREAM.try_with(|watch| watch.set_send_timeout(timeout));
}

/// The executor hyper spawns HTTP/2 stream tasks on: each runs watched.
#[derive(Clone)]
pub(crate) struct StreamExecutor {
    metrics: Arc<Metrics>,
}

impl StreamExecutor {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(watched(stream, Arc::clone(&self.metrics)));
    }
}

/// Runs a stream's task until it ends, or until its watch says it must (then dropping it,
/// which resets the stream).
async fn watched<F: Future>(stream: F, metrics: Arc<Metrics>) {
    let watch = Arc::new(StreamWatch::new());
    let stream = STREAM.scope(Arc::clone(&watch), stream);
    tokio::pin!(stream);
    let mut look_at = Instant::now() + RECHECK;
    loop {
        tokio::select! {
            _ = stream.as_mut() => return,
            _ = tokio::time::sleep_until(look_at) => match watch.check(Instant::now()) {
                Ok(next) => look_at = next,
                Err(reason) => {
                    metrics.reject(reason);
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_is_dropped_and_counted() {
        let metrics = Arc::new(Metrics::default());
        let started = Instant::now();
        watched(
            async {
                set_deadline(Instant::now() + Duration::from_secs(3));
                std::future::pending::<()>().await
            },
            Arc::clone(&metrics),
        )
        .await;
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(metrics.rejections(Rejection::DownloadTimeout), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_polled_for_send_timeout_is_a_stall_but_an_idle_body_is_not() {
        let metrics = Arc::new(Metrics::default());
        let started = Instant::now();
        watched(
            async {
                set_send_timeout(Duration::from_secs(5));
                let watch = current().unwrap();
                watch.responding();
                // Waiting on its own source for a while: no stall.
                watch.body_idle();
                tokio::time::sleep(Duration::from_secs(20)).await;
                // A frame handed over, then hyper never polls again (window shut).
                watch.handed();
                std::future::pending::<()>().await
            },
            Arc::clone(&metrics),
        )
        .await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_secs(25) && elapsed < Duration::from_secs(26));
        assert_eq!(metrics.rejections(Rejection::SendTimeout), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_stream_is_left_alone() {
        let metrics = Arc::new(Metrics::default());
        watched(
            async {
                set_send_timeout(Duration::from_secs(1));
                let watch = current().unwrap();
                watch.responding();
                watch.finished();
                tokio::time::sleep(Duration::from_secs(10)).await;
            },
            Arc::clone(&metrics),
        )
        .await;
        assert_eq!(metrics.rejections(Rejection::SendTimeout), 0);
    }

    #[test]
    fn outside_a_stream_the_setters_do_nothing() {
        set_deadline(Instant::now());
        set_send_timeout(Duration::from_secs(1));
        assert!(current().is_none());
    }
}
