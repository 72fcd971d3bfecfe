//! The JS side of the bridge: requests and aborts queued in Rust and delivered to JS in
//! batches, one ThreadsafeFunction call per wake-up of the JS thread rather than per request.
//!
//! A ThreadsafeFunction's own queue is unbounded; here at most one call per kind is pending at
//! a time ([`Batch`]), and the batch is drained on the JS thread when the call runs. The
//! functions are weak: the server's own keep-alive handle decides the process lifetime.
//!
//! A batch crosses as a Float64Array and one Buffer; `wire.rs` has the layouts.

use crate::wire;
use floodgate_core::{JsBacklog, JsHost, JsRequest, RejectCode, RejectEvent, WsEvent};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A batch filled from any thread and drained on the JS thread, with at most one delivery
/// call pending.
struct Batch<B> {
    state: Mutex<(B, bool)>,
    /// When the pending delivery call was scheduled (µs since `epoch`, 0: none pending): how
    /// long the JS thread has left it waiting is `NapiHost::js_delay`.
    scheduled_at: AtomicU64,
    epoch: Instant,
}

impl<B: Default> Batch<B> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((B::default(), false)),
            scheduled_at: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Adds to the batch; `true` when the caller must schedule the delivery call.
    fn add(&self, add: impl FnOnce(&mut B)) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        add(&mut state.0);
        let schedule = !std::mem::replace(&mut state.1, true);
        if schedule {
            let now = self.epoch.elapsed().as_micros() as u64;
            self.scheduled_at.store(now.max(1), Relaxed);
        }
        schedule
    }

    /// How long the pending delivery has waited for the JS thread.
    fn waiting(&self) -> Option<Duration> {
        let at = self.scheduled_at.load(Relaxed);
        (at > 0).then(|| {
            let now = self.epoch.elapsed().as_micros() as u64;
            Duration::from_micros(now.saturating_sub(at))
        })
    }

    /// Takes the batch (on the JS thread, as the call runs); the next addition schedules anew.
    fn take(&self) -> B {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1 = false;
        self.scheduled_at.store(0, Relaxed);
        std::mem::take(&mut state.0)
    }
}

#[derive(Default)]
struct Requests {
    numbers: Vec<f64>,
    bytes: Vec<u8>,
}

/// WebSocket events waiting for the JS thread (`wire::encode_ws_event`).
#[derive(Default)]
struct WsEvents {
    numbers: Vec<f64>,
    strings: Vec<String>,
    payload: Vec<u8>,
    /// Released when the batch reaches JS, so sessions paused on the backlog read again.
    backlogs: Vec<JsBacklog>,
}

/// The arguments of `onRequests`: the batch's numbers and bytes.
pub type RequestBatch = FnArgs<(Float64Array, Buffer)>;
/// The JS function that receives request batches.
pub type OnRequests<'env> = Function<'env, RequestBatch, ()>;
type DeliverRequests = ThreadsafeFunction<(), (), RequestBatch, Status, false, true>;
type DeliverAborts = ThreadsafeFunction<(), (), Vec<f64>, Status, false, true>;
/// The arguments of `onWsEvents`: numbers, strings, and the messages' bytes end to end.
pub type WsBatch = FnArgs<(Float64Array, Vec<String>, Buffer)>;
pub type OnWsEvents<'env> = Function<'env, WsBatch, ()>;
type DeliverWsEvents = ThreadsafeFunction<(), (), WsBatch, Status, false, true>;

/// A rejection event as JS receives it (`server.on('reject')`).
#[napi_derive::napi(object)]
pub struct JsRejectEvent {
    pub reason: String,
    pub address: Option<String>,
    pub user: Option<String>,
    pub route: Option<String>,
    /// The HTTP status the client was answered with.
    pub status: Option<u32>,
    /// The WebSocket close code the session was closed with.
    pub close_code: Option<u32>,
    /// ms since the Unix epoch.
    pub time: f64,
    /// Events left out by `rejectEventsPerSecond` since the previous one.
    pub dropped: f64,
}

impl From<RejectEvent> for JsRejectEvent {
    fn from(event: RejectEvent) -> Self {
        let (status, close_code) = match event.code {
            Some(RejectCode::Status(status)) => (Some(status as u32), None),
            Some(RejectCode::Close(code)) => (None, Some(code as u32)),
            None => (None, None),
        };
        Self {
            reason: event.reason.to_string(),
            address: event.address,
            user: event.user,
            route: event.route,
            status,
            close_code,
            time: event.time,
            dropped: event.dropped as f64,
        }
    }
}

pub type OnRejects<'env> = Function<'env, Vec<JsRejectEvent>, ()>;
type DeliverRejects = ThreadsafeFunction<(), (), Vec<JsRejectEvent>, Status, false, true>;

/// Rejection events waiting for the JS thread, and the function that takes them once JS
/// listens (`NativeServer::on_rejects`); until then they are dropped (already bounded and
/// counted by the core).
#[derive(Default)]
struct Rejects {
    batch: Option<Arc<Batch<Vec<RejectEvent>>>>,
    deliver: Option<DeliverRejects>,
}

pub type OnAccessLines<'env> = Function<'env, String, ()>;
type DeliverAccessLines = ThreadsafeFunction<(), (), String, Status, false, true>;

/// Access log lines for the `accessLog` callback, newline-separated, waiting for the JS thread.
#[derive(Default)]
struct AccessLines {
    batch: Option<Arc<Batch<String>>>,
    deliver: Option<DeliverAccessLines>,
}

pub struct NapiHost {
    rejects: Mutex<Rejects>,
    access: Mutex<AccessLines>,
    requests: Arc<Batch<Requests>>,
    aborts: Arc<Batch<Vec<f64>>>,
    deliver_requests: DeliverRequests,
    deliver_aborts: DeliverAborts,
    ws_events: Arc<Batch<WsEvents>>,
    deliver_ws_events: DeliverWsEvents,
}

impl NapiHost {
    pub fn new(
        on_requests: &OnRequests,
        on_aborts: &Function<Vec<f64>, ()>,
        on_ws_events: &OnWsEvents,
    ) -> Result<Self> {
        let requests = Batch::<Requests>::new();
        let drained = Arc::clone(&requests);
        let deliver_requests = on_requests
            .build_threadsafe_function::<()>()
            .weak::<true>()
            .build_callback(move |_: ThreadsafeCallContext<()>| {
                let Requests { numbers, bytes } = drained.take();
                Ok(FnArgs::from((
                    Float64Array::new(numbers),
                    Buffer::from(bytes),
                )))
            })?;
        let aborts = Batch::<Vec<f64>>::new();
        let drained = Arc::clone(&aborts);
        let deliver_aborts = on_aborts
            .build_threadsafe_function::<()>()
            .weak::<true>()
            .build_callback(move |_: ThreadsafeCallContext<()>| Ok(drained.take()))?;
        let ws_events = Batch::<WsEvents>::new();
        let drained = Arc::clone(&ws_events);
        let deliver_ws_events = on_ws_events
            .build_threadsafe_function::<()>()
            .weak::<true>()
            .build_callback(move |_: ThreadsafeCallContext<()>| {
                let WsEvents {
                    numbers,
                    strings,
                    payload,
                    backlogs,
                } = drained.take();
                drop(backlogs);
                Ok(FnArgs::from((
                    Float64Array::new(numbers),
                    strings,
                    Buffer::from(payload),
                )))
            })?;
        Ok(Self {
            rejects: Mutex::new(Rejects::default()),
            access: Mutex::new(AccessLines::default()),
            requests,
            aborts,
            deliver_requests,
            deliver_aborts,
            ws_events,
            deliver_ws_events,
        })
    }
}

impl NapiHost {
    /// From now on rejection events go to `on_rejects`, in batches.
    pub fn on_rejects(&self, on_rejects: &OnRejects) -> Result<()> {
        let batch = Batch::<Vec<RejectEvent>>::new();
        let drained = Arc::clone(&batch);
        let deliver = on_rejects
            .build_threadsafe_function::<()>()
            .weak::<true>()
            .build_callback(move |_: ThreadsafeCallContext<()>| {
                Ok(drained.take().into_iter().map(Into::into).collect())
            })?;
        *self.rejects.lock().unwrap_or_else(|p| p.into_inner()) = Rejects {
            batch: Some(batch),
            deliver: Some(deliver),
        };
        Ok(())
    }
}

impl NapiHost {
    /// From now on access log lines (the `accessLog` callback) go to `on_lines`, in batches.
    pub fn on_access_lines(&self, on_lines: &OnAccessLines) -> Result<()> {
        let batch = Batch::<String>::new();
        let drained = Arc::clone(&batch);
        let deliver = on_lines
            .build_threadsafe_function::<()>()
            .weak::<true>()
            .build_callback(move |_: ThreadsafeCallContext<()>| Ok(drained.take()))?;
        *self.access.lock().unwrap_or_else(|p| p.into_inner()) = AccessLines {
            batch: Some(batch),
            deliver: Some(deliver),
        };
        Ok(())
    }
}

impl JsHost for NapiHost {
    fn access_line(&self, line: String) {
        let access = self.access.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(batch), Some(deliver)) = (&access.batch, &access.deliver) {
            let schedule = batch.add(|lines| {
                lines.push_str(&line);
                lines.push('\n');
            });
            if schedule {
                deliver.call((), ThreadsafeFunctionCallMode::NonBlocking);
            }
        }
    }

    fn js_delay(&self) -> Option<Duration> {
        self.requests.waiting().max(self.ws_events.waiting())
    }

    fn reject_event(&self, event: RejectEvent) {
        let rejects = self.rejects.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(batch), Some(deliver)) = (&rejects.batch, &rejects.deliver) {
            if batch.add(|events| events.push(event)) {
                deliver.call((), ThreadsafeFunctionCallMode::NonBlocking);
            }
        }
    }

    fn dispatch(&self, request: JsRequest) {
        let schedule = self
            .requests
            .add(|batch| wire::encode_request(&request, &mut batch.numbers, &mut batch.bytes));
        if schedule {
            self.deliver_requests
                .call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    fn ws_event(&self, event: WsEvent) {
        let schedule = self.ws_events.add(|batch| {
            let backlog = wire::encode_ws_event(
                event,
                &mut batch.numbers,
                &mut batch.strings,
                &mut batch.payload,
            );
            batch.backlogs.extend(backlog);
        });
        if schedule {
            self.deliver_ws_events
                .call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    fn abort(&self, id: u64) {
        if self.aborts.add(|ids| ids.push(id as f64)) {
            self.deliver_aborts
                .call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}
