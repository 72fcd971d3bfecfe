//! Protections applied before any handler runs: connection slots and bandwidth.

pub mod bucket;
pub mod conn;
