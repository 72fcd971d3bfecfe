//! The connection: the accept loop and its tasks, the socket wrapper that enforces head and
//! send deadlines, the state a connection shares with its requests, the client address behind
//! a trusted proxy, and the lingering close every path that ends a connection shares.

pub(crate) mod guarded_io;
pub(crate) mod h2_stream;
pub(crate) mod linger;
pub(crate) mod proxy;
pub(crate) mod server;
pub(crate) mod state;

#[cfg(test)]
mod tests;
