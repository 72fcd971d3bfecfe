//! What an operator sees of the protections at work: rejection events handed to JS (bounded
//! per second) and the table of top offenders (`reject.rs`, `offenders.rs`).

pub(crate) mod offenders;
pub(crate) mod reject;
