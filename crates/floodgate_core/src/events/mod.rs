//! Events: the topic bus every subscriber (event stream or WebSocket) hangs on, and
//! Server-Sent Event streams, written by hyper or on the bare socket.

pub(crate) mod bus;
pub(crate) mod sse;
pub(crate) mod sse_socket;

#[cfg(test)]
mod tests;
