//! What an operator sees of the server at work: rejection events handed to JS (bounded per
//! second) and the table of top offenders (`reject.rs`, `offenders.rs`); lock-free histograms
//! (`histogram.rs`), what each app counts (`app.rs`), the Prometheus / OpenMetrics text
//! (`exposition.rs`, through prometheus-client), the dashboard's frames of the last second
//! (`sample.rs`) and the access log (`access.rs`).

pub(crate) mod access;
pub(crate) mod app;
pub(crate) mod exposition;
pub(crate) mod histogram;
pub(crate) mod offenders;
pub(crate) mod reject;
pub(crate) mod sample;
