//! `--mtu-room`: room for PDM's 16 octets in every packet the host sends, by lowering
//! the MTU of the IPv6 routes through the interface by 16 while pdm is attached. The
//! stack then fragments to MTU − 16, path-MTU senders (QUIC with `IPV6_DONTFRAG`,
//! PMTUD) size their datagrams to fit, and TCP advertises an MSS 16 smaller, so the
//! egress program never meets a packet that PDM would push over the MTU.
//!
//! Why routes and not the device MTU: a device MTU is also a receive limit (veth drops
//! what arrives above its MTU, so a peer's full-size packets would be lost) and what
//! routing daemons compare between neighbours (OSPF refuses adjacency on a mismatch);
//! a route MTU only shapes what this host sends. The routes found are written to a
//! state file before anything changes, restored on exit, and on the next start after a
//! crash, as `--per-packet` does with offloads.
//!
//! Routes: every unicast IPv6 route of every table but `local` whose one next hop
//! leaves through the interface. Multipath routes and nexthop objects are left alone
//! (counted). Forwarded packets keep the device MTU (Linux applies a route MTU to
//! forwarding only when it is locked, and a locked MTU disables PMTU discovery), so on
//! a router this serves the host's own traffic.

use std::{fs, path::PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sys::{iface::Iface, netlink};

/// rtnetlink route attributes and metrics (linux/rtnetlink.h).
const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_METRICS: u16 = 8;
const RTA_MULTIPATH: u16 = 9;
const RTA_CACHEINFO: u16 = 12;
const RTA_TABLE: u16 = 15;
const RTA_PREF: u16 = 20;
const RTA_EXPIRES: u16 = 23;
const RTA_NH_ID: u16 = 30;
const RTAX_MTU: u16 = 2;
const RT_TABLE_LOCAL: u32 = 255;
const RTN_UNICAST: u8 = 1;
/// USER_HZ: rta_cacheinfo's expiry is in clock ticks.
const USER_HZ: u32 = 100;
/// IPv6's minimum MTU (RFC 8200): a route may not go below it.
const IPV6_MIN_MTU: u32 = 1280;

/// The room PDM needs.
pub const ROOM: u32 = pdm_common::wire::PDM_HEADER_LEN as u32;

#[derive(Debug, Error)]
pub enum MtuRoomError {
    #[error("listing the IPv6 routes through {iface}: {source}")]
    Dump {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting the MTU of the route to {dst} through {iface}: {source}")]
    Set {
        iface: String,
        dst: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{iface}: the route to {dst} has MTU {mtu}; with PDM's 16 octets it would go below IPv6's minimum of 1280 (raise the MTU, or run without --mtu-room)"
    )]
    TooSmall {
        iface: String,
        dst: String,
        mtu: u32,
    },
    #[error("{iface} has no IPv6 route: nothing to make room in (run without --mtu-room)")]
    NoRoutes { iface: String },
    #[error("MTU room state file {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One route as the kernel listed it: what identifies it, and its metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The rtmsg, its flags cleared.
    rtmsg: Vec<u8>,
    /// The attributes that identify and describe it (destination, gateway, table, ...).
    attrs: Vec<(u16, Vec<u8>)>,
    /// Its metrics as (RTAX type, value), MTU included if it had one.
    metrics: Vec<(u16, u32)>,
}

impl Route {
    /// The destination as text, for messages.
    pub fn dst(&self) -> String {
        let len = self.rtmsg[1];
        let addr = self
            .attrs
            .iter()
            .find(|(t, _)| *t == RTA_DST)
            .and_then(|(_, v)| <[u8; 16]>::try_from(v.as_slice()).ok())
            .unwrap_or([0; 16]);
        format!("{}/{len}", std::net::Ipv6Addr::from(addr))
    }

    /// Its MTU metric, if it has one.
    pub fn mtu(&self) -> Option<u32> {
        self.metrics
            .iter()
            .find(|(t, _)| *t == RTAX_MTU)
            .map(|m| m.1)
    }

    fn with_mtu(&self, mtu: u32) -> Self {
        let mut r = self.clone();
        r.metrics.retain(|(t, _)| *t != RTAX_MTU);
        r.metrics.push((RTAX_MTU, mtu));
        r
    }

    /// Replaces the kernel's route by this one (`ip -6 route replace`).
    fn put(&self) -> std::io::Result<()> {
        let metrics: Vec<u8> = self
            .metrics
            .iter()
            .flat_map(|&(t, v)| {
                let mut a = 8u16.to_ne_bytes().to_vec();
                a.extend_from_slice(&t.to_ne_bytes());
                a.extend_from_slice(&v.to_ne_bytes());
                a
            })
            .collect();
        let mut attrs: Vec<(u16, &[u8])> =
            self.attrs.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        if !metrics.is_empty() {
            attrs.push((RTA_METRICS, &metrics));
        }
        let req = netlink::message(
            libc::RTM_NEWROUTE,
            libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_REPLACE,
            &self.rtmsg,
            &attrs,
        );
        netlink::request(&req).map(drop)
    }
}

/// The IPv6 routes leaving through `iface` (see the module's documentation), and how
/// many were left alone because they have several next hops.
pub fn routes_through(iface: &Iface) -> Result<(Vec<Route>, usize), MtuRoomError> {
    let mut rtmsg = [0u8; 12];
    rtmsg[0] = libc::AF_INET6 as u8;
    let req = netlink::message(
        libc::RTM_GETROUTE,
        libc::NLM_F_REQUEST | libc::NLM_F_DUMP,
        &rtmsg,
        &[],
    );
    let replies = netlink::request(&req).map_err(|source| MtuRoomError::Dump {
        iface: iface.name().into(),
        source,
    })?;
    let (mut routes, mut multipath) = (Vec::new(), 0);
    for r in replies.iter().filter(|r| r.msg_type == libc::RTM_NEWROUTE) {
        if r.body.len() < 12 || r.body[0] != libc::AF_INET6 as u8 || r.body[7] != RTN_UNICAST {
            continue;
        }
        let mut table = u32::from(r.body[4]);
        let (mut oif, mut several) = (None, false);
        let mut route = Route {
            rtmsg: r.body[..12].to_vec(),
            attrs: Vec::new(),
            metrics: Vec::new(),
        };
        // Flags of a dump (RTM_F_CLONED, offload marks) are not a request's.
        route.rtmsg[8..12].fill(0);
        for (ty, v) in r.attrs(12) {
            match ty {
                RTA_OIF => {
                    oif = v
                        .get(..4)
                        .map(|b| u32::from_ne_bytes(b.try_into().expect("4")));
                    route.attrs.push((ty, v.to_vec()));
                }
                RTA_TABLE => {
                    table = v
                        .get(..4)
                        .map_or(table, |b| u32::from_ne_bytes(b.try_into().expect("4")));
                    route.attrs.push((ty, v.to_vec()));
                }
                RTA_DST | RTA_SRC | RTA_GATEWAY | RTA_PRIORITY | RTA_PREFSRC | RTA_PREF => {
                    route.attrs.push((ty, v.to_vec()));
                }
                RTA_METRICS => route.metrics = metrics(v),
                // A route learnt from a Router Advertisement expires: keep its
                // lifetime, or replacing it would make it permanent.
                RTA_CACHEINFO if v.len() >= 12 => {
                    let expires = i32::from_ne_bytes(v[8..12].try_into().expect("4"));
                    if expires > 0 {
                        let secs = (expires as u32).div_ceil(USER_HZ);
                        route.attrs.push((RTA_EXPIRES, secs.to_ne_bytes().to_vec()));
                    }
                }
                RTA_MULTIPATH | RTA_NH_ID => several = true,
                _ => {}
            }
        }
        if table == RT_TABLE_LOCAL {
            continue;
        }
        if several {
            multipath += 1;
        } else if oif == Some(iface.index()) {
            routes.push(route);
        }
    }
    Ok((routes, multipath))
}

/// The metrics nested in RTA_METRICS: rtattrs of a u32 each.
fn metrics(v: &[u8]) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= v.len() {
        let len = u16::from_ne_bytes([v[off], v[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([v[off + 2], v[off + 3]]);
        if len < 8 || off + len > v.len() {
            break;
        }
        out.push((
            ty,
            u32::from_ne_bytes(v[off + 4..off + 8].try_into().expect("4")),
        ));
        off += len.div_ceil(4) * 4;
    }
    out
}

#[derive(Serialize, Deserialize)]
struct Saved {
    ifindex: u32,
    routes: Vec<Route>,
}

/// What `--mtu-room` changed: put back when dropped.
pub struct MtuRoomGuard {
    path: PathBuf,
    saved: Vec<Route>,
    /// The MTU each route was given, in the order of `saved`.
    pub lowered: Vec<(String, u32)>,
    /// Routes with several next hops, left alone.
    pub multipath: usize,
}

/// Lowers by [`ROOM`] the MTU of every route through `iface` (from its own MTU metric,
/// or the device's), after recording the routes in the state file.
pub fn make_room(iface: &Iface) -> Result<MtuRoomGuard, MtuRoomError> {
    let (routes, multipath) = routes_through(iface)?;
    if routes.is_empty() {
        return Err(MtuRoomError::NoRoutes {
            iface: iface.name().into(),
        });
    }
    let device = iface.mtu().unwrap_or(1500);
    let mut lowered = Vec::new();
    for r in &routes {
        let mtu = r.mtu().unwrap_or(device).min(device);
        if mtu < IPV6_MIN_MTU + ROOM {
            return Err(MtuRoomError::TooSmall {
                iface: iface.name().into(),
                dst: r.dst(),
                mtu,
            });
        }
        lowered.push((r.dst(), mtu - ROOM));
    }
    let path = iface.state_path("mtu-room");
    let state_err = |source| MtuRoomError::State {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(crate::RUN_DIR).map_err(state_err)?;
    let saved = serde_json::to_vec(&Saved {
        ifindex: iface.index(),
        routes: routes.clone(),
    })
    .expect("plain struct serialises");
    fs::write(&path, saved).map_err(state_err)?;
    let mut guard = MtuRoomGuard {
        path,
        saved: Vec::new(),
        lowered,
        multipath,
    };
    for (r, (dst, mtu)) in routes.iter().zip(&guard.lowered) {
        r.with_mtu(*mtu).put().map_err(|source| MtuRoomError::Set {
            iface: iface.name().into(),
            dst: dst.clone(),
            source,
        })?;
        // From here on, dropping the guard puts this route back.
        guard.saved.push(r.clone());
    }
    Ok(guard)
}

/// Puts back the routes a previous run left lowered (it crashed before restoring).
/// Returns how many. Call with the interface lock held.
pub fn recover(iface: &Iface) -> Result<usize, MtuRoomError> {
    let path = iface.state_path("mtu-room");
    let Ok(bytes) = fs::read(&path) else {
        return Ok(0);
    };
    let mut restored = 0;
    if let Ok(s) = serde_json::from_slice::<Saved>(&bytes)
        && s.ifindex == iface.index()
    {
        for r in &s.routes {
            // A route deleted since is not brought back.
            if r.put().is_ok() {
                restored += 1;
            }
        }
    }
    let _ = fs::remove_file(&path);
    Ok(restored)
}

impl Drop for MtuRoomGuard {
    fn drop(&mut self) {
        let mut kept = true;
        for r in &self.saved {
            if let Err(e) = r.put() {
                // Gone with the interface, or deleted by someone else: nothing to put
                // back. Anything else: keep the state file for the next start.
                if e.raw_os_error() != Some(libc::ENOENT) && e.raw_os_error() != Some(libc::ENODEV)
                {
                    log::warn!("could not restore the MTU of the route to {}: {e}", r.dst());
                    kept = false;
                }
            }
        }
        if kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_metrics_are_read_and_an_mtu_replaced() {
        let mut v = Vec::new();
        for (t, x) in [(RTAX_MTU, 1500u32), (10, 7)] {
            v.extend_from_slice(&8u16.to_ne_bytes());
            v.extend_from_slice(&t.to_ne_bytes());
            v.extend_from_slice(&x.to_ne_bytes());
        }
        let r = Route {
            rtmsg: vec![0; 12],
            attrs: vec![],
            metrics: metrics(&v),
        };
        assert_eq!(r.mtu(), Some(1500));
        let lower = r.with_mtu(1484);
        assert_eq!(lower.mtu(), Some(1484));
        assert!(lower.metrics.contains(&(10, 7)), "other metrics kept");
        assert_eq!(metrics(&v[..7]), vec![], "a cut attribute is not read");
    }
}
