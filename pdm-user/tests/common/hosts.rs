//! Names for one namespace's resolver: `ip netns exec` mounts /etc/netns/NS/hosts over
//! /etc/hosts, so only commands run in that namespace see them (getaddrinfo and
//! getnameinfo both read it: forward and reverse names without DNS).

use std::path::{Path, PathBuf};

use super::Netns;

/// The hosts file of a namespace, removed on drop (also when the test panics).
pub struct Hosts(PathBuf);

impl Hosts {
    pub fn new(ns: &Netns, lines: &str) -> Self {
        let dir = Path::new("/etc/netns").join(&ns.name);
        // Another test's drop may remove an empty /etc/netns between the two mkdirs:
        // try again (bounded).
        let mut made = Err(std::io::Error::other("not tried"));
        for _ in 0..5 {
            made = std::fs::create_dir_all(&dir);
            if made.is_ok() {
                break;
            }
        }
        made.expect("create /etc/netns/NS");
        std::fs::write(dir.join("hosts"), lines).expect("write hosts");
        Hosts(dir)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // /etc/netns itself too, if nothing else is in it.
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
