//! The in-memory backend, for tests: the same records and checks as sled, nothing on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use super::{Backend, Error, WriteBatch};
use crate::event::RunId;

#[derive(Default)]
struct State {
    records: BTreeMap<(RunId, u64), Vec<u8>>,
    open: BTreeSet<RunId>,
    all: BTreeSet<RunId>,
}

/// Memory storage for [`super::Log`].
#[derive(Clone, Default)]
pub struct MemoryBackend {
    state: Arc<RwLock<State>>,
}

impl MemoryBackend {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backend for MemoryBackend {
    fn scan_run(&self, run: RunId) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        let s = self.state.read().expect("memory log lock");
        Ok(s.records
            .range((run, 0)..=(run, u64::MAX))
            .map(|((_, seq), v)| (*seq, v.clone()))
            .collect())
    }

    fn last(&self, run: RunId) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let s = self.state.read().expect("memory log lock");
        Ok(s.records
            .range((run, 0)..=(run, u64::MAX))
            .next_back()
            .map(|((_, seq), v)| (*seq, v.clone())))
    }

    fn open_runs(&self) -> Result<Vec<RunId>, Error> {
        Ok(self
            .state
            .read()
            .expect("memory log lock")
            .open
            .iter()
            .copied()
            .collect())
    }

    fn all_runs(&self) -> Result<Vec<RunId>, Error> {
        Ok(self
            .state
            .read()
            .expect("memory log lock")
            .all
            .iter()
            .copied()
            .collect())
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), Error> {
        let mut s = self.state.write().expect("memory log lock");
        for run in batch.opened {
            s.all.insert(run);
            s.open.insert(run);
        }
        for (run, seq, bytes) in batch.records {
            s.records.insert((run, seq), bytes);
        }
        for run in batch.closed {
            s.open.remove(&run);
        }
        Ok(())
    }

    fn raw_put(&self, run: RunId, seq: u64, bytes: Option<Vec<u8>>) -> Result<(), Error> {
        let mut s = self.state.write().expect("memory log lock");
        match bytes {
            Some(b) => s.records.insert((run, seq), b),
            None => s.records.remove(&(run, seq)),
        };
        Ok(())
    }
}
