//! The JS side of the bridge: requests and aborts queued in Rust and delivered to JS in
//! batches, one ThreadsafeFunction call per wake-up of the JS thread rather than per request.
//!
//! A ThreadsafeFunction's own queue is unbounded; here at most one call per kind is pending at
//! a time (`scheduled`), and the batch is drained on the JS thread when the call runs. The
//! functions are weak: the server's own keep-alive handle decides the process lifetime.
//!
//! A batch crosses as two flat arrays (numbers and strings) rather than one object per
//! request: creating JS objects property by property and a string per header cost more on the
//! JS thread than the handlers themselves. Per request: numbers `id, handler, hasBody`;
//! strings `method, url, client, headers, params`, the lists joined as `name\0value\0...`.
//! `handlers.ts` reads the same layout.

use floodgate_core::bridge::{JsHost, JsRequest};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Requests {
    numbers: Vec<f64>,
    strings: Vec<String>,
    scheduled: bool,
}

#[derive(Default)]
struct Aborts {
    ids: Vec<f64>,
    scheduled: bool,
}

fn join_pairs(flat: &[String]) -> String {
    flat.join("\0")
}

/// The arguments of `onRequests`: the batch's numbers and strings.
pub type RequestBatch = FnArgs<(Vec<f64>, Vec<String>)>;
/// The JS function that receives request batches.
pub type OnRequests<'env> = Function<'env, RequestBatch, ()>;
type DeliverRequests = ThreadsafeFunction<(), (), RequestBatch, Status, false, true>;
type DeliverAborts = ThreadsafeFunction<(), (), Vec<f64>, Status, false, true>;

pub struct NapiHost {
    requests: Arc<Mutex<Requests>>,
    aborts: Arc<Mutex<Aborts>>,
    deliver_requests: DeliverRequests,
    deliver_aborts: DeliverAborts,
}

impl NapiHost {
    pub fn new(on_requests: &OnRequests, on_aborts: &Function<Vec<f64>, ()>) -> Result<Self> {
        let requests = Arc::new(Mutex::new(Requests::default()));
        let drained = Arc::clone(&requests);
        let deliver_requests = on_requests
            .build_threadsafe_function::<()>()
            .weak::<true>()
            .build_callback(move |_: ThreadsafeCallContext<()>| {
                let mut batch = drained.lock().unwrap_or_else(|p| p.into_inner());
                batch.scheduled = false;
                Ok(FnArgs::from((
                    std::mem::take(&mut batch.numbers),
                    std::mem::take(&mut batch.strings),
                )))
            })?;
        let aborts = Arc::new(Mutex::new(Aborts::default()));
        let drained = Arc::clone(&aborts);
        let deliver_aborts = on_aborts
            .build_threadsafe_function::<()>()
            .weak::<true>()
            .build_callback(move |_: ThreadsafeCallContext<()>| {
                let mut batch = drained.lock().unwrap_or_else(|p| p.into_inner());
                batch.scheduled = false;
                Ok(std::mem::take(&mut batch.ids))
            })?;
        Ok(Self {
            requests,
            aborts,
            deliver_requests,
            deliver_aborts,
        })
    }
}

impl JsHost for NapiHost {
    fn dispatch(&self, request: JsRequest) {
        let mut batch = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        batch.numbers.extend([
            request.id as f64,
            request.handler as f64,
            if request.has_body { 1.0 } else { 0.0 },
        ]);
        batch.strings.extend([
            request.method,
            request.url,
            request.client,
            join_pairs(&request.headers),
            join_pairs(&request.params),
        ]);
        if !batch.scheduled {
            batch.scheduled = true;
            drop(batch);
            self.deliver_requests
                .call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    fn abort(&self, id: u64) {
        let mut batch = self.aborts.lock().unwrap_or_else(|p| p.into_inner());
        batch.ids.push(id as f64);
        if !batch.scheduled {
            batch.scheduled = true;
            drop(batch);
            self.deliver_aborts
                .call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}
