//! Events: the topic bus every subscriber (event stream or WebSocket) hangs on, and
//! Server-Sent Event streams.

pub(crate) mod bus;
pub(crate) mod sse;

#[cfg(test)]
mod tests;
