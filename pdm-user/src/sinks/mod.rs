//! Where the engine's figures go: NDJSON lines on stdout or into `--log`
//! ([`ndjson`]), and the live terminal view ([`tui`]); the names and processes shown
//! beside the figures ([`labels`]).

pub mod labels;
pub mod metrics;
pub mod ndjson;
pub mod tui;
