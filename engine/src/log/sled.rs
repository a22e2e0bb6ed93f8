//! The durable backend: one sled tree, flushed (fsync) before a batch is acknowledged.
//!
//! Keys: `E` + run id (16 bytes) + sequence number (u64 big-endian) for records; `O` + run id for
//! open runs; `R` + run id for every run. A batch is one `apply_batch` (atomic) and one `flush`.

use std::path::Path;

use super::{Backend, Error, WriteBatch};
use crate::event::RunId;

const EVENT: u8 = b'E';
const OPEN: u8 = b'O';
const RUN: u8 = b'R';

/// sled storage for [`super::Log`].
#[derive(Clone)]
pub struct SledBackend {
    db: ::sled::Db,
    tree: ::sled::Tree,
}

fn storage(e: &::sled::Error) -> Error {
    Error::Storage(e.to_string())
}

fn event_key(run: RunId, seq: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = EVENT;
    k[1..17].copy_from_slice(run.as_bytes());
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn run_key(prefix: u8, run: RunId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..].copy_from_slice(run.as_bytes());
    k
}

fn run_prefix(run: RunId) -> [u8; 17] {
    run_key(EVENT, run)
}

impl SledBackend {
    /// Opens (or creates) the log under `dir`. Fails with a clear message when another process
    /// holds it.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let db = ::sled::Config::new()
            .path(dir.join("events.sled"))
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                ::sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => Error::Storage(format!(
                    "the event log in {} is in use by another process (a daemon or a foreground run); \
                     talk to that process, or stop it first",
                    dir.display()
                )),
                other => Error::Storage(format!("cannot open the event log in {}: {other}", dir.display())),
            })?;
        let tree = db.open_tree("events").map_err(|e| storage(&e))?;
        Ok(SledBackend { db, tree })
    }

    fn list(&self, prefix: u8) -> Result<Vec<RunId>, Error> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([prefix]) {
            let (k, _) = item.map_err(|e| storage(&e))?;
            let bytes: [u8; 16] = k[1..17].try_into().map_err(|_| Error::Storage("bad index key".into()))?;
            out.push(RunId(uuid::Uuid::from_bytes(bytes)));
        }
        Ok(out)
    }
}

impl Backend for SledBackend {
    fn scan_run(&self, run: RunId) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(run_prefix(run)) {
            let (k, v) = item.map_err(|e| storage(&e))?;
            let seq = u64::from_be_bytes(k[17..25].try_into().map_err(|_| Error::Storage("bad event key".into()))?);
            out.push((seq, v.to_vec()));
        }
        Ok(out)
    }

    fn last(&self, run: RunId) -> Result<Option<(u64, Vec<u8>)>, Error> {
        match self.tree.scan_prefix(run_prefix(run)).next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| storage(&e))?;
                let seq =
                    u64::from_be_bytes(k[17..25].try_into().map_err(|_| Error::Storage("bad event key".into()))?);
                Ok(Some((seq, v.to_vec())))
            }
        }
    }

    fn open_runs(&self) -> Result<Vec<RunId>, Error> {
        self.list(OPEN)
    }

    fn all_runs(&self) -> Result<Vec<RunId>, Error> {
        self.list(RUN)
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), Error> {
        let mut b = ::sled::Batch::default();
        for run in &batch.opened {
            b.insert(&run_key(RUN, *run), &[]);
            b.insert(&run_key(OPEN, *run), &[]);
        }
        for (run, seq, bytes) in batch.records {
            b.insert(&event_key(run, seq), bytes);
        }
        for run in &batch.closed {
            b.remove(&run_key(OPEN, *run));
        }
        self.tree.apply_batch(b).map_err(|e| storage(&e))?;
        self.db.flush().map_err(|e| storage(&e))?;
        Ok(())
    }

    fn raw_put(&self, run: RunId, seq: u64, bytes: Option<Vec<u8>>) -> Result<(), Error> {
        match bytes {
            Some(b) => self.tree.insert(event_key(run, seq), b).map(|_| ()),
            None => self.tree.remove(event_key(run, seq)).map(|_| ()),
        }
        .map_err(|e| storage(&e))?;
        self.db.flush().map_err(|e| storage(&e))?;
        Ok(())
    }
}
