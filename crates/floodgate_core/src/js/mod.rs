//! The JS bridge: exchanges between a request and a JS handler (`bridge`), a request through a
//! JS handler with its limits (`call`), and the chunk queue of a streamed JS response
//! (`stream`).

pub(crate) mod bridge;
pub(crate) mod call;
pub(crate) mod stream;
