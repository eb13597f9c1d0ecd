//! An interface, looked up once into an [`Iface`] value (name and index) that the
//! attach, offload, lock and loop code all take, with the facts asked of it later
//! (MTU, driver, still there); and the per-interface lock that keeps two pdm instances
//! off one interface.

use std::{
    ffi::CString,
    fs::{self, File},
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IfaceError {
    #[error("no interface named `{0}` (list them with `ip link`)")]
    NotFound(String),
    #[error("`{0}` is not a valid interface name")]
    BadName(String),
    #[error(
        "interface `{0}` has IPv6 disabled (sysctl net.ipv6.conf.{0}.disable_ipv6=1); PDM is IPv6-only"
    )]
    NoIpv6(String),
    #[error("another pdm (pid {pid}) is already attached to `{iface}`; stop it first")]
    Busy { iface: String, pid: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IfaceError {
    let what = what.into();
    move |source| IfaceError::Io { what, source }
}

/// The interface's index, or a clear error when it does not exist.
pub fn index(name: &str) -> Result<u32, IfaceError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(IfaceError::BadName(name.into()));
    }
    let c = CString::new(name).map_err(|_| IfaceError::BadName(name.into()))?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(IfaceError::NotFound(name.into())),
        i => Ok(i),
    }
}

/// Fails when IPv6 is disabled on the interface (nothing for PDM to do there).
fn check_ipv6(name: &str) -> Result<(), IfaceError> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => Err(IfaceError::NoIpv6(name.into())),
        Ok(_) => Ok(()),
        // No per-interface entry at all: IPv6 is off on this host or interface.
        Err(_) => Err(IfaceError::NoIpv6(name.into())),
    }
}

/// An interface of this network namespace, as looked up once by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    name: String,
    index: u32,
}

impl Iface {
    /// Looks `name` up: it must exist and carry IPv6 (nothing for PDM to do otherwise).
    pub fn resolve(name: &str) -> Result<Self, IfaceError> {
        let iface = Self::resolve_link(name)?;
        check_ipv6(name)?;
        Ok(iface)
    }

    /// Looks `name` up as a link only: an observer reads the frames crossing it, and a
    /// mirror port carries IPv6 frames with IPv6 off on the port itself.
    pub fn resolve_link(name: &str) -> Result<Self, IfaceError> {
        Ok(Self {
            name: name.to_owned(),
            index: index(name)?,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device MTU (SIOCGIFMTU: answers for the caller's network namespace, which
    /// /sys/class/net does not when the thread has moved namespaces).
    pub fn mtu(&self) -> Result<u32, IfaceError> {
        let mut req = IfReq::new(&self.name);
        ifreq_ioctl(libc::SIOCGIFMTU, &mut req)
            .map_err(io(format!("reading the MTU of {}", self.name)))?;
        Ok(i32::from_ne_bytes(req.tail[..4].try_into().expect("4 octets")) as u32)
    }

    /// The driver's name (`ethtool -i`), e.g. `veth`; None where it has none.
    pub fn driver(&self) -> Option<String> {
        // struct ethtool_drvinfo: the command word, then the driver name (32 octets).
        let mut buf = [0u8; 196];
        buf[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
        ethtool(&self.name, &mut buf).ok()?;
        let name = &buf[4..36];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some(String::from_utf8_lossy(&name[..end]).into_owned()).filter(|n| !n.is_empty())
    }

    /// Whether the interface is still there as the same device (one deleted and made
    /// again under the same name has another index).
    pub fn still_there(&self) -> bool {
        index(&self.name).ok() == Some(self.index)
    }

    /// Path of a state file of this interface's under [`crate::RUN_DIR`].
    pub fn state_path(&self, ext: &str) -> PathBuf {
        state_path(&self.name, ext)
    }
}

impl std::fmt::Display for Iface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x03;

/// `struct ifreq`: a name, then a 24-octet union (an int, or a pointer to data).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    tail: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            tail: [0; 24],
        };
        let n = name.len().min(libc::IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        req
    }
}

/// One interface ioctl (on a throwaway socket of this namespace).
fn ifreq_ioctl(request: libc::c_ulong, req: &mut IfReq) -> std::io::Result<()> {
    let sock =
        std::net::UdpSocket::bind("[::]:0").or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))?;
    // SAFETY: a valid socket and an ifreq-sized buffer; a pointer in its tail points at
    // a live buffer of the size the request expects. (SIOCETHTOOL's SFEATURES returns a
    // non-negative set of flags on success.)
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut IfReq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One SIOCETHTOOL on interface `name` with `buf` (which starts with the command word).
pub(crate) fn ethtool(name: &str, buf: &mut [u8]) -> std::io::Result<()> {
    let mut req = IfReq::new(name);
    req.tail[..8].copy_from_slice(&(buf.as_mut_ptr() as usize as u64).to_ne_bytes());
    ifreq_ioctl(SIOCETHTOOL, &mut req)
}

/// Identifies this network namespace, so that state files of equally named interfaces
/// in different namespaces do not collide.
pub fn netns_id() -> u64 {
    fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Path of a per-interface state file under [`crate::RUN_DIR`].
fn state_path(iface: &str, ext: &str) -> PathBuf {
    PathBuf::from(crate::RUN_DIR).join(format!("{}-{iface}.{ext}", netns_id()))
}

/// An exclusive lock on an interface, held for the life of the value (and released by
/// the kernel if the process dies). The lock file is removed on drop, so a clean exit
/// leaves nothing in [`crate::RUN_DIR`].
pub struct IfaceLock {
    file: File,
    path: PathBuf,
}

impl IfaceLock {
    pub fn acquire(iface: &Iface) -> Result<Self, IfaceError> {
        fs::create_dir_all(crate::RUN_DIR).map_err(io(format!("creating {}", crate::RUN_DIR)))?;
        let path = iface.state_path("lock");
        // A holder that exits removes the file after we opened it: then our lock is on
        // a file nobody else will see, so try again with the new one (bounded).
        for _ in 0..8 {
            let mut file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io(format!("opening {}", path.display())))?;
            // SAFETY: valid fd.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(IfaceError::Busy {
                    iface: iface.name().into(),
                    pid: pid.trim().to_owned(),
                });
            }
            let same = match (file.metadata(), fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = write!(file, "{}", std::process::id());
            return Ok(Self { file, path });
        }
        Err(IfaceError::Io {
            what: format!("locking {}", path.display()),
            source: std::io::Error::other("the lock file keeps being replaced"),
        })
    }
}

impl Drop for IfaceLock {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes when the file is closed.
        let _ = fs::remove_file(&self.path);
        let _ = &self.file;
    }
}
