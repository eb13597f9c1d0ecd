//! One-command set-up of a fresh machine: the nightly `rust-src` component, a
//! `bpf-linker` linked against the nightly toolchain's own LLVM, and the Debian packages
//! the tests drive. Each step first checks whether it is already done, so a second run
//! costs one `rustc --print sysroot`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use std::os::unix::fs::PermissionsExt as _;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd;

/// The eBPF programs build with this toolchain (`-Z build-std=core`); aya-build uses it too.
const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Executables the tests use, and the Debian package that provides each.
const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("tshark", "tshark"),
    ("dumpcap", "tshark"),
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("ethtool", "ethtool"),
    ("iperf3", "iperf3"),
    ("bpftool", "bpftool"),
    ("ping", "iputils-ping"),
    ("socat", "socat"),
    ("tmux", "tmux"),
    ("capsh", "libcap2-bin"),
    ("setpriv", "util-linux"),
    // A real Prometheus scraping `--metrics-addr`, and promtool checking the exposition.
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // pdm report's page rendered by a real browser.
    ("chromium", "chromium"),
    // `systemd-analyze verify` of the unit pdm ships.
    ("systemd-analyze", "systemd"),
];

/// Where set-up keeps what it builds: outside `target/`, so `cargo clean` keeps it.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PDM_TOOLS_DIR") {
        return dir.into();
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| "/var/tmp".into());
    data.join("pdm-xtask")
}

/// What later steps need from set-up.
pub struct Tools {
    /// Directory holding `bpf-linker`; goes in front of PATH for builds.
    pub bpf_linker_bin: PathBuf,
}

impl Tools {
    /// PATH with bpf-linker first, for cargo invocations that build the eBPF programs.
    pub fn path_env(&self) -> std::ffi::OsString {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(self.bpf_linker_bin.clone()).chain(std::env::split_paths(&old));
        std::env::join_paths(dirs).expect("PATH entries contain no separator")
    }
}

pub fn run() -> Result<Tools> {
    let started = Instant::now();
    let sysroot = step(
        "nightly toolchain",
        "rustup toolchain install nightly",
        nightly_sysroot,
    )?;
    step(
        "rust-src",
        "rustup component add rust-src --toolchain nightly",
        || rust_src(&sysroot),
    )?;
    let bpf_linker_bin = step(
        "bpf-linker",
        "see docs/building.md, step 3 (bpf-linker)",
        || bpf_linker(&sysroot),
    )?;
    step(
        "Debian packages",
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y <packages>",
        debian_packages,
    )?;
    eprintln!("setup: ready ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(Tools { bpf_linker_bin })
}

/// Runs one set-up step, naming it and the manual fix when it fails.
fn step<T>(name: &str, by_hand: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    f().map_err(|e| anyhow!("setup step `{name}` failed: {e:#}\n  to do it by hand: {by_hand}"))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out =
        cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
            .context("the nightly toolchain is needed to build eBPF programs")?;
    Ok(PathBuf::from(out.trim()))
}

fn rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("setup: installing rust-src for {NIGHTLY}");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// Builds bpf-linker against the nightly toolchain's libLLVM, through a minimal LLVM
/// prefix (an `llvm-config` that only answers `--version`, and symlinks to the library),
/// which is all bpf-linker's build script needs. Rebuilt when nightly's LLVM changes.
fn bpf_linker(sysroot: &Path) -> Result<PathBuf> {
    let lib_dir = sysroot.join("lib");
    let llvm_lib = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM.so."))
        .ok_or_else(|| anyhow!("no libLLVM.so.* in {}", lib_dir.display()))?;
    // "libLLVM.so.22.1-rust-1.97.0-nightly" -> major 22
    let llvm_version = llvm_lib
        .trim_start_matches("libLLVM.so.")
        .split('-')
        .next()
        .unwrap_or_default()
        .to_owned();
    let major = llvm_version
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();

    let dir = tools_dir();
    let root = dir.join("bpf-linker");
    let bin = root.join("bin");
    let stamp = root.join("built-against");
    let wanted = format!("{BPF_LINKER_VERSION} {llvm_lib}");
    if bin.join("bpf-linker").is_file()
        && fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted)
    {
        return Ok(bin);
    }

    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {llvm_lib} (about a minute)"
    );
    let prefix = dir.join("llvm-prefix");
    let _ = fs::remove_dir_all(&prefix);
    fs::create_dir_all(prefix.join("bin"))?;
    fs::create_dir_all(prefix.join("lib"))?;
    let target = lib_dir.join(&llvm_lib);
    std::os::unix::fs::symlink(&target, prefix.join("lib/libLLVM.so"))?;
    std::os::unix::fs::symlink(&target, prefix.join("lib").join(&llvm_lib))?;
    let llvm_config = prefix.join("bin/llvm-config");
    fs::write(&llvm_config, format!("#!/bin/sh\necho {llvm_version}.0\n"))?;
    fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))?;

    cmd::run(
        Command::new("cargo")
            .args([
                &format!("+{NIGHTLY}"),
                "install",
                "bpf-linker",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
                "--root",
            ])
            .arg(&root)
            .env("LLVM_PREFIX", &prefix),
    )?;
    fs::write(&stamp, wanted)?;
    Ok(bin)
}

fn debian_packages() -> Result<()> {
    let mut missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(exe, _)| !cmd::on_path(exe))
        .map(|&(_, pkg)| pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!("missing packages {} and not root", missing.join(" "));
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    cmd::output(Command::new("apt-get").arg("update"))?;
    cmd::output(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
