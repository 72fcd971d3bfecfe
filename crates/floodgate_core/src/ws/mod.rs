//! WebSockets: the upgrade and its caps (`upgrade`), one task per session on the bare socket
//! (`session`), frames parsed in place (`frame`), and the registry and outbound queues JS and
//! the bus reach sessions through (`hub`).

pub(crate) mod deadlines;
pub(crate) mod deflate;
pub(crate) mod frame;
pub(crate) mod hub;
pub(crate) mod session;
pub(crate) mod upgrade;
pub(crate) mod utf8;
pub(crate) mod validate;

#[cfg(test)]
mod tests;
