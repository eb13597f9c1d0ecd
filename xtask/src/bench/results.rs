//! What `cargo xtask bench` measured, as bench-results.json holds it: one type per
//! benchmark and one for the whole file. The benchmarks build these and the report reads
//! them, so a field renamed on one side stops the build (or the parse of an older file)
//! instead of quietly turning into a "–" in BENCHMARKS.md.
//!
//! The JSON is the file's as it has always been, so older files still read: program
//! names stay the kernel's, counter names pdm's, and what a tool printed (bpftool's map
//! object, pdm's counters line) keeps the fields this code does not read. serde_json
//! writes a NaN as null (a ratio of nothing, a rate over no bytes); the fields that can
//! be NaN read a null back as NaN, which the report shows as "–".

use std::collections::BTreeMap;

use pdm_common::counters::Counter;
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{DeserializeOwned, Error as _},
    ser::SerializeMap as _,
};
use serde_json::Value;

/// A closed set of names: each variant with the string the JSON (and the command line)
/// calls it, which is also how it is serialized, in a map key too.
macro_rules! names {
    ($(#[$m:meta])* pub enum $T:ident { $($(#[$vm:meta])* $V:ident => $n:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $T { $($(#[$vm])* $V,)* }

        impl $T {
            pub const ALL: &[$T] = &[$($T::$V,)*];

            pub const fn name(self) -> &'static str {
                match self { $($T::$V => $n,)* }
            }

            pub fn from_name(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name() == s)
            }
        }

        impl Serialize for $T {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $T {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::from_name(&s).ok_or_else(|| D::Error::unknown_variant(&s, &[$($n),*]))
            }
        }
    };
}

names! {
    /// The benchmarks, in the order a run measures them.
    pub enum Bench {
        Progcost => "progcost",
        Testrun => "testrun",
        Throughput => "throughput",
        Rr => "rr",
        Scaling => "scaling",
        LoaderCpu => "loader_cpu",
        Analyze => "analyze",
        Observe => "observe",
    }
}

names! {
    /// The two test hosts.
    pub enum Host {
        Client => "client",
        Server => "server",
    }
}

names! {
    /// pdm's ingress hook in a progcost setup (its `--ingress`).
    pub enum Ingress {
        Xdp => "xdp",
        Tc => "tc",
    }
}

names! {
    /// The server hook of a progcost setup with programs that return at once (the
    /// `bench-helper null-prog --hook` it runs there).
    pub enum NullHook {
        Xdp => "xdp",
        TcIngress => "tc-ingress",
    }
}

names! {
    /// The BPF programs the report picks out, by the name the kernel gives them (pdm's,
    /// and the ones `bpf::attach_null` loads). Figures stay keyed by the kernel's name,
    /// so a program not listed here is kept too.
    pub enum Prog {
        PdmEgress => "pdm_egress",
        PdmIngressXdp => "pdm_ingress_xdp",
        PdmIngressTc => "pdm_ingress_tc",
        NullTcEgress => "null_tc_egress",
        NullXdp => "null_xdp",
        NullTcIngress => "null_tc_ingress",
        RefAdjustRoom => "ref_adjust_room",
        RefClockXdp => "ref_clock_xdp",
    }
}

impl Prog {
    /// pdm's own programs.
    pub const PDM: [Prog; 3] = [Prog::PdmEgress, Prog::PdmIngressXdp, Prog::PdmIngressTc];
}

names! {
    /// The configurations of both hosts the throughput benchmark compares.
    pub enum ThroughputMode {
        Baseline => "baseline",
        PdmTc => "pdm_tc",
        PdmMtuRoom => "pdm_mtu_room",
        PdmXdp => "pdm_xdp",
        XdpPass => "xdp_pass",
        BaselineOffloadsOff => "baseline_offloads_off",
        PdmPerPacketTc => "pdm_per_packet_tc",
        PdmPerPacket => "pdm_per_packet",
        XdpPassOffloadsOff => "xdp_pass_offloads_off",
    }
}

names! {
    /// The transfers of one throughput mode: sender and streams.
    pub enum TcpTest {
        Iperf1 => "iperf_1",
        Iperf8 => "iperf_8",
        Pair1 => "pair_1",
        Pair8 => "pair_8",
        Dstopts1 => "dstopts_1",
        Dstopts8 => "dstopts_8",
    }
}

names! {
    /// The request/response modes.
    pub enum RrMode {
        Baseline => "baseline",
        PdmXdp => "pdm_xdp",
        PdmTc => "pdm_tc",
    }
}

names! {
    /// What the loader benchmark's client-side pdm prints to.
    pub enum LoaderOutput {
        View => "view",
        Json => "json",
    }
}

/// Reading a null as NaN (see the module's comment).
mod nan_if_null {
    use serde::{Deserialize, Deserializer};

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let v = Vec::<Option<f64>>::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    }
}

// ---- The whole file.

/// bench-results.json.
#[derive(Debug, Serialize, Deserialize)]
pub struct BenchResults {
    pub machine: Machine,
    pub quick: bool,
    pub config: Config,
    /// `pdm check`'s output.
    pub check: String,
    /// Each benchmark: absent when this run did not measure it and no earlier file had
    /// it (`--only`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progcost: Option<Outcome<Progcost>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub testrun: Option<Outcome<Testrun>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Outcome<Throughput>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr: Option<Outcome<Rr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Outcome<Scaling>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader_cpu: Option<Outcome<LoaderCpu>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analyze: Option<Outcome<Analyze>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe: Option<Outcome<Observe>>,
    pub wall_secs: WallSecs,
    /// `--only`: the benchmarks this run measured, the others kept from the file before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<Bench>>,
}

impl BenchResults {
    /// Moves `bench`'s figures and wall time over from an earlier file.
    pub fn keep_from(&mut self, earlier: &mut BenchResults, bench: Bench) {
        match bench {
            Bench::Progcost => self.progcost = earlier.progcost.take(),
            Bench::Testrun => self.testrun = earlier.testrun.take(),
            Bench::Throughput => self.throughput = earlier.throughput.take(),
            Bench::Rr => self.rr = earlier.rr.take(),
            Bench::Scaling => self.scaling = earlier.scaling.take(),
            Bench::LoaderCpu => self.loader_cpu = earlier.loader_cpu.take(),
            Bench::Analyze => self.analyze = earlier.analyze.take(),
            Bench::Observe => self.observe = earlier.observe.take(),
        }
        if let Some(secs) = earlier.wall_secs.per_bench.remove(&bench) {
            self.wall_secs.per_bench.insert(bench, secs);
        }
    }

    pub fn progcost(&self) -> Option<&Progcost> {
        self.progcost.as_ref().and_then(Outcome::done)
    }

    pub fn testrun(&self) -> Option<&Testrun> {
        self.testrun.as_ref().and_then(Outcome::done)
    }

    pub fn throughput(&self) -> Option<&Throughput> {
        self.throughput.as_ref().and_then(Outcome::done)
    }

    pub fn scaling(&self) -> Option<&Scaling> {
        self.scaling.as_ref().and_then(Outcome::done)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub loadavg_at_start: String,
    pub iperf3: String,
    pub bpftool: String,
    pub date: String,
}

/// The sizes of the run (see `Cfg`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Config {
    pub reps: usize,
    pub tcp_secs: f64,
    pub cost_secs: f64,
    pub rr_count: u64,
    pub scale_secs: f64,
    pub scale_flows: Vec<usize>,
    pub loader_secs: u64,
}

/// Seconds each benchmark took, and the whole run.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WallSecs {
    #[serde(flatten)]
    pub per_bench: BTreeMap<Bench, f64>,
    pub total: f64,
}

/// A benchmark's figures, or why it has none: a failed benchmark is stored as
/// `{"error": "..."}`, and the others still run.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    Failed(String),
}

impl<T> Outcome<T> {
    pub fn done(&self) -> Option<&T> {
        match self {
            Outcome::Done(t) => Some(t),
            Outcome::Failed(_) => None,
        }
    }
}

impl<T: Serialize> Serialize for Outcome<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Outcome::Done(t) => t.serialize(s),
            Outcome::Failed(e) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("error", e)?;
                m.end()
            }
        }
    }
}

// By hand rather than `untagged`: a figures object that does not parse should say which
// field, not that it matched no variant.
impl<'de, T: DeserializeOwned> Deserialize<'de> for Outcome<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Ok(Outcome::Failed(e.to_owned()));
        }
        T::deserialize(v)
            .map(Outcome::Done)
            .map_err(D::Error::custom)
    }
}

// ---- Shared pieces.

/// Median, min and max of repeated measurements (none when none was finite), and the
/// values as measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    #[serde(deserialize_with = "nan_if_null::vec")]
    pub values: Vec<f64>,
}

impl Summary {
    pub fn median_or_nan(&self) -> f64 {
        self.median.unwrap_or(f64::NAN)
    }
}

/// One figure per host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientServer<T> {
    pub client: T,
    pub server: T,
}

impl<T> ClientServer<T> {
    pub fn get(&self, host: Host) -> &T {
        match host {
            Host::Client => &self.client,
            Host::Server => &self.server,
        }
    }
}

/// Per host, per program (by the kernel's name): one program's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostProgs<P>(pub BTreeMap<Host, BTreeMap<String, P>>);

impl<P> Default for HostProgs<P> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<P> HostProgs<P> {
    pub fn get(&self, host: Host, prog: Prog) -> Option<&P> {
        self.0.get(&host)?.get(prog.name())
    }

    /// Every program of both hosts.
    pub fn all(&self) -> impl Iterator<Item = &P> {
        self.0.values().flat_map(BTreeMap::values)
    }
}

/// bpf_stats of one program over one window (programs that did not run are left out).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgRun {
    pub runs: u64,
    pub run_time_ns: u64,
    pub ns_per_run: f64,
}

/// bpf_stats of one program over several windows: runs and run time summed, ns per run
/// as the median (min, max, values) of the windows'.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergedProg {
    pub runs: u64,
    pub run_time_ns: u64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub ns_per_run: f64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub ns_min: f64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub ns_max: f64,
    #[serde(deserialize_with = "nan_if_null::vec")]
    pub values: Vec<f64>,
}

/// The programs' bpf_stats over one window, and the traffic that ran meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgWindow<T> {
    pub progs: HostProgs<ProgRun>,
    pub traffic: T,
}

/// `bench-helper udp-flood`: what the sender did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flood {
    pub flows: u64,
    pub sockets: u64,
    pub ports: u64,
    pub packets: u64,
    pub passes: u64,
    pub send_errors: u64,
    pub secs: f64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub pps: f64,
}

/// One iperf3 run: Gb/s received, and iperf3's own sender and receiver process CPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Iperf {
    pub gbps: f64,
    pub bytes: f64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub secs: f64,
    pub retransmits: Option<u64>,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub cpu_host_percent: f64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub cpu_remote_percent: f64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub cpu_s_per_gb: f64,
}

/// An iperf3 run in a progcost window, with the TCP segments the client's stack sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IperfWindow {
    #[serde(flatten)]
    pub iperf: Iperf,
    pub segments_sent: u64,
}

/// pdm's counters, by pdm's names for them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PdmCounters(pub BTreeMap<String, u64>);

impl PdmCounters {
    pub fn get(&self, c: Counter) -> Option<u64> {
        self.0.get(c.name()).copied()
    }
}

/// pdm's last `counters` line: the counters, and the rest as pdm wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CountersLine {
    pub counters: PdmCounters,
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

// ---- progcost.

/// BPF run time per packet, per setup (see `progcost`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Progcost {
    pub xdp: PdmSetup,
    pub tc: PdmSetup,
    pub null: NullSetups,
    /// The reference programs: absent from files older than they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjust_room_only: Option<UdpOnly>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_only: Option<UdpOnly>,
    /// Only with `--baseline REV`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineSetup>,
}

impl Progcost {
    pub fn pdm(&self, ingress: Ingress) -> &PdmSetup {
        match ingress {
            Ingress::Xdp => &self.xdp,
            Ingress::Tc => &self.tc,
        }
    }
}

/// The small-UDP and the TCP bulk windows of one setup.
#[derive(Debug, Serialize, Deserialize)]
pub struct Windows {
    pub udp: UdpWindows,
    pub tcp: TcpWindows,
}

/// pdm on both hosts.
#[derive(Debug, Serialize, Deserialize)]
pub struct PdmSetup {
    #[serde(flatten)]
    pub windows: Windows,
    pub profile: ProfilePair,
    /// pdm's counters after the last round.
    pub client_counters: PdmCounters,
    pub server_counters: PdmCounters,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NullSetups {
    pub xdp: Windows,
    #[serde(rename = "tc-ingress")]
    pub tc_ingress: Windows,
}

impl NullSetups {
    pub fn get(&self, hook: NullHook) -> &Windows {
        match hook {
            NullHook::Xdp => &self.xdp,
            NullHook::TcIngress => &self.tc_ingress,
        }
    }
}

/// A reference program, measured on small UDP only.
#[derive(Debug, Serialize, Deserialize)]
pub struct UdpOnly {
    pub udp: UdpWindows,
}

/// pdm built from `--baseline REV`, TC ingress.
#[derive(Debug, Serialize, Deserialize)]
pub struct BaselineSetup {
    pub rev: String,
    pub tc: Windows,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UdpWindows {
    pub progs: HostProgs<MergedProg>,
    pub traffic: UdpTraffic,
}

/// The floods of the windows, and their median rate.
#[derive(Debug, Serialize, Deserialize)]
pub struct UdpTraffic {
    pub windows: Vec<Flood>,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub pps: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TcpWindows {
    pub progs: HostProgs<MergedProg>,
    pub traffic: TcpTraffic,
}

/// The transfers of the windows, their median rate and all the segments they sent.
#[derive(Debug, Serialize, Deserialize)]
pub struct TcpTraffic {
    pub windows: Vec<IperfWindow>,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub gbps: f64,
    /// Absent when no segment was counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments_sent: Option<u64>,
}

/// perf over one more window of each traffic.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProfilePair {
    pub udp: Profile<Flood>,
    pub tcp: Profile<Iperf>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Profile<T> {
    /// Why there is no profile (perf not installed).
    Skipped {
        skipped: String,
    },
    Recorded(Recorded<T>),
}

impl<T> Profile<T> {
    pub fn recorded(&self) -> Option<&Recorded<T>> {
        match self {
            Profile::Recorded(r) => Some(r),
            Profile::Skipped { .. } => None,
        }
    }
}

/// Where the samples of a perf recording fell.
#[derive(Debug, Serialize, Deserialize)]
pub struct Recorded<T> {
    pub samples: u64,
    /// pdm's programs that had samples, by name.
    pub programs: BTreeMap<String, ProgProfile>,
    /// The machine's functions with the most self samples: (function, % of all).
    pub hottest: Vec<(String, f64)>,
    pub traffic: T,
}

impl<T> Recorded<T> {
    pub fn program(&self, prog: Prog) -> Option<&ProgProfile> {
        self.programs.get(prog.name())
    }
}

/// One program's samples: its share of all, and the split over what it was running.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProgProfile {
    pub samples: u64,
    pub percent_of_all: f64,
    /// (its own code or a callee, % of the program's samples), largest first.
    #[serde(rename = "in")]
    pub split: Vec<(String, f64)>,
}

impl ProgProfile {
    /// The share of `callee` in the program's samples.
    pub fn share_of(&self, callee: &str) -> Option<f64> {
        self.split
            .iter()
            .find(|(c, _)| c == callee)
            .map(|(_, p)| *p)
    }
}

// ---- testrun.

/// pdm-user's `progbench` example, as it prints it: the ingress programs on a small UDP
/// frame with and without PDM, and one egress run per call.
#[derive(Debug, Serialize, Deserialize)]
pub struct Testrun {
    pub xdp_udp_pdm: Batches,
    pub xdp_udp_plain: Batches,
    pub tc_udp_pdm: Batches,
    pub tc_udp_plain: Batches,
    pub tc_egress_udp_single: SingleCalls,
}

impl Testrun {
    pub fn ingress(&self, hook: Ingress, pdm: bool) -> &Batches {
        match (hook, pdm) {
            (Ingress::Xdp, true) => &self.xdp_udp_pdm,
            (Ingress::Xdp, false) => &self.xdp_udp_plain,
            (Ingress::Tc, true) => &self.tc_udp_pdm,
            (Ingress::Tc, false) => &self.tc_udp_plain,
        }
    }
}

/// The mean ns of `repeat` runs, per batch, and the median batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batches {
    pub ns: Vec<f64>,
    pub median_ns: f64,
    pub repeat: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SingleCalls {
    pub median_ns: f64,
    pub calls: u64,
}

// ---- throughput.

/// TCP throughput per mode and test (see `throughput`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Throughput {
    pub modes: Vec<ModeInfo>,
    /// One run per repetition.
    pub runs: BTreeMap<ThroughputMode, BTreeMap<TcpTest, Vec<TcpRun>>>,
    pub summary: BTreeMap<ThroughputMode, BTreeMap<TcpTest, TcpSummary>>,
    pub ratios: Vec<Ratio>,
    /// The modes with pdm: its counters on both hosts after the last repetition.
    pub pdm_counters_last_rep: BTreeMap<ThroughputMode, ClientServer<PdmCounters>>,
}

impl Throughput {
    pub fn summary(&self, mode: ThroughputMode, test: TcpTest) -> Option<&TcpSummary> {
        self.summary.get(&mode)?.get(&test)
    }

    pub fn ratio(&self, num: Measure, den: Measure) -> Option<&Ratio> {
        self.ratios.iter().find(|q| q.num == num && q.den == den)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModeInfo {
    pub name: ThroughputMode,
    pub what: String,
}

/// One transfer, and what the machine and pdm's loaders used meanwhile.
#[derive(Debug, Serialize, Deserialize)]
pub struct TcpRun {
    #[serde(flatten)]
    pub sender: SenderRun,
    #[serde(flatten)]
    pub cpu: CpuDuring,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SenderRun {
    Iperf(Iperf),
    Pair(Pair),
}

impl SenderRun {
    pub fn gbps(&self) -> f64 {
        match self {
            SenderRun::Iperf(i) => i.gbps,
            SenderRun::Pair(p) => p.gbps,
        }
    }

    pub fn bytes(&self) -> f64 {
        match self {
            SenderRun::Iperf(i) => i.bytes,
            SenderRun::Pair(p) => p.bytes as f64,
        }
    }

    pub fn cpu_s_per_gb(&self) -> f64 {
        match self {
            SenderRun::Iperf(i) => i.cpu_s_per_gb,
            SenderRun::Pair(p) => p.cpu_s_per_gb,
        }
    }

    pub fn retransmits(&self) -> Option<u64> {
        match self {
            SenderRun::Iperf(i) => i.retransmits,
            SenderRun::Pair(p) => p.retransmits,
        }
    }
}

/// One run of our sender (`bench-helper tcp-send`) against our sink.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pair {
    pub bytes: u64,
    pub secs: f64,
    pub gbps: f64,
    /// The sender's CPU seconds, and the sink's.
    pub cpu_s: f64,
    pub sink_cpu_s: f64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub cpu_s_per_gb: f64,
    pub mss: i64,
    /// Sent with the kernel's IPV6_DSTOPTS insertion.
    pub dstopts: bool,
    /// Not counted by our sender: always null, so that every test has the field.
    pub retransmits: Option<u64>,
}

/// What pdm's loaders (with pdm) and the whole machine used during one transfer.
#[derive(Debug, Serialize, Deserialize)]
pub struct CpuDuring {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdm_cpu_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdm_cpu_s_per_gb: Option<f64>,
    pub machine_busy_percent: f64,
    pub steal_percent: f64,
}

/// Each figure of a test over the repetitions.
#[derive(Debug, Serialize, Deserialize)]
pub struct TcpSummary {
    pub gbps: Summary,
    pub cpu_s_per_gb: Summary,
    pub retransmits: Summary,
    pub pdm_cpu_s_per_gb: Summary,
    pub machine_busy_percent: Summary,
    pub steal_percent: Summary,
}

/// One test of one mode, written "mode/test".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Measure {
    pub mode: ThroughputMode,
    pub test: TcpTest,
}

impl From<Measure> for String {
    fn from(m: Measure) -> String {
        format!("{}/{}", m.mode.name(), m.test.name())
    }
}

impl TryFrom<String> for Measure {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.split_once('/')
            .and_then(|(m, t)| {
                Some(Measure {
                    mode: ThroughputMode::from_name(m)?,
                    test: TcpTest::from_name(t)?,
                })
            })
            .ok_or_else(|| format!("{s:?} is no throughput mode/test"))
    }
}

/// Median Gb/s of `num` over median Gb/s of `den`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ratio {
    pub label: String,
    pub num: Measure,
    pub den: Measure,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub ratio: f64,
    /// The ratio of each repetition's pair.
    pub per_rep: Summary,
    pub target: Option<f64>,
    /// Whether the ratio reaches its target, when it has one.
    pub met: Option<bool>,
}

// ---- rr.

#[derive(Debug, Serialize, Deserialize)]
pub struct Rr {
    pub runs: BTreeMap<RrMode, Vec<RrRun>>,
    pub summary: BTreeMap<RrMode, RrSummary>,
}

/// `bench-helper udp-rr`: one repetition's round trips.
#[derive(Debug, Serialize, Deserialize)]
pub struct RrRun {
    pub n: u64,
    pub timeouts: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub min_us: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RrSummary {
    pub p50_us: Summary,
    pub p99_us: Summary,
    /// pdm − no PDM per repetition; not for the mode without pdm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_p50_us: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_p99_us: Option<Summary>,
}

// ---- scaling.

#[derive(Debug, Serialize, Deserialize)]
pub struct Scaling {
    pub points: Vec<ScalePoint>,
}

impl Scaling {
    /// The point with the most flows (the last of equals).
    pub fn largest(&self) -> Option<&ScalePoint> {
        self.points.iter().max_by_key(|p| p.flows)
    }
}

/// One number of flows.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScalePoint {
    pub flows: u64,
    pub max_flows: u64,
    /// The first pass, every packet creating an entry; then a window once all exist.
    pub create: ProgWindow<Flood>,
    pub steady: ProgWindow<Flood>,
    pub maps: ClientServer<FlowMap>,
    pub client_counters: CountersLine,
    pub server_counters: CountersLine,
}

impl ScalePoint {
    pub fn counters(&self, host: Host) -> &PdmCounters {
        match host {
            Host::Client => &self.client_counters.counters,
            Host::Server => &self.server_counters.counters,
        }
    }
}

/// pdm's flow table on one host.
#[derive(Debug, Serialize, Deserialize)]
pub struct FlowMap {
    pub map: MapInfo,
    /// Live flows in it.
    pub entries: u64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub bytes_per_slot: f64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub bytes_per_live_flow: f64,
}

/// `bpftool map show`'s object: the fields read here, the rest as bpftool wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapInfo {
    pub id: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub flags: u64,
    pub bytes_key: u64,
    pub bytes_value: u64,
    pub max_entries: u64,
    pub bytes_memlock: u64,
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

// ---- analyze.

/// `pdm analyze` against `tshark -T fields` on the same capture.
#[derive(Debug, Serialize, Deserialize)]
pub struct Analyze {
    pub packets: u64,
    pub flows: u32,
    pub file_bytes: u64,
    /// Wall seconds of each repetition, in turn with tshark's.
    pub pdm_secs: Vec<f64>,
    pub tshark_secs: Vec<f64>,
    /// From the median repetition.
    pub pdm_packets_per_sec: f64,
    pub tshark_packets_per_sec: f64,
}

// ---- observe.

/// `pdm observe` on a router between two pdm ends, small UDP both ways on `flows`
/// flows: windows without an observer, and with it on XDP and on TC ingress.
#[derive(Debug, Serialize, Deserialize)]
pub struct Observe {
    pub flows: usize,
    pub none: Vec<ObserveWindow>,
    pub xdp: Vec<ObserveWindow>,
    pub tc: Vec<ObserveWindow>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ObserveWindow {
    pub secs: f64,
    /// Datagrams both senders sent, and those the two ends received (their input
    /// rules' counters).
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Packets the path's veth devices counted as dropped (absent from older runs).
    #[serde(default)]
    pub link_drops: u64,
    pub delivered_per_sec: f64,
    /// bpf_stats: the observer's programs on the router, and the server's pdm ingress
    /// program (same hook) in the same window.
    pub observer_ns_per_packet: Option<f64>,
    pub ingress_ns_per_packet: Option<f64>,
    /// The observer's counters at the end.
    pub observed_packets: u64,
    pub observed_pdm: u64,
    pub samples: u64,
    pub samples_dropped: u64,
    pub samples_thinned: u64,
    pub flows_seen: u64,
}

// ---- loader_cpu.

#[derive(Debug, Serialize, Deserialize)]
pub struct LoaderCpu {
    pub flows: u64,
    pub seconds: u64,
    pub view: LoaderUse,
    pub json: LoaderUse,
    /// With `--metrics-addr` and a scrape every second (absent from older runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsLoad>,
}

/// The loader with NDJSON and `--metrics-addr`, scraped every second.
#[derive(Debug, Serialize, Deserialize)]
pub struct MetricsLoad {
    pub cpu_percent_of_one_core: f64,
    pub rss_kib: u64,
    /// Remote addresses the flows went to, and `--metrics-max-series`.
    pub peers: u64,
    pub max_series: u64,
    pub scrapes: u64,
    /// From sending the request to the last octet of the answer.
    pub scrape_ms_p50: f64,
    pub scrape_ms_p99: f64,
    pub scrape_ms_max: f64,
    /// Series (sample lines) in the last scrape, and distinct peer labels in it.
    pub series: u64,
    pub peer_labels: u64,
}

impl LoaderCpu {
    pub fn get(&self, output: LoaderOutput) -> &LoaderUse {
        match output {
            LoaderOutput::View => &self.view,
            LoaderOutput::Json => &self.json,
        }
    }
}

/// The client-side loader's CPU and memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoaderUse {
    pub cpu_percent_of_one_core: f64,
    pub rss_kib: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers as f64, so that 2.0 written for 2 (or back) is no difference.
    fn normalized(v: Value) -> Value {
        match v {
            Value::Number(n) => n.as_f64().map_or(Value::Null, Value::from),
            Value::Array(a) => a.into_iter().map(normalized).collect(),
            Value::Object(o) => o.into_iter().map(|(k, v)| (k, normalized(v))).collect(),
            v => v,
        }
    }

    /// The checked-in results read into the types and come out as they were.
    #[test]
    fn bench_results_round_trip() {
        let path = crate::tasks::workspace_root().join("bench-results.json");
        let text = std::fs::read_to_string(path).expect("bench-results.json");
        let file: Value = serde_json::from_str(&text).expect("JSON");
        let typed: BenchResults = serde_json::from_str(&text).expect("typed");
        let back = serde_json::to_value(&typed).expect("serialized");
        assert_eq!(normalized(back), normalized(file));
    }

    /// A failed benchmark stays `{"error": ...}`; a figures object that lost a field is
    /// an error naming it.
    #[test]
    fn failures_read_back() {
        let failed = r#"{"error":"iperf3 failed three times"}"#;
        let o: Outcome<LoaderCpu> = serde_json::from_str(failed).expect("parsed");
        assert!(matches!(&o, Outcome::Failed(e) if e == "iperf3 failed three times"));
        assert_eq!(serde_json::to_string(&o).expect("serialized"), failed);
        let used = r#"{"cpu_percent_of_one_core":1.2,"rss_kib":57984}"#;
        let renamed = format!(r#"{{"flows":1,"secs":30,"view":{used},"json":{used}}}"#);
        let e = serde_json::from_str::<Outcome<LoaderCpu>>(&renamed).expect_err("a field gone");
        assert!(e.to_string().contains("seconds"), "{e}");
    }

    #[test]
    fn measures_read_back() {
        let m = Measure {
            mode: ThroughputMode::PdmPerPacketTc,
            test: TcpTest::Dstopts8,
        };
        let s = serde_json::to_string(&m).expect("serialized");
        assert_eq!(s, "\"pdm_per_packet_tc/dstopts_8\"");
        assert_eq!(serde_json::from_str::<Measure>(&s).expect("parsed"), m);
    }
}
