//! Protections applied before any handler runs: connection slots, request rates and bandwidth.

pub mod bucket;
pub mod conn;
pub mod rate;
