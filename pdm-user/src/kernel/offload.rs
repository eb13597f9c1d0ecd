//! TSO/GSO control for `--per-packet`: off while attached, restored on exit, and on the
//! next start if a crash (even SIGKILL) left them off. The settings found are written to
//! a state file before anything is changed, so the restore never guesses.
//!
//! Turning TSO/GSO off is not enough on its own: TCP always builds GSO packets (since
//! Linux 4.x) and segments them in software after TC egress has run, so the egress
//! program would still see one packet per burst. Limiting the device's gso_max_segs to
//! 1 makes TCP hand down one segment per packet; it is saved and restored with the rest.
//!
//! Uses the ethtool features ioctls (ETHTOOL_GFEATURES/SFEATURES, by feature name), as
//! `ethtool -K` does (the legacy ETHTOOL_STSO is refused by some drivers, veth among
//! them), and rtnetlink for gso_max_segs, as `ip link set` does.

use std::{fs, path::PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sys::{
    iface::{self, Iface},
    netlink,
};

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// Features that turn one TCP send into several wire packets: GSO and every TSO
/// variant the kernel knows (tx-tcp-segmentation, -ecn-, -mangleid-, tcp6-, accecn-, ...).
pub fn is_segmentation_feature(name: &str) -> bool {
    name == "tx-generic-segmentation"
        || (name.starts_with("tx-tcp") && name.ends_with("-segmentation"))
}

#[derive(Debug, Error)]
pub enum OffloadError {
    #[error("ethtool {op} on `{iface}`: {source}")]
    Ioctl {
        op: &'static str,
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{iface}` has no feature `{feature}`")]
    NoFeature { iface: String, feature: String },
    #[error("offload state file {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Requested on/off state of each segmentation feature the device has, and its
/// gso_max_segs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offloads {
    pub features: Vec<(String, bool)>,
    pub gso_max_segs: u32,
}

impl Offloads {
    /// Whether TSO (any TCP segmentation) and GSO are requested on.
    pub fn tso_gso(&self) -> (bool, bool) {
        let on = |f: &str| self.features.iter().any(|(n, v)| n == f && *v);
        (
            on("tx-tcp-segmentation") || on("tx-tcp6-segmentation"),
            on("tx-generic-segmentation"),
        )
    }
}

/// Runs one SIOCETHTOOL on `buf` (which starts with the command word).
fn ioctl(iface: &str, op: &'static str, buf: &mut [u8]) -> Result<(), OffloadError> {
    iface::ethtool(iface, buf).map_err(|source| OffloadError::Ioctl {
        op,
        iface: iface.into(),
        source,
    })
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 octets"))
}

/// Names of the device's features, in bit order.
fn feature_names(iface: &str) -> Result<Vec<String>, OffloadError> {
    // struct ethtool_sset_info { cmd, reserved, u64 sset_mask, u32 data[] }
    let mut info = [0u8; 20];
    info[..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
    info[8..16].copy_from_slice(&(1u64 << ETH_SS_FEATURES).to_ne_bytes());
    ioctl(iface, "get string-set info", &mut info)?;
    let count = u32_at(&info, 16) as usize;
    // struct ethtool_gstrings { cmd, string_set, len, u8 data[] }
    let mut buf = vec![0u8; 12 + count * ETH_GSTRING_LEN];
    buf[..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    buf[4..8].copy_from_slice(&ETH_SS_FEATURES.to_ne_bytes());
    buf[8..12].copy_from_slice(&(count as u32).to_ne_bytes());
    ioctl(iface, "get feature names", &mut buf)?;
    Ok(buf[12..]
        .chunks(ETH_GSTRING_LEN)
        .map(|c| {
            String::from_utf8_lossy(c.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
        })
        .collect())
}

fn blocks(count: usize) -> usize {
    count.div_ceil(32)
}

/// The requested state of each feature bit.
fn requested(iface: &str, count: usize) -> Result<Vec<bool>, OffloadError> {
    // struct ethtool_gfeatures { cmd, size, {available, requested, active, never_changed}[] }
    let n = blocks(count);
    let mut buf = vec![0u8; 8 + n * 16];
    buf[..4].copy_from_slice(&ETHTOOL_GFEATURES.to_ne_bytes());
    buf[4..8].copy_from_slice(&(n as u32).to_ne_bytes());
    ioctl(iface, "get features", &mut buf)?;
    Ok((0..count)
        .map(|bit| u32_at(&buf, 8 + (bit / 32) * 16 + 4) & (1 << (bit % 32)) != 0)
        .collect())
}

fn bit_of(names: &[String], iface: &str, feature: &str) -> Result<usize, OffloadError> {
    names
        .iter()
        .position(|n| n == feature)
        .ok_or_else(|| OffloadError::NoFeature {
            iface: iface.into(),
            feature: feature.into(),
        })
}

/// The segmentation features' current (requested) state.
/// The interface's segmentation offloads and gso_max_segs.
pub fn get(iface: &Iface) -> Result<Offloads, OffloadError> {
    let iface = iface.name();
    let names = feature_names(iface)?;
    let req = requested(iface, names.len())?;
    Ok(Offloads {
        features: names
            .iter()
            .zip(req)
            .filter(|(n, _)| is_segmentation_feature(n))
            .map(|(n, on)| (n.clone(), on))
            .collect(),
        gso_max_segs: gso_max_segs(iface)?,
    })
}

/// Requests each listed feature on or off.
pub fn set(iface: &Iface, o: &Offloads) -> Result<(), OffloadError> {
    let iface = iface.name();
    let names = feature_names(iface)?;
    let n = blocks(names.len());
    // struct ethtool_sfeatures { cmd, size, {valid, requested}[] }
    let mut buf = vec![0u8; 8 + n * 8];
    buf[..4].copy_from_slice(&ETHTOOL_SFEATURES.to_ne_bytes());
    buf[4..8].copy_from_slice(&(n as u32).to_ne_bytes());
    for (feature, on) in &o.features {
        let bit = bit_of(&names, iface, feature)?;
        let word = 8 + (bit / 32) * 8;
        let valid = u32_at(&buf, word) | 1 << (bit % 32);
        buf[word..word + 4].copy_from_slice(&valid.to_ne_bytes());
        let mut req = u32_at(&buf, word + 4);
        if *on {
            req |= 1 << (bit % 32);
        }
        buf[word + 4..word + 8].copy_from_slice(&req.to_ne_bytes());
    }
    // A positive return means "some changes not applied as asked": fine for features a
    // device cannot change (they keep their fixed value); a failure is an error.
    ioctl(iface, "set features", &mut buf)?;
    set_gso_max_segs(iface, o.gso_max_segs)
}

const IFLA_GSO_MAX_SEGS: u16 = 40;

/// The device's gso_max_segs (not in sysfs; `ip -d link` reads it the same way).
fn gso_max_segs(iface: &str) -> Result<u32, OffloadError> {
    let err = rtnl_error(iface, "get gso_max_segs");
    let req = netlink::message(
        libc::RTM_GETLINK,
        libc::NLM_F_REQUEST,
        &netlink::ifinfomsg(index_of(iface, "get gso_max_segs")?),
        &[],
    );
    let replies = netlink::request(&req).map_err(err)?;
    replies
        .iter()
        .filter(|r| r.msg_type == libc::RTM_NEWLINK)
        .flat_map(|r| r.attrs(16))
        .find_map(|(ty, data)| {
            (ty == IFLA_GSO_MAX_SEGS)
                .then(|| <[u8; 4]>::try_from(data).ok().map(u32::from_ne_bytes))
                .flatten()
        })
        .ok_or_else(|| OffloadError::NoFeature {
            iface: iface.into(),
            feature: "gso_max_segs".into(),
        })
}

/// `ip link set dev IFACE gso_max_segs N`.
fn set_gso_max_segs(iface: &str, segs: u32) -> Result<(), OffloadError> {
    let req = netlink::message(
        libc::RTM_NEWLINK,
        libc::NLM_F_REQUEST | libc::NLM_F_ACK,
        &netlink::ifinfomsg(index_of(iface, "set gso_max_segs")?),
        &[(IFLA_GSO_MAX_SEGS, &segs.to_ne_bytes())],
    );
    netlink::request(&req)
        .map(drop)
        .map_err(rtnl_error(iface, "set gso_max_segs"))
}

fn rtnl_error(iface: &str, op: &'static str) -> impl FnOnce(std::io::Error) -> OffloadError {
    let iface = iface.to_owned();
    move |source| OffloadError::Ioctl { op, iface, source }
}

fn index_of(iface: &str, op: &'static str) -> Result<u32, OffloadError> {
    iface::index(iface).map_err(|_| rtnl_error(iface, op)(std::io::ErrorKind::NotFound.into()))
}

#[derive(Serialize, Deserialize)]
struct Saved {
    ifindex: u32,
    offloads: Offloads,
}

/// Turns segmentation offloads off, after recording how they were. Returns a guard that
/// restores them when dropped.
pub fn disable(iface: &Iface) -> Result<OffloadGuard, OffloadError> {
    let found = get(iface)?;
    let path = iface.state_path("offload");
    let saved = serde_json::to_vec(&Saved {
        ifindex: iface.index(),
        offloads: found.clone(),
    })
    .expect("plain struct serialises");
    let state_err = |source| OffloadError::State {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(crate::RUN_DIR).map_err(state_err)?;
    fs::write(&path, saved).map_err(state_err)?;
    let off = Offloads {
        features: found
            .features
            .iter()
            .map(|(f, _)| (f.clone(), false))
            .collect(),
        gso_max_segs: 1,
    };
    if let Err(e) = set(iface, &off) {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(OffloadGuard {
        iface: iface.clone(),
        path,
        saved: found,
    })
}

/// Restores settings a previous run left changed (it crashed before restoring).
/// Returns what was restored. Call with the interface lock held.
pub fn recover(iface: &Iface) -> Result<Option<Offloads>, OffloadError> {
    let path = iface.state_path("offload");
    let Ok(bytes) = fs::read(&path) else {
        return Ok(None);
    };
    let saved: Option<Saved> = serde_json::from_slice(&bytes).ok();
    let restored = match saved {
        // Same interface (not a new one that reuses the name): put it back.
        Some(s) if s.ifindex == iface.index() => {
            set(iface, &s.offloads)?;
            Some(s.offloads)
        }
        _ => None,
    };
    let _ = fs::remove_file(&path);
    Ok(restored)
}

pub struct OffloadGuard {
    iface: Iface,
    path: PathBuf,
    saved: Offloads,
}

impl OffloadGuard {
    pub fn saved(&self) -> &Offloads {
        &self.saved
    }
}

impl Drop for OffloadGuard {
    fn drop(&mut self) {
        match set(&self.iface, &self.saved) {
            Ok(()) => {
                let _ = fs::remove_file(&self.path);
            }
            // The interface may be gone; keep the state file for the next start.
            Err(e) => log::warn!("could not restore offloads: {e}"),
        }
    }
}
