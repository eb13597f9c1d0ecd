//! Network namespaces: the test hosts, and veth pairs between them.

use std::{
    ffi::OsStr,
    fs::File,
    net::Ipv6Addr,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{Error, Result, output};

/// A network namespace, removed on drop with everything still running in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// The namespace `name`, made anew (a crashed run's leftover of that name is removed
    /// first), with loopback up and Duplicate Address Detection off: a tentative address
    /// cannot answer Neighbor Discovery, which delays or loses a test's first packets by
    /// about a second.
    pub fn create(name: &str) -> Result<Self> {
        remove(name);
        output(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_owned(),
        };
        for key in ["default", "all"] {
            ns.run(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{key}.accept_dad=0")],
            )?;
        }
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace with a name no other test of any process uses:
    /// `pdmt-TAG-PID-N`.
    pub fn unique(tag: &str) -> Result<Self> {
        Self::create(&format!(
            "pdmt-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`; its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        output(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.name, program)
    }

    /// Runs `program ARGS...` inside the namespace to completion; its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        output(self.command(program).args(args))
    }

    /// Moves the calling thread into the namespace (sockets it opens then live there).
    pub fn enter(&self) -> Result<()> {
        enter(&self.name)
    }

    /// Runs `f` on a thread of its own inside the namespace, and returns what it returns.
    /// Panics if the namespace cannot be entered (one this value made always can).
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter().expect("enter a namespace of our own");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A veth pair, `iface` in this namespace and `peer_iface` in `peer`, both up.
    pub fn veth(&self, iface: &str, peer: &Netns, peer_iface: &str) -> Result<()> {
        // Made right inside the two namespaces, so the names need only be free there.
        output(Command::new("ip").args([
            "link", "add", iface, "netns", &self.name, "type", "veth", "peer", "name", peer_iface,
            "netns", &peer.name,
        ]))?;
        self.ip(&["link", "set", iface, "up"])?;
        peer.ip(&["link", "set", peer_iface, "up"])?;
        Ok(())
    }

    /// Gives `iface` the address `addr/prefix` (usable at once: no DAD).
    pub fn add_addr(&self, iface: &str, addr: Ipv6Addr, prefix: u8) -> Result<()> {
        let cidr = format!("{addr}/{prefix}");
        self.ip(&["addr", "add", &cidr, "dev", iface, "nodad"])
            .map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// A command that runs `program` inside namespace `ns` (`ip netns exec` execs it, so the
/// child's pid is the program's).
pub fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Moves the calling thread into namespace `name`.
pub fn enter(name: &str) -> Result<()> {
    let fail = |source| Error::Enter {
        name: name.to_owned(),
        source,
    };
    let f = File::open(format!("/run/netns/{name}")).map_err(fail)?;
    // SAFETY: a valid fd; setns affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Removes namespace `name` and kills whatever runs in it (but this process, whose
/// threads may have entered it); nothing happens if there is none.
pub fn remove(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        let me = std::process::id() as i32;
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|&p| p != me)
        {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
