//! Reverse names for the addresses in the reports: each address looked up once, many
//! at a time, asked for as soon as a trace is done, and waited for only so long.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv6Addr,
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

/// Lookups running at once: one slow name must not hold up the rest.
const WORKERS: usize = 16;

/// At the end, how long to go on waiting while no lookup finishes: a resolver that
/// does not answer costs this once, not once per address.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

pub type NameMap = HashMap<Ipv6Addr, String>;

pub struct Names {
    /// None with `-n`: no lookups at all.
    queue: Option<mpsc::Sender<Ipv6Addr>>,
    jobs: Arc<Mutex<mpsc::Receiver<Ipv6Addr>>>,
    answers_tx: mpsc::Sender<(Ipv6Addr, Option<String>)>,
    answers: mpsc::Receiver<(Ipv6Addr, Option<String>)>,
    asked: HashSet<Ipv6Addr>,
    workers: usize,
}

impl Names {
    pub fn start(enabled: bool) -> Names {
        let (queue, jobs) = mpsc::channel();
        let (answers_tx, answers) = mpsc::channel();
        Names {
            queue: enabled.then_some(queue),
            jobs: Arc::new(Mutex::new(jobs)),
            answers_tx,
            answers,
            asked: HashSet::new(),
            workers: 0,
        }
    }

    /// Queues a lookup of `addr` unless it was asked for before.
    pub fn ask(&mut self, addr: Ipv6Addr) {
        let Some(queue) = &self.queue else { return };
        if !self.asked.insert(addr) {
            return;
        }
        if self.workers < WORKERS {
            let (jobs, answers) = (Arc::clone(&self.jobs), self.answers_tx.clone());
            // Not joined: a lookup stuck in the resolver must not keep pdm from
            // finishing. A worker that cannot start only makes lookups slower.
            if thread::Builder::new()
                .name("pdm-names".into())
                .spawn(move || worker(&jobs, &answers))
                .is_ok()
            {
                self.workers += 1;
            }
        }
        // With no worker at all the address simply gets no name.
        let _ = queue.send(addr);
    }

    /// The names found: every lookup's answer, or as many as came while answers kept
    /// coming within [`LOOKUP_TIMEOUT`] of each other.
    pub fn finish(self) -> NameMap {
        let Names {
            queue,
            answers,
            asked,
            workers,
            ..
        } = self;
        // Workers stop once the queue is empty and closed.
        drop(queue);
        let mut names = NameMap::new();
        if workers == 0 {
            return names;
        }
        let mut outstanding = asked.len();
        let mut idle_until = Instant::now() + LOOKUP_TIMEOUT;
        while outstanding > 0 {
            let left = idle_until.saturating_duration_since(Instant::now());
            match answers.recv_timeout(left) {
                Ok((addr, name)) => {
                    outstanding -= 1;
                    if let Some(name) = name {
                        names.insert(addr, name);
                    }
                    idle_until = Instant::now() + LOOKUP_TIMEOUT;
                }
                Err(_) => break,
            }
        }
        names
    }
}

fn worker(
    jobs: &Mutex<mpsc::Receiver<Ipv6Addr>>,
    answers: &mpsc::Sender<(Ipv6Addr, Option<String>)>,
) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(addr) = job else { return };
        if answers
            .send((addr, crate::sys::lookup::reverse_lookup(addr)))
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_lookups_with_numeric_output() {
        let mut n = Names::start(false);
        n.ask(Ipv6Addr::LOCALHOST);
        assert_eq!(n.workers, 0);
        assert!(n.finish().is_empty());
    }

    #[test]
    fn each_address_is_asked_for_once() {
        let mut n = Names::start(true);
        for _ in 0..5 {
            n.ask(Ipv6Addr::LOCALHOST);
        }
        assert_eq!(n.asked.len(), 1);
        assert_eq!(n.workers, 1);
        // Whether ::1 has a name depends on the machine; only one lookup ran.
        assert!(n.finish().len() <= 1);
    }
}
