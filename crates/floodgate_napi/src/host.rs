//! The JS side of the bridge: requests and aborts queued in Rust and delivered to JS in
//! batches, one ThreadsafeFunction call per wake-up of the JS thread rather than per request.
//!
//! A ThreadsafeFunction's own queue is unbounded; here at most one call per kind is pending at
//! a time (`scheduled`), and the batch is drained on the JS thread when the call runs. The
//! functions are weak: the server's own keep-alive handle decides the process lifetime.

use floodgate_core::bridge::{JsHost, JsRequest};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi_derive::napi;
use std::sync::{Arc, Mutex};

/// One request as JS receives it.
#[napi(object)]
pub struct NativeRequest {
    pub id: f64,
    pub handler: u32,
    pub method: String,
    pub url: String,
    pub headers: Vec<String>,
    pub params: Vec<String>,
    pub client: String,
    pub has_body: bool,
}

impl From<JsRequest> for NativeRequest {
    fn from(request: JsRequest) -> Self {
        Self {
            id: request.id as f64,
            handler: request.handler,
            method: request.method,
            url: request.url,
            headers: request.headers,
            params: request.params,
            client: request.client,
            has_body: request.has_body,
        }
    }
}

/// Items waiting for the next JS wake-up, and whether one is already scheduled.
struct Batch<T> {
    items: Vec<T>,
    scheduled: bool,
}

type Deliver<T> = ThreadsafeFunction<(), (), Vec<T>, Status, false, true>;

struct Channel<T: ToNapiValue + 'static> {
    batch: Arc<Mutex<Batch<T>>>,
    deliver: Deliver<T>,
}

impl<T: ToNapiValue + 'static> Channel<T> {
    fn new(function: &Function<Vec<T>, ()>) -> Result<Self> {
        let batch = Arc::new(Mutex::new(Batch {
            items: Vec::new(),
            scheduled: false,
        }));
        let drained = Arc::clone(&batch);
        let deliver = function
            .build_threadsafe_function::<()>()
            .weak::<true>()
            .build_callback(move |_: ThreadsafeCallContext<()>| {
                let mut batch = drained.lock().unwrap_or_else(|p| p.into_inner());
                batch.scheduled = false;
                Ok(std::mem::take(&mut batch.items))
            })?;
        Ok(Self { batch, deliver })
    }

    fn push(&self, item: T) {
        let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        batch.items.push(item);
        if !batch.scheduled {
            batch.scheduled = true;
            drop(batch);
            self.deliver
                .call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

pub struct NapiHost {
    requests: Channel<NativeRequest>,
    aborts: Channel<f64>,
}

impl NapiHost {
    pub fn new(
        on_requests: &Function<Vec<NativeRequest>, ()>,
        on_aborts: &Function<Vec<f64>, ()>,
    ) -> Result<Self> {
        Ok(Self {
            requests: Channel::new(on_requests)?,
            aborts: Channel::new(on_aborts)?,
        })
    }
}

impl JsHost for NapiHost {
    fn dispatch(&self, request: JsRequest) {
        self.requests.push(request.into());
    }

    fn abort(&self, id: u64) {
        self.aborts.push(id as f64);
    }
}
