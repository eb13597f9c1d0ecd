//! Several capture files read as one capture, in timestamp order (the files of a ring
//! buffer, or captures of the same flows taken on several links).

use super::reader::{CaptureError, Packet, Reader};

/// The files of one capture, each with its next packet's time once looked at.
pub struct Merged {
    readers: Vec<Reader>,
    /// Per reader: its next packet's time, None when not looked at since the last
    /// take; `Some(None)`: the file is done.
    next: Vec<Option<Option<u64>>>,
}

impl Merged {
    /// Opens every file first: a file that is not a capture, or of a link type not
    /// supported, stops the run before anything is read.
    pub fn open(paths: &[std::path::PathBuf]) -> Result<Self, CaptureError> {
        let readers = paths
            .iter()
            .map(|p| Reader::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        let next = vec![None; readers.len()];
        Ok(Self { readers, next })
    }

    pub fn readers(&self) -> &[Reader] {
        &self.readers
    }

    /// (octets read, octets in all files), for progress.
    pub fn progress(&self) -> (u64, u64) {
        self.readers.iter().fold((0, 0), |(at, all), r| {
            let (a, s) = r.progress();
            (at + a, all + s)
        })
    }

    /// Hands the earliest of the files' next packets to `f` (ties: the file named
    /// first); None when every file is read.
    pub fn next_packet<R>(
        &mut self,
        f: impl FnOnce(&Packet) -> R,
    ) -> Result<Option<R>, CaptureError> {
        if self.readers.len() == 1 {
            return self.readers[0].next_packet(f);
        }
        let mut first: Option<(usize, u64)> = None;
        for (i, r) in self.readers.iter_mut().enumerate() {
            let ts = match self.next[i] {
                Some(ts) => ts,
                None => {
                    let ts = r.peek_ts()?;
                    self.next[i] = Some(ts);
                    ts
                }
            };
            if let Some(ts) = ts
                && first.is_none_or(|(_, t)| ts < t)
            {
                first = Some((i, ts));
            }
        }
        let Some((i, _)) = first else {
            return Ok(None);
        };
        self.next[i] = None;
        self.readers[i].next_packet(f)
    }
}
