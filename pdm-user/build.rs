//! Builds the eBPF programs (pdm-ebpf) for bpfel-unknown-none with aya-build, so the
//! loader embeds them. Needs nightly with rust-src and bpf-linker: `cargo xtask setup`.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    add_xtask_tools_to_path();
    target_cpu_v3();
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "pdm-ebpf")
        .ok_or_else(|| anyhow!("pdm-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs failed; `cargo xtask setup` installs what they need")
}

/// `cargo xtask setup` keeps bpf-linker outside target/; find it there too, so a plain
/// `cargo build` works after set-up without touching PATH.
fn add_xtask_tools_to_path() {
    println!("cargo:rerun-if-env-changed=PDM_TOOLS_DIR");
    let dir = std::env::var_os("PDM_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_DATA_HOME").map(|d| PathBuf::from(d).join("pdm-xtask")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/pdm-xtask"))
        });
    let Some(bin) = dir.map(|d| d.join("bpf-linker/bin")) else {
        return;
    };
    if bin.is_dir() {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&old)))
            .expect("PATH entries contain no separator");
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("PATH", path) };
    }
}

/// The PSN counter needs BPF atomic fetch-and-add, an ISA v3 instruction (kernel ≥ 5.12).
/// aya-build sets the eBPF build's RUSTFLAGS itself, so the CPU goes in through nightly
/// cargo's profile rustflags, in the environment of the child build only; build scripts
/// and proc macros of that build stay on the host CPU.
fn target_cpu_v3() {
    // SAFETY: build scripts are single-threaded at this point.
    unsafe {
        std::env::set_var("CARGO_UNSTABLE_PROFILE_RUSTFLAGS", "true");
        std::env::set_var(
            "CARGO_PROFILE_RELEASE_RUSTFLAGS",
            "-C target-cpu=v3 -C link-arg=--disable-expand-memcpy-in-order",
        );
        std::env::set_var("CARGO_PROFILE_RELEASE_BUILD_OVERRIDE_RUSTFLAGS", "");
    }
}
