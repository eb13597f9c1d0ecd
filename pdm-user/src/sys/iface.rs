//! Interface facts, read the way `ip` does, and the per-interface lock that keeps two
//! pdm instances off one interface.

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
pub fn check_ipv6(name: &str) -> Result<(), IfaceError> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => Err(IfaceError::NoIpv6(name.into())),
        Ok(_) => Ok(()),
        // No per-interface entry at all: IPv6 is off on this host or interface.
        Err(_) => Err(IfaceError::NoIpv6(name.into())),
    }
}

/// The device MTU (SIOCGIFMTU: answers for the caller's network namespace, which
/// /sys/class/net does not when the thread has moved namespaces).
pub fn mtu(name: &str) -> Result<u32, IfaceError> {
    #[repr(C)]
    struct IfReqMtu {
        name: [u8; libc::IFNAMSIZ],
        mtu: libc::c_int,
        _pad: [u8; 20],
    }
    let mut req = IfReqMtu {
        name: [0; libc::IFNAMSIZ],
        mtu: 0,
        _pad: [0; 20],
    };
    let n = name.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let sock =
        std::net::UdpSocket::bind("[::]:0").map_err(io("opening a socket for SIOCGIFMTU"))?;
    // SAFETY: a valid socket and an ifreq-sized buffer.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } != 0 {
        return Err(IfaceError::Io {
            what: format!("reading the MTU of {name}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(req.mtu as u32)
}

/// Identifies this network namespace, so that state files of equally named interfaces
/// in different namespaces do not collide.
pub fn netns_id() -> u64 {
    fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Path of a per-interface state file under [`crate::RUN_DIR`].
pub fn state_path(iface: &str, ext: &str) -> PathBuf {
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
    pub fn acquire(iface: &str) -> Result<Self, IfaceError> {
        fs::create_dir_all(crate::RUN_DIR).map_err(io(format!("creating {}", crate::RUN_DIR)))?;
        let path = state_path(iface, "lock");
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
                    iface: iface.into(),
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
