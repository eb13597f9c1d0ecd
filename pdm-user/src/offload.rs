//! TSO/GSO control for `--per-packet`: off while attached, restored on exit, and on the
//! next start if a crash (even SIGKILL) left them off. The settings found are written to
//! a state file before anything is changed, so the restore never guesses.

use std::{fs, os::fd::AsRawFd as _, path::PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::iface;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_GGSO: u32 = 0x23;
const ETHTOOL_SGSO: u32 = 0x24;

#[derive(Debug, Error)]
pub enum OffloadError {
    #[error("ethtool {op} on `{iface}`: {source}")]
    Ioctl {
        op: &'static str,
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("offload state file {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// TSO and GSO as found on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offloads {
    pub tso: bool,
    pub gso: bool,
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ethtool(iface: &str, op: &'static str, cmd: u32, data: u32) -> Result<u32, OffloadError> {
    let err = |source| OffloadError::Ioctl {
        op,
        iface: iface.into(),
        source,
    };
    let sock = std::net::UdpSocket::bind("[::]:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))
        .map_err(err)?;
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    let n = iface.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&iface.as_bytes()[..n]);
    // SAFETY: a valid socket and an ifreq whose data points at a live ethtool_value.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(value.data)
}

pub fn get(iface: &str) -> Result<Offloads, OffloadError> {
    Ok(Offloads {
        tso: ethtool(iface, "get tso", ETHTOOL_GTSO, 0)? != 0,
        gso: ethtool(iface, "get gso", ETHTOOL_GGSO, 0)? != 0,
    })
}

pub fn set(iface: &str, o: Offloads) -> Result<(), OffloadError> {
    ethtool(iface, "set tso", ETHTOOL_STSO, o.tso as u32)?;
    ethtool(iface, "set gso", ETHTOOL_SGSO, o.gso as u32)?;
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Saved {
    ifindex: u32,
    offloads: Offloads,
}

fn state_file(iface_name: &str) -> PathBuf {
    iface::state_path(iface_name, "offload")
}

/// Turns TSO and GSO off, after recording how they were. Returns a guard that restores
/// them when dropped.
pub fn disable(iface_name: &str, ifindex: u32) -> Result<OffloadGuard, OffloadError> {
    let found = get(iface_name)?;
    let path = state_file(iface_name);
    let saved = serde_json::to_vec(&Saved {
        ifindex,
        offloads: found,
    })
    .expect("plain struct serialises");
    let state_err = |source| OffloadError::State {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(crate::RUN_DIR).map_err(state_err)?;
    fs::write(&path, saved).map_err(state_err)?;
    set(
        iface_name,
        Offloads {
            tso: false,
            gso: false,
        },
    )?;
    Ok(OffloadGuard {
        iface: iface_name.into(),
        path,
        saved: found,
    })
}

/// Restores settings a previous run left changed (it crashed before restoring).
/// Returns what was restored. Call with the interface lock held.
pub fn recover(iface_name: &str, ifindex: u32) -> Result<Option<Offloads>, OffloadError> {
    let path = state_file(iface_name);
    let Ok(bytes) = fs::read(&path) else {
        return Ok(None);
    };
    let saved: Option<Saved> = serde_json::from_slice(&bytes).ok();
    let restored = match saved {
        // Same interface (not a new one that reuses the name): put it back.
        Some(s) if s.ifindex == ifindex => {
            set(iface_name, s.offloads)?;
            Some(s.offloads)
        }
        _ => None,
    };
    let _ = fs::remove_file(&path);
    Ok(restored)
}

pub struct OffloadGuard {
    iface: String,
    path: PathBuf,
    saved: Offloads,
}

impl OffloadGuard {
    pub fn saved(&self) -> Offloads {
        self.saved
    }
}

impl Drop for OffloadGuard {
    fn drop(&mut self) {
        match set(&self.iface, self.saved) {
            Ok(()) => {
                let _ = fs::remove_file(&self.path);
            }
            // The interface may be gone; keep the state file for the next start.
            Err(e) => log::warn!("could not restore offloads: {e}"),
        }
    }
}
