//! The connection: the accept loop and its tasks, the socket wrapper that enforces head and
//! send deadlines, the state a connection shares with its requests, the client address behind
//! a trusted proxy, the lingering close every path that ends a connection shares, the
//! HTTP/1.1 message rules checked before a request reaches a mount, and the hand-off of a
//! connection out of hyper to an event stream.

pub(crate) mod conformance;
pub(crate) mod guarded_io;
pub(crate) mod h2_frames;
pub(crate) mod h2_stream;
pub(crate) mod handoff;
pub(crate) mod linger;
pub(crate) mod proxy;
pub(crate) mod proxy_protocol;
pub(crate) mod send_file;
pub(crate) mod server;
pub(crate) mod socket;
pub(crate) mod state;

#[cfg(test)]
mod tests;
