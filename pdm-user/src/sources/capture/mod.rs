//! Capture files as a source: each file read ([`reader`]), several merged into one
//! capture in timestamp order ([`merge`]), and the capture's flows ([`flows`]) fed to
//! the metrics engine as the kernel's are, a fragment's packets attributed to the flow
//! of their datagram ([`fragments`]).

mod flows;
mod fragments;
mod merge;
mod reader;

pub use flows::{CaptureFlows, Expiry, Leftovers};
pub use merge::Merged;
pub use reader::{CaptureError, Packet, ReadSummary, Reader, read};
