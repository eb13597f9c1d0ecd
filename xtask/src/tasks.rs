//! The tasks behind `cargo xtask run` and `cargo xtask test`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{cmd, setup};

/// Host crates; `pdm-ebpf` only builds for the BPF target (through pdm-user's build.rs).
const HOST_PACKAGES: &[&str] = &["pdm-common", "pdm-user", "testbed", "xtask"];

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_owned()
}

fn cargo(tools: &setup::Tools) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root())
        .env("PATH", tools.path_env());
    c
}

fn packages(c: &mut Command) -> &mut Command {
    for p in HOST_PACKAGES {
        c.args(["-p", p]);
    }
    c
}

/// Builds the `pdm` binary (release); returns its path.
pub fn build_pdm(tools: &setup::Tools) -> Result<PathBuf> {
    cmd::run(cargo(tools).args(["build", "--release", "-p", "pdm-user", "--bin", "pdm"]))?;
    Ok(workspace_root().join("target/release/pdm"))
}

/// Builds the `pdm` binary of git revision `rev` (release), in a worktree of its own
/// under `target/baseline/` with a target directory of its own, so that the benchmark
/// can measure it next to this tree's. Returns its path and the revision's short hash.
pub fn build_pdm_at(tools: &setup::Tools, rev: &str) -> Result<(PathBuf, String)> {
    let root = workspace_root();
    let hash = cmd::output(Command::new("git").current_dir(&root).args([
        "rev-parse",
        "--short",
        &format!("{rev}^{{commit}}"),
    ]))
    .with_context(|| format!("--baseline {rev}: not a revision of this repository"))?
    .trim()
    .to_owned();
    let base = root.join("target/baseline");
    let tree = base.join(&hash);
    if !tree.join("Cargo.toml").is_file() {
        // A worktree left half-made by an interrupted run is removed first.
        let _ = std::fs::remove_dir_all(&tree);
        cmd::run(
            Command::new("git")
                .current_dir(&root)
                .args(["worktree", "prune"]),
        )?;
        cmd::run(
            Command::new("git")
                .current_dir(&root)
                .args(["worktree", "add", "--detach", "--force"])
                .arg(&tree)
                .arg(&hash),
        )?;
    }
    cmd::run(
        cargo(tools)
            .current_dir(&tree)
            .env("CARGO_TARGET_DIR", base.join("target"))
            .args(["build", "--release", "-p", "pdm-user", "--bin", "pdm"]),
    )?;
    Ok((base.join("target/release/pdm"), hash))
}

/// Builds pdm-user's example `name` (release); returns its path.
pub fn build_example(tools: &setup::Tools, name: &str) -> Result<PathBuf> {
    cmd::run(cargo(tools).args(["build", "--release", "-p", "pdm-user", "--example", name]))?;
    Ok(workspace_root().join("target/release/examples").join(name))
}

/// Builds the `pdm` binary (release) and runs `pdm run ARGS`, or with no arguments the
/// embedded demo.
pub fn run(args: &[String]) -> Result<()> {
    let tools = setup::run()?;
    let mut c = Command::new(build_pdm(&tools)?);
    match args.first().map(String::as_str) {
        // No arguments: the embedded demo on test hosts it creates.
        None => c.arg("demo"),
        // A pdm subcommand: as given (e.g. `demo --processing-time 20ms`).
        Some("demo" | "run" | "check") => c.args(args),
        // Options of `pdm run` (e.g. `--iface eth0`).
        Some(_) => c.arg("run").args(args),
    };
    cmd::run(&mut c)
}

/// cargo-fuzz targets in `fuzz/` (the userspace decoders and the header-chain parser).
const FUZZ_TARGETS: &[&str] = &["decode_dstopts", "delta_time", "chain"];

/// The randomized frame test (`pdm-user/tests/fuzz_frames.rs`) at length, `frames`
/// frames from `seed` (random when not given, and printed so a failure can be rerun),
/// then each cargo-fuzz target for `secs` seconds.
pub fn fuzz(frames: u64, seed: Option<u64>, secs: u64) -> Result<()> {
    let tools = setup::run()?;
    let seed = seed.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        // SAFETY: writes at most 8 octets into `b`.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        u64::from_ne_bytes(b)
    });
    section(&format!(
        "kernel programs: {frames} frames, seed {seed:#x} (rerun: cargo xtask fuzz --seed {seed:#x})"
    ));
    cmd::run(
        cargo(&tools)
            .args([
                "test",
                "--release",
                "-p",
                "pdm-user",
                "--test",
                "fuzz_frames",
                "--",
                "--nocapture",
            ])
            .env("PDM_FUZZ_SEED", format!("{seed:#x}"))
            .env("PDM_FUZZ_FRAMES", frames.to_string()),
    )?;
    if !cmd::on_path("cargo-fuzz") {
        section("installing cargo-fuzz");
        cmd::run(cargo(&tools).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    for target in FUZZ_TARGETS {
        section(&format!("cargo-fuzz: {target}, {secs} s"));
        cmd::run(
            cargo(&tools)
                .current_dir(workspace_root().join("fuzz"))
                .args(["+nightly", "fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={secs}")),
        )?;
    }
    Ok(())
}

pub fn test(args: &[String]) -> Result<()> {
    let tools = setup::run()?;
    section("cargo fmt --check");
    cmd::run(cargo(&tools).args(["fmt", "--all", "--", "--check"]))?;

    section("clippy: host crates");
    cmd::run(packages(cargo(&tools).arg("clippy")).args([
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    section("clippy: pdm-ebpf (bpfel-unknown-none)");
    cmd::run(
        cargo(&tools)
            .args(["+nightly", "clippy", "-p", "pdm-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"]),
    )?;

    section("tests");
    // Library, binary and integration tests (no doc-tests: there are none, and an
    // empty run would be the last thing printed).
    let mut c = cargo(&tools);
    packages(c.args(["test", "--lib", "--bins", "--tests"]))
        .arg("--")
        .args(args);
    let (passed, failed) = cmd::run_counting_tests(&mut c)?;
    // One closing line for the whole suite.
    println!("\ntests: {passed} passed, {failed} failed");
    Ok(())
}

fn section(name: &str) {
    eprintln!("\n== {name}");
}

/// `cargo xtask dist`: the files of a Linux package, generated from the CLI itself and
/// copied from `dist/`, into target/dist (laid out as under /usr).
pub fn dist() -> Result<()> {
    let tools = setup::run()?;
    let pdm = build_pdm(&tools)?;
    let out = workspace_root().join("target/dist");
    let _ = std::fs::remove_dir_all(&out);
    let generated: &[(&str, &str)] = &[
        ("man", "share/man/man1/pdm.1"),
        ("bash", "share/bash-completion/completions/pdm"),
        ("zsh", "share/zsh/vendor-completions/_pdm"),
        ("fish", "share/fish/vendor_completions.d/pdm.fish"),
    ];
    for (what, path) in generated {
        let text = cmd::output(Command::new(&pdm).args(["generate", what]))?;
        write(&out.join(path), text.as_bytes())?;
    }
    for (from, to) in [
        ("dist/pdm@.service", "lib/systemd/system/pdm@.service"),
        ("dist/pdm.logrotate", "etc/logrotate.d/pdm"),
    ] {
        let bytes = std::fs::read(workspace_root().join(from))
            .with_context(|| format!("reading {from}"))?;
        write(&out.join(to), &bytes)?;
    }
    write(
        &out.join("bin/pdm"),
        &std::fs::read(&pdm).context("reading pdm")?,
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(out.join("bin/pdm"), std::fs::Permissions::from_mode(0o755))?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

fn write(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
