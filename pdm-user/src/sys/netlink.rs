//! One rtnetlink client for the few requests pdm makes itself (a device's
//! gso_max_segs, the TC filters and clsact qdisc of the legacy attach path): a message
//! built from a header, a fixed body and attributes; a request sent and its replies
//! walked until the kernel's ACK, error or end of dump.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// nlmsghdr: length, type, flags, sequence, port.
const HEADER_LEN: usize = 16;

/// A request: `body` (ifinfomsg, tcmsg, ...) after the header, then `attrs` as rtattrs
/// (each padded to 4 octets).
pub fn message(msg_type: u16, flags: libc::c_int, body: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; HEADER_LEN];
    m[4..6].copy_from_slice(&msg_type.to_ne_bytes());
    m[6..8].copy_from_slice(&(flags as u16).to_ne_bytes());
    m[8..12].copy_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(body);
    for (ty, data) in attrs {
        m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(data);
        m.resize(m.len().div_ceil(4) * 4, 0);
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// One reply message: its type and everything after its header.
pub struct Reply {
    pub msg_type: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The rtattrs after the first `fixed` octets of the body (ifinfomsg: 16).
    pub fn attrs(&self, fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
        let mut off = fixed;
        std::iter::from_fn(move || {
            let b = &self.body;
            if off + 4 > b.len() {
                return None;
            }
            let len = u16::from_ne_bytes([b[off], b[off + 1]]) as usize;
            let ty = u16::from_ne_bytes([b[off + 2], b[off + 3]]);
            if len < 4 || off + len > b.len() {
                return None;
            }
            let data = &b[off + 4..off + len];
            off += len.div_ceil(4) * 4;
            Some((ty, data))
        })
    }
}

/// Sends `req` and returns the replies other than the final ACK or end of dump; an error
/// the kernel answers with becomes an `io::Error` of that errno.
pub fn request(req: &[u8]) -> io::Result<Vec<Reply>> {
    // SAFETY: a plain socket call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh socket we own; closed on every path.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sending a buffer we own.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let dump = u16::from_ne_bytes([req[6], req[7]]) & libc::NLM_F_DUMP as u16 != 0;
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded: pdm's dumps (a qdisc's filters) are a handful of datagrams.
    for _ in 0..1024 {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let data = &buf[..n as usize];
        let mut off = 0;
        while off + HEADER_LEN <= data.len() {
            let len = u32::from_ne_bytes(data[off..off + 4].try_into().expect("4")) as usize;
            let ty = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
            if len < HEADER_LEN || off + len > data.len() {
                break;
            }
            match ty as libc::c_int {
                libc::NLMSG_DONE => return Ok(replies),
                libc::NLMSG_ERROR => {
                    // -errno right after the header; 0 is the ACK.
                    let code = i32::from_ne_bytes(
                        data[off + HEADER_LEN..off + HEADER_LEN + 4]
                            .try_into()
                            .expect("4"),
                    );
                    return if code == 0 {
                        Ok(replies)
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                _ => replies.push(Reply {
                    msg_type: ty,
                    body: data[off + HEADER_LEN..off + len].to_vec(),
                }),
            }
            off += len.div_ceil(4) * 4;
        }
        // A plain request (not a dump) is answered in one datagram.
        if !dump && !replies.is_empty() {
            return Ok(replies);
        }
    }
    Err(io::Error::other("rtnetlink reply did not end"))
}

/// ifinfomsg for the device `index`: family, type, index, flags, change.
pub fn ifinfomsg(index: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    m
}

/// tcmsg: family, ifindex, handle, parent, info.
pub fn tcmsg(ifindex: u32, handle: u32, parent: u32) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&handle.to_ne_bytes());
    m[12..16].copy_from_slice(&parent.to_ne_bytes());
    m
}
