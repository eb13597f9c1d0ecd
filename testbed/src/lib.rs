//! Test hosts for pdm's demo, its tests and its benchmarks: network namespaces joined
//! by veth pairs ([`Netns`]), commands and threads inside them, and a running `pdm`
//! ([`Pdm`]). Everything is undone on drop — namespaces removed with whatever still
//! runs in them, pdm stopped — also when a test panics; a namespace a crashed run left
//! behind under a fixed name is removed before it is made again.

mod netns;
pub mod pcap;
mod pdm;

use std::process::{Command, Stdio};

pub use netns::{Netns, command_in, enter, remove};
pub use pdm::{Pdm, both_attached};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not start `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("entering namespace {name}: {source}")]
    Enter {
        name: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Pdm(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// `cmd` as a shell would show it.
fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion; its stdout, or an error with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            cmd: display(cmd),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Failed {
            cmd: display(cmd),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
