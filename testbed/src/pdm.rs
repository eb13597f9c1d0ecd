//! A `pdm` process inside a test host: started, waited for until its programs are
//! attached, its NDJSON and log lines collected as they come, stopped on drop.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::Path,
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Error, Result, command_in};

/// How long pdm may take to attach, and to exit once asked.
const START_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// Whether pdm's log lines so far say both programs are attached (egress and ingress
/// each log one "attached to" line).
pub fn both_attached(stderr_lines: &[String]) -> bool {
    stderr_lines
        .iter()
        .filter(|l| l.contains("attached to"))
        .count()
        >= 2
        // `pdm observe` says so once everything it attaches is attached.
        || stderr_lines.iter().any(|l| l.contains("observing on"))
}

/// A running pdm.
pub struct Pdm {
    child: Option<Child>,
    ns: String,
    /// NDJSON lines (a line that is not JSON is kept as a string, and makes `stop` fail).
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// Collects `from` line by line into `into` until it closes.
fn collect<T: Send + 'static>(
    from: impl Read + Send + 'static,
    into: &Arc<Mutex<Vec<T>>>,
    parse: fn(String) -> T,
) -> JoinHandle<()> {
    let into = into.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(|l| l.ok()) {
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(parse(line));
        }
    })
}

impl Pdm {
    /// Starts `bin ARGS...` (e.g. `run --iface pdm0 --json`) inside namespace `ns` and
    /// waits until both of its programs are attached.
    pub fn start(bin: &Path, ns: &str, args: &[&str]) -> Result<Self> {
        let mut child = command_in(ns, bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                cmd: format!("{} {}", bin.display(), args.join(" ")),
                source,
            })?;
        let lines = Arc::default();
        let stderr = Arc::default();
        let readers = vec![
            collect(child.stdout.take().expect("piped"), &lines, |l| {
                serde_json::from_str(&l).unwrap_or(Value::String(l))
            }),
            collect(child.stderr.take().expect("piped"), &stderr, |l| l),
        ];
        let mut p = Self {
            child: Some(child),
            ns: ns.to_owned(),
            lines,
            stderr,
            readers,
        };
        let started = Instant::now();
        while !both_attached(&p.stderr()) {
            if let Some(status) = p.try_wait() {
                return Err(Error::Pdm(format!(
                    "pdm in {ns} exited ({status}) before attaching: {}",
                    p.stderr().join("\n")
                )));
            }
            if started.elapsed() > START_LIMIT {
                return Err(Error::Pdm(format!(
                    "pdm in {ns} did not attach within {START_LIMIT:?}: {}",
                    p.stderr().join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Its log lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Its NDJSON lines so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last counters line so far.
    pub fn last_counters(&self) -> Option<Value> {
        self.lines()
            .into_iter()
            .rev()
            .find(|l| l["type"] == "counters")
    }

    /// Its resident memory, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// SIGTERM (pdm detaches and restores what it changed), then waits for it to exit.
    /// Returns every NDJSON line it printed; an exit other than success, or a line that
    /// is not JSON, is an error.
    pub fn stop(mut self) -> Result<Vec<Value>> {
        let status = self.terminate(STOP_LIMIT).ok_or_else(|| {
            Error::Pdm(format!(
                "pdm in {} did not exit within {STOP_LIMIT:?} of SIGTERM",
                self.ns
            ))
        })?;
        // The pipes close with the process: the readers end after its last line.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if !status.success() {
            return Err(Error::Pdm(format!(
                "pdm in {} exited with {status}: {}",
                self.ns,
                self.stderr().join("\n")
            )));
        }
        let lines = self.lines();
        if let Some(bad) = lines.iter().find(|l| l.is_string()) {
            return Err(Error::Pdm(format!(
                "pdm printed a line that is not JSON: {bad}"
            )));
        }
        Ok(lines)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to `limit`; the exit status, or None (still running).
    fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        // One that has exited already (`--duration`) and was waited for: its pid may
        // be another process's by now.
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            return Some(status);
        }
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pdm {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(10)).is_none()
            && let Some(mut c) = self.child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
