//! Thin wrappers over the socket calls trace needs (libc, non-blocking, IPv6 only),
//! and their errors as the user should read them.

use std::{
    io,
    mem::{self, MaybeUninit},
    net::Ipv6Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::{Duration, Instant, SystemTime},
};

use libc::c_int;
use pdm_common::wire;

use super::{TraceError, UDP_BASE_PORT};

/// `SO_TIMESTAMPNS` (asm-generic/socket.h; not in the libc crate for Linux): receive
/// times as a `struct timespec` in a `SCM_TIMESTAMPNS` control message.
pub(super) const SO_TIMESTAMPNS: c_int = 35;

pub(super) struct Received {
    pub(super) len: usize,
    pub(super) from: Ipv6Addr,
    pub(super) at: Instant,
    /// The kernel's receive time.
    pub(super) kernel_at: Option<SystemTime>,
    /// It carried a Destination Options header with a PDM option.
    pub(super) pdm: bool,
}

/// One message from the raw ICMPv6 socket, with its sender and destination options.
pub(super) fn recv_icmp(s: &OwnedFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut from = sockaddr_zeroed();
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid, the pointers are set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: every buffer msg points to is live and writable for the lengths given.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let at = Instant::now();
    let mut pdm = false;
    let mut kernel_at = None;
    // SAFETY: the kernel filled msg's control buffer; the CMSG macros stay within
    // msg_controllen, and each cmsg's data is read within its cmsg_len.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_DSTOPTS {
                let data_len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = std::slice::from_raw_parts(libc::CMSG_DATA(c), data_len);
                pdm |= wire::decode_dstopts(data).is_ok_and(|h| h.pdm.is_some());
            }
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SO_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                kernel_at = SystemTime::UNIX_EPOCH
                    .checked_add(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok(Received {
        len: n as usize,
        from: Ipv6Addr::from(from.sin6_addr.s6_addr),
        at,
        kernel_at,
        pdm,
    })
}

pub(super) fn raw_icmp_socket() -> Result<OwnedFd, TraceError> {
    socket(libc::SOCK_RAW, libc::IPPROTO_ICMPV6)
}

/// A non-blocking IPv6 socket; EPERM is the missing capability.
pub(super) fn socket(ty: c_int, proto: c_int) -> Result<OwnedFd, TraceError> {
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => TraceError::NotPermitted,
            _ => TraceError::Io {
                what: "opening a socket",
                err: e,
            },
        });
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The source address for `target`, from a connected (never used) UDP socket.
pub(super) fn route_source(target: Ipv6Addr) -> Result<Ipv6Addr, TraceError> {
    let s = socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
    connect(&s, target, UDP_BASE_PORT).map_err(send_err(target))?;
    let mut sa = sockaddr_zeroed();
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `sa` is writable for `len` octets.
    if unsafe { libc::getsockname(s.as_raw_fd(), (&raw mut sa).cast(), &raw mut len) } != 0 {
        return Err(io_err("reading the source address")(
            io::Error::last_os_error(),
        ));
    }
    Ok(Ipv6Addr::from(sa.sin6_addr.s6_addr))
}

pub(super) fn setsockopt<T: ?Sized>(
    s: &OwnedFd,
    level: c_int,
    name: c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is readable for its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of_val(value) as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SO_ERROR: the pending error, cleared by reading it.
pub(super) fn so_error(s: &OwnedFd) -> c_int {
    let mut err: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `err` is writable for `len` octets.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    };
    if r == 0 { err } else { -1 }
}

fn sockaddr_zeroed() -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

fn sockaddr(addr: Ipv6Addr, port: u16) -> libc::sockaddr_in6 {
    let mut sa = sockaddr_zeroed();
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = addr.octets();
    sa
}

pub(super) fn send_to(s: &OwnedFd, buf: &[u8], addr: Ipv6Addr, port: u16) -> io::Result<()> {
    let sa = sockaddr(addr, port);
    // SAFETY: `buf` and `sa` are readable for the lengths given.
    let n = unsafe {
        libc::sendto(
            s.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Non-blocking connect: in progress counts as sent.
pub(super) fn connect(s: &OwnedFd, addr: Ipv6Addr, port: u16) -> io::Result<()> {
    let sa = sockaddr(addr, port);
    // SAFETY: `sa` is readable for the length given.
    let r = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    let e = io::Error::last_os_error();
    if r == 0 || e.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(())
    } else {
        Err(e)
    }
}

pub(super) fn recv_from(s: &OwnedFd, buf: &mut [u8]) -> io::Result<Ipv6Addr> {
    let mut sa = sockaddr_zeroed();
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `buf` and `sa` are writable for the lengths given.
    let n = unsafe {
        libc::recvfrom(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&raw mut sa).cast(),
            &raw mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Ipv6Addr::from(sa.sin6_addr.s6_addr))
}

pub(super) fn local_port(s: &OwnedFd) -> io::Result<u16> {
    let mut sa = sockaddr_zeroed();
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    let fd: RawFd = s.as_raw_fd();
    // SAFETY: `sa` is writable for `len` octets.
    if unsafe { libc::getsockname(fd, (&raw mut sa).cast(), &raw mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u16::from_be(sa.sin6_port))
}

pub(super) fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: `b` is writable for its length. On failure the value is only less random.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u16::from_ne_bytes(b)
}

pub(super) fn io_err(what: &'static str) -> impl Fn(io::Error) -> TraceError {
    move |err| TraceError::Io { what, err }
}

/// Sending or connecting: no route is the user's problem to hear about in one line.
pub(super) fn send_err(target: Ipv6Addr) -> impl Fn(io::Error) -> TraceError {
    move |e| match e.raw_os_error() {
        // No source address for it (EADDRNOTAVAIL) amounts to the same.
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EADDRNOTAVAIL) => {
            TraceError::NoRoute(target)
        }
        Some(libc::EPERM | libc::EACCES) => TraceError::Io {
            what: "sending a probe (a local firewall?)",
            err: e,
        },
        _ => TraceError::Io {
            what: "sending a probe",
            err: e,
        },
    }
}
