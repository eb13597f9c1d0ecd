//! Loading the eBPF object and attaching its programs through bpf_links, so that the
//! kernel detaches everything when the process ends — however it ends.

use aya::maps::HashMap;
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink},
};
use pdm_common::{
    flow::{DEFAULT_MAX_FLOWS, FLOW_WAYS, table_slots},
    names,
    select::HostKey,
};
use thiserror::Error;

use crate::filter::Filter;

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
}

/// How received packets are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ingress {
    /// XDP, native mode, falling back to generic (SKB) mode.
    Xdp,
    /// A TC ingress classifier (TCX): keeps the peer's GSO on veth.
    Tc,
}

pub struct LoadOptions {
    pub max_flows: u32,
    pub clamp_mss: bool,
    /// `--only`: the flows that get PDM (default: all).
    pub only: Filter,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_flows: DEFAULT_MAX_FLOWS,
            clamp_mss: true,
            only: Filter::default(),
        }
    }
}

/// Loads the object and has the kernel verify every program. Attaches nothing.
pub fn load(opts: &LoadOptions) -> Result<Ebpf, AttachError> {
    let clamp: u8 = opts.clamp_mss.into();
    let slots = table_slots(opts.max_flows);
    let set_mask = slots / FLOW_WAYS - 1;
    let seed = random_u32();
    let (only, only_hosts) = opts.only.kernel_form();
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::FLOWS, slots)
        .override_global(names::CLAMP_MSS, &clamp, true)
        .override_global(names::FLOW_SET_MASK, &set_mask, true)
        .override_global(names::FLOW_HASH_SEED, &seed, true)
        .override_global(names::ONLY, &only, true)
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
    for name in [names::PROG_EGRESS, names::PROG_INGRESS_TC] {
        classifier(&mut ebpf, name)?
            .load()
            .map_err(|source| AttachError::Program { name, source })?;
    }
    let name = names::PROG_INGRESS_XDP;
    xdp(&mut ebpf)?
        .load()
        .map_err(|source| AttachError::Program { name, source })?;
    Ok(ebpf)
}

/// A seed for the flow hash that nobody outside can know.
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: writes at most 4 octets into `b`. Should it fail, the seed is merely known.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u32::from_ne_bytes(b)
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

pub fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, AttachError> {
    let name = names::PROG_INGRESS_XDP;
    ebpf.program_mut(name)
        .ok_or(AttachError::MissingProgram(name))?
        .try_into()
        .map_err(|source| AttachError::Program { name, source })
}

/// The programs attached to one interface; dropping it detaches them.
pub struct Attached {
    /// Human-readable description of each attachment, for the start-up message.
    pub description: Vec<String>,
    // Declared before nothing else that matters: dropping a link detaches its program.
    _links: Vec<FdLink>,
}

/// Attaches egress (TC, TCX link) and ingress (XDP native → generic, or TC) to `iface`.
pub fn attach(ebpf: &mut Ebpf, iface: &str, ingress: Ingress) -> Result<Attached, AttachError> {
    let mut links = Vec::new();
    let mut description = Vec::new();

    let name = names::PROG_EGRESS;
    links.push(attach_tc(ebpf, name, iface, TcAttachType::Egress)?);
    description.push(format!("{name}: tc egress (tcx link)"));

    match ingress {
        Ingress::Tc => {
            let name = names::PROG_INGRESS_TC;
            links.push(attach_tc(ebpf, name, iface, TcAttachType::Ingress)?);
            description.push(format!("{name}: tc ingress (tcx link)"));
        }
        Ingress::Xdp => {
            let name = names::PROG_INGRESS_XDP;
            let prog = xdp(ebpf)?;
            let (id, mode) = match prog.attach(iface, XdpMode::Driver) {
                Ok(id) => (id, "native"),
                Err(native) => {
                    log::warn!(
                        "native XDP is not available on {iface} ({native}); using generic (SKB) mode"
                    );
                    let id = prog
                        .attach(iface, XdpMode::Skb)
                        .map_err(|source| AttachError::Program { name, source })?;
                    (id, "generic")
                }
            };
            let link = prog
                .take_link(id)
                .map_err(|source| AttachError::Program { name, source })?;
            links.push(FdLink::try_from(link).map_err(|_| AttachError::NotALink(name))?);
            description.push(format!("{name}: xdp {mode} (bpf_link)"));
        }
    }
    Ok(Attached {
        description,
        _links: links,
    })
}

fn attach_tc(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    at: TcAttachType,
) -> Result<FdLink, AttachError> {
    let prog = classifier(ebpf, name)?;
    let id = prog
        .attach(iface, at)
        .map_err(|source| AttachError::Program { name, source })?;
    let link = prog
        .take_link(id)
        .map_err(|source| AttachError::Program { name, source })?;
    FdLink::try_from(link).map_err(|_| AttachError::NotALink(name))
}
