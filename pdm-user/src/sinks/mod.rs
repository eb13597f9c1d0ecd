//! Where the engine's figures go: NDJSON lines on stdout or into `--log`
//! ([`ndjson`]), and the live terminal view ([`tui`]).

pub mod ndjson;
pub mod tui;
