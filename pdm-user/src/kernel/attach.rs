//! Loading the eBPF object and attaching its programs through bpf_links, so that the
//! kernel detaches everything when the process ends — however it ends.
//!
//! A hidden test switch (`pdm run --attach netlink`) attaches the TC programs the legacy
//! way instead, as filters of a clsact qdisc (what kernels before 6.6 offer). Those stay
//! attached when the process dies, so that path has its own clean-up: filters (and the
//! qdisc, when pdm added it) are removed on exit, a state file in [`crate::RUN_DIR`]
//! records a qdisc pdm added, and every start removes filters a killed run left behind
//! ([`recover_tc`]).

use std::{fs, path::PathBuf};

use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::FdLink,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
};
use aya::{Ebpf, EbpfLoader, maps::HashMap};
use pdm_common::{
    config::Config,
    flow::{
        DEFAULT_MAX_FLOWS, DEFAULT_SAMPLE_TICK_SHIFT, FLOW_WAYS, HashKey, SAMPLES_RING_BYTES,
        table_slots,
    },
    names,
    observe::OBSERVE_RING_BYTES,
    select::HostKey,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    filter::Filter,
    sys::{iface::Iface, netlink},
};

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("writing the --only addresses: {0}")]
    OnlyHosts(#[source] aya::maps::MapError),
    #[error("program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "program `{0}` was attached without a bpf_link (legacy netlink); refusing, because it \
         would stay attached if pdm were killed"
    )]
    NotALink(&'static str),
    #[error("adding a clsact qdisc to `{iface}`: {source}")]
    Clsact {
        iface: String,
        #[source]
        source: tc::TcError,
    },
    #[error("tc state file {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How the TC programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcMode {
    /// TCX bpf_links (kernel >= 6.6): detached by the kernel when pdm dies.
    #[default]
    Tcx,
    /// Legacy netlink filters on a clsact qdisc, removed by pdm itself (on exit, or by
    /// the next start after a crash).
    Netlink,
}

/// How received packets are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ingress {
    /// Native XDP where the driver has it and it costs nothing else; TC ingress on a
    /// veth (where XDP would turn off the peer's GSO), or where native XDP cannot be
    /// attached (no driver support, or another XDP program holds the interface).
    Auto,
    /// XDP, native mode, falling back to generic (SKB) mode.
    Xdp,
    /// A TC ingress classifier (TCX): keeps the peer's GSO on veth.
    Tc,
}

/// Which programs a load is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// `pdm run`: egress and ingress, and the flow table.
    #[default]
    Run,
    /// `pdm observe`: the read-only observer programs, and the observer's table.
    Observe,
    /// `pdm check`: every program verified, tables as for a run.
    Check,
}

pub struct LoadOptions {
    pub role: Role,
    pub max_flows: u32,
    pub clamp_mss: bool,
    /// `--only`: the flows that get PDM (default: all).
    pub only: Filter,
    /// log2 of the least time between a flow's RTT samples, in ns; 0: every echo.
    pub sample_tick_shift: u8,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            role: Role::Run,
            max_flows: DEFAULT_MAX_FLOWS,
            clamp_mss: true,
            only: Filter::default(),
            sample_tick_shift: DEFAULT_SAMPLE_TICK_SHIFT,
        }
    }
}

/// Loads the object and has the kernel verify every program. Attaches nothing.
pub fn load(opts: &LoadOptions) -> Result<Ebpf, AttachError> {
    let slots = table_slots(opts.max_flows);
    let (only, only_hosts) = opts.only.kernel_form();
    let config = Config {
        hash_key: random_hash_key(),
        only,
        set_mask: slots / FLOW_WAYS - 1,
        clamp_mss: opts.clamp_mss.into(),
        sample_tick_shift: opts.sample_tick_shift,
        ..Config::DEFAULT
    };
    // Only the table of the role's programs gets its size; the other one a set.
    let (flows, observed, ring) = match opts.role {
        Role::Observe => (FLOW_WAYS, slots, OBSERVE_RING_BYTES),
        Role::Run | Role::Check => (slots, FLOW_WAYS, SAMPLES_RING_BYTES),
    };
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::FLOWS, flows)
        .map_max_entries(names::OBSERVED, observed)
        .map_max_entries(names::SAMPLES, ring)
        .override_global(names::CONFIG, &config, true)
        .load(crate::EBPF_OBJECT)
        .map_err(AttachError::Load)?;
    let mut hosts: HashMap<_, HostKey, u8> = ebpf
        .map_mut(names::ONLY_HOSTS)
        .ok_or(AttachError::MissingMap(names::ONLY_HOSTS))?
        .try_into()
        .map_err(AttachError::OnlyHosts)?;
    for h in only_hosts {
        hosts.insert(h, 1, 0).map_err(AttachError::OnlyHosts)?;
    }
    let (classifiers, xdps): (&[&'static str], &[&'static str]) = match opts.role {
        Role::Run => (
            &[names::PROG_EGRESS, names::PROG_INGRESS_TC],
            &[names::PROG_INGRESS_XDP],
        ),
        Role::Observe => (&[names::PROG_OBSERVE_TC], &[names::PROG_OBSERVE_XDP]),
        Role::Check => (
            &[
                names::PROG_EGRESS,
                names::PROG_INGRESS_TC,
                names::PROG_OBSERVE_TC,
            ],
            &[names::PROG_INGRESS_XDP, names::PROG_OBSERVE_XDP],
        ),
    };
    for &name in classifiers {
        classifier(&mut ebpf, name)?
            .load()
            .map_err(|source| AttachError::Program { name, source })?;
    }
    for &name in xdps {
        xdp(&mut ebpf, name)?
            .load()
            .map_err(|source| AttachError::Program { name, source })?;
    }
    Ok(ebpf)
}

/// A seed for the flow hash that nobody outside can know.
fn random_hash_key() -> HashKey {
    let mut k = HashKey::default();
    // SAFETY: writes at most size_of::<HashKey>() octets into `k`, plain integers.
    // Should it fail, the key is merely known.
    unsafe { libc::getrandom((&raw mut k).cast(), size_of::<HashKey>(), 0) };
    k
}

pub fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, AttachError> {
    ebpf.program_mut(name)
        .ok_or(AttachError::MissingProgram(name))?
        .try_into()
        .map_err(|source| AttachError::Program { name, source })
}

pub fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, AttachError> {
    ebpf.program_mut(name)
        .ok_or(AttachError::MissingProgram(name))?
        .try_into()
        .map_err(|source| AttachError::Program { name, source })
}

/// The programs attached to one interface; dropping it detaches them.
pub struct Attached {
    /// Human-readable description of each attachment, for the start-up message.
    pub description: Vec<String>,
    // Dropping a link detaches its program.
    links: Vec<FdLink>,
    /// Netlink filters (`--attach netlink`): dropping one deletes the filter.
    filters: Vec<SchedClassifierLink>,
    mode: TcMode,
    /// The clsact qdisc pdm added (`--attach netlink`), removed after the filters.
    qdisc: Option<Clsact>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.links.clear();
        self.filters.clear();
        if let Some(q) = self.qdisc.take() {
            q.remove();
        }
    }
}

/// Attaches egress (TC, TCX link) and ingress (XDP native → generic, TC, or the better
/// of the two for the driver) to `iface`.
pub fn attach(ebpf: &mut Ebpf, iface: &Iface, ingress: Ingress) -> Result<Attached, AttachError> {
    attach_with(ebpf, iface, ingress, TcMode::Tcx)
}

/// As [`attach`], with the TC programs attached the way `mode` says.
pub fn attach_with(
    ebpf: &mut Ebpf,
    iface: &Iface,
    ingress: Ingress,
    mode: TcMode,
) -> Result<Attached, AttachError> {
    let mut out = Attached::new(iface, mode)?;
    // On an error below, dropping `out` undoes what was attached so far.
    out.tc(
        ebpf,
        iface,
        names::PROG_EGRESS,
        TcAttachType::Egress,
        "egress",
    )?;
    out.ingress(
        ebpf,
        iface,
        ingress,
        names::PROG_INGRESS_XDP,
        names::PROG_INGRESS_TC,
    )?;
    Ok(out)
}

/// Attaches the observer's read-only programs to `iface`: ingress as [`attach`] does,
/// and with `egress` the TC program on egress too. TCX links only.
pub fn observe(
    ebpf: &mut Ebpf,
    iface: &Iface,
    ingress: Ingress,
    egress: bool,
) -> Result<Attached, AttachError> {
    let mut out = Attached::new(iface, TcMode::Tcx)?;
    out.ingress(
        ebpf,
        iface,
        ingress,
        names::PROG_OBSERVE_XDP,
        names::PROG_OBSERVE_TC,
    )?;
    if egress {
        out.tc(
            ebpf,
            iface,
            names::PROG_OBSERVE_TC,
            TcAttachType::Egress,
            "egress",
        )?;
    }
    Ok(out)
}

impl Attached {
    fn new(iface: &Iface, mode: TcMode) -> Result<Self, AttachError> {
        Ok(Self {
            description: Vec::new(),
            links: Vec::new(),
            filters: Vec::new(),
            mode,
            qdisc: match mode {
                TcMode::Netlink => Clsact::ensure(iface)?,
                TcMode::Tcx => None,
            },
        })
    }

    /// Attaches TC program `name` at `at`, the way `self.mode` says.
    fn tc(
        &mut self,
        ebpf: &mut Ebpf,
        iface: &Iface,
        name: &'static str,
        at: TcAttachType,
        what: &str,
    ) -> Result<(), AttachError> {
        match self.mode {
            TcMode::Tcx => {
                self.links.push(attach_tc(ebpf, name, iface, at)?);
                self.description
                    .push(format!("{name}: tc {what} (tcx link)"));
            }
            TcMode::Netlink => {
                self.filters.push(attach_tc_netlink(ebpf, name, iface, at)?);
                self.description
                    .push(format!("{name}: tc {what} (netlink filter, clsact)"));
            }
        }
        Ok(())
    }

    /// Attaches the ingress side: XDP program `xdp_name` or TC program `tc_name`, as
    /// `ingress` decides for the driver.
    fn ingress(
        &mut self,
        ebpf: &mut Ebpf,
        iface: &Iface,
        ingress: Ingress,
        xdp_name: &'static str,
        tc_name: &'static str,
    ) -> Result<(), AttachError> {
        // With `auto`, why TC ingress was chosen over XDP.
        let tc_because = match ingress {
            Ingress::Tc => Some(""),
            Ingress::Auto if iface.driver().as_deref() == Some("veth") => {
                Some(" (auto: a veth, where XDP would cost the peer its GSO)")
            }
            Ingress::Auto => match attach_xdp(ebpf, xdp_name, iface, XdpMode::Driver) {
                Ok(link) => {
                    self.links.push(link);
                    self.description
                        .push(format!("{xdp_name}: xdp native (bpf_link)"));
                    None
                }
                Err(native) => {
                    log::debug!("native XDP is not available on {iface} ({native}): TC ingress");
                    Some(" (auto: native XDP not available here)")
                }
            },
            Ingress::Xdp => {
                let (link, mode) = match attach_xdp(ebpf, xdp_name, iface, XdpMode::Driver) {
                    Ok(link) => (link, "native"),
                    Err(native) => {
                        log::warn!(
                            "native XDP is not available on {iface} ({native}); using generic (SKB) mode"
                        );
                        (attach_xdp(ebpf, xdp_name, iface, XdpMode::Skb)?, "generic")
                    }
                };
                self.links.push(link);
                self.description
                    .push(format!("{xdp_name}: xdp {mode} (bpf_link)"));
                None
            }
        };
        if let Some(because) = tc_because {
            self.tc(
                ebpf,
                iface,
                tc_name,
                TcAttachType::Ingress,
                &format!("ingress{because}"),
            )?;
        }
        Ok(())
    }
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &Iface,
    mode: XdpMode,
) -> Result<FdLink, AttachError> {
    let prog = xdp(ebpf, name)?;
    let id = prog
        .attach(iface.name(), mode)
        .map_err(|source| AttachError::Program { name, source })?;
    let link = prog
        .take_link(id)
        .map_err(|source| AttachError::Program { name, source })?;
    FdLink::try_from(link).map_err(|_| AttachError::NotALink(name))
}

fn attach_tc(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &Iface,
    at: TcAttachType,
) -> Result<FdLink, AttachError> {
    let prog = classifier(ebpf, name)?;
    let id = prog
        .attach(iface.name(), at)
        .map_err(|source| AttachError::Program { name, source })?;
    let link = prog
        .take_link(id)
        .map_err(|source| AttachError::Program { name, source })?;
    FdLink::try_from(link).map_err(|_| AttachError::NotALink(name))
}

fn attach_tc_netlink(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &Iface,
    at: TcAttachType,
) -> Result<SchedClassifierLink, AttachError> {
    let prog = classifier(ebpf, name)?;
    let id = prog
        .attach_with_options(
            iface.name(),
            at,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(|source| AttachError::Program { name, source })?;
    prog.take_link(id)
        .map_err(|source| AttachError::Program { name, source })
}

/// What a netlink-mode run records so that the next start can undo it after a crash.
#[derive(Serialize, Deserialize)]
struct TcState {
    ifindex: u32,
    /// pdm added the clsact qdisc (so it removes it too).
    added_clsact: bool,
}

/// A clsact qdisc pdm added; [`Clsact::remove`] deletes it (if no filter of anyone
/// else's is left on it) and its state file.
struct Clsact {
    iface: Iface,
    path: PathBuf,
}

impl Clsact {
    /// Adds the clsact qdisc unless the interface has one; returns the guard when pdm
    /// added it. The state file is written first, so a crash at any point is undone.
    fn ensure(iface: &Iface) -> Result<Option<Clsact>, AttachError> {
        let path = iface.state_path("tc");
        let state_err = |source| AttachError::State {
            path: path.display().to_string(),
            source,
        };
        let state = serde_json::to_vec(&TcState {
            ifindex: iface.index(),
            added_clsact: true,
        })
        .expect("plain struct serialises");
        fs::create_dir_all(crate::RUN_DIR).map_err(state_err)?;
        fs::write(&path, state).map_err(state_err)?;
        match tc::qdisc_add_clsact(iface.name()) {
            Ok(()) => Ok(Some(Clsact {
                iface: iface.clone(),
                path,
            })),
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                // Someone else's qdisc: used, never removed.
                let _ = fs::remove_file(&path);
                Ok(None)
            }
            Err(source) => {
                let _ = fs::remove_file(&path);
                Err(AttachError::Clsact {
                    iface: iface.name().into(),
                    source,
                })
            }
        }
    }

    fn remove(self) {
        if !self.iface.still_there() {
            // The interface is gone, and its qdisc with it.
            let _ = fs::remove_file(&self.path);
            return;
        }
        match remove_clsact_if_unused(&self.iface) {
            Ok(true) => log::debug!("removed the clsact qdisc pdm added to {}", self.iface),
            Ok(false) => log::info!(
                "left the clsact qdisc on {}: it holds filters pdm did not add",
                self.iface
            ),
            Err(e) => log::warn!("could not remove the clsact qdisc from {}: {e}", self.iface),
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// Deletes the clsact qdisc of `iface` if neither direction has a filter left.
/// Returns whether it did.
fn remove_clsact_if_unused(iface: &Iface) -> std::io::Result<bool> {
    let ifindex = iface.index();
    for at in [TcAttachType::Ingress, TcAttachType::Egress] {
        if count_filters(ifindex, at)? > 0 {
            return Ok(false);
        }
    }
    del_clsact(ifindex)?;
    Ok(true)
}

/// Removes what a killed `--attach netlink` run left on `iface`: pdm's TC filters, and
/// the clsact qdisc if that run added it and nothing else uses it. Call with the
/// interface lock held (so no other pdm owns those filters). Returns what was removed,
/// for the start-up message.
pub fn recover_tc(iface: &Iface) -> Vec<String> {
    let mut removed = Vec::new();
    for (at, name) in [
        (TcAttachType::Egress, names::PROG_EGRESS),
        (TcAttachType::Ingress, names::PROG_INGRESS_TC),
    ] {
        match tc::qdisc_detach_program(iface.name(), at, name) {
            Ok(()) => removed.push(format!("tc filter {name}")),
            // None found (or no clsact qdisc at all): nothing to do.
            Err(e) => log::debug!("no stale {name} filter on {iface}: {e}"),
        }
    }
    let path = iface.state_path("tc");
    if let Ok(bytes) = fs::read(&path) {
        let state: Option<TcState> = serde_json::from_slice(&bytes).ok();
        // Same interface (not a new one that reuses the name).
        if state.is_some_and(|s| s.ifindex == iface.index() && s.added_clsact) {
            match remove_clsact_if_unused(iface) {
                Ok(true) => removed.push("clsact qdisc".into()),
                Ok(false) => {}
                Err(e) => log::debug!("clsact qdisc on {iface}: {e}"),
            }
        }
        let _ = fs::remove_file(&path);
    }
    removed
}

const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const TC_H_MIN_INGRESS: u32 = 0xFFF2;
const TC_H_MIN_EGRESS: u32 = 0xFFF3;
const RTM_DELQDISC: u16 = 37;
const RTM_GETTFILTER: u16 = 46;
const RTM_NEWTFILTER: u16 = 44;

/// Number of TC filters on the clsact qdisc's `at` side (`tc filter show dev X egress`).
fn count_filters(ifindex: u32, at: TcAttachType) -> std::io::Result<usize> {
    let minor = match at {
        TcAttachType::Ingress => TC_H_MIN_INGRESS,
        _ => TC_H_MIN_EGRESS,
    };
    let parent = (TC_H_CLSACT & 0xFFFF_0000) | minor;
    let req = netlink::message(
        RTM_GETTFILTER,
        libc::NLM_F_REQUEST | libc::NLM_F_DUMP,
        &netlink::tcmsg(ifindex, 0, parent),
        &[],
    );
    let replies = netlink::request(&req)?;
    Ok(replies
        .iter()
        .filter(|r| r.msg_type == RTM_NEWTFILTER)
        .count())
}

/// `tc qdisc del dev X clsact`.
fn del_clsact(ifindex: u32) -> std::io::Result<()> {
    let req = netlink::message(
        RTM_DELQDISC,
        libc::NLM_F_REQUEST | libc::NLM_F_ACK,
        &netlink::tcmsg(ifindex, TC_H_CLSACT & 0xFFFF_0000, TC_H_CLSACT),
        &[],
    );
    netlink::request(&req).map(drop)
}
