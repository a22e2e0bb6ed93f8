//! The durable backend: one sled tree, flushed (fsync) before a batch is acknowledged.
//!
//! Keys: `E` + run id (16 bytes) + sequence number (u64 big-endian) for records; `O` + run id for
//! open runs; `R` + run id for every run. A batch is a sequence of inserts and one `flush`.

use std::path::Path;
use std::sync::Arc;

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
    _lock: Arc<Option<std::fs::File>>,
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

fn open_db(path: &Path, dir: &Path) -> Result<::sled::Db, Error> {
    // We hold `waymark.lock`, so a busy sled lock can only be a handle of this process that is
    // still being torn down by sled's background threads: wait for it briefly.
    let mut waited = std::time::Duration::ZERO;
    loop {
        match ::sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(None)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_busy(&e) && waited < SLED_LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                waited += std::time::Duration::from_millis(10);
            }
            Err(e) if is_lock_busy(&e) => return Err(in_use(dir)),
            Err(other) => {
                return Err(Error::Storage(format!(
                    "cannot open the event log in {}: {other}",
                    dir.display()
                )))
            }
        }
    }
}

const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn is_lock_busy(e: &::sled::Error) -> bool {
    match e {
        ::sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

pub(super) fn in_use(dir: &Path) -> Error {
    Error::Storage(format!(
        "the event log in {} is in use by another process (a daemon or a foreground run); \
         talk to that process, or stop it first",
        dir.display()
    ))
}

/// Takes `DIR/waymark.lock` for as long as the backend lives, so that no second process opens the
/// log (and so that the clean-up below never touches files a live process is writing).
pub(super) fn lock_dir(dir: &Path) -> Result<std::fs::File, Error> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("waymark.lock"))
        .map_err(|e| {
            Error::Storage(format!(
                "cannot open the lock file in {}: {e}",
                dir.display()
            ))
        })?;
    // A process that this one is spawning holds a copy of the lock's open file (and so the
    // lock) between its fork and its exec: a released lock can look busy for that instant.
    // Retry briefly before telling the operator another process has it.
    let mut waited = std::time::Duration::ZERO;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if waited < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                waited += std::time::Duration::from_millis(10);
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(in_use(dir)),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::Storage(format!(
                    "cannot lock {}: {e}",
                    dir.display()
                )))
            }
        }
    }
}

/// How long a busy `waymark.lock` is retried before the log is reported in use.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Deletes `snap.*.generating` files: snapshots whose writer died before renaming them into place.
///
/// sled 0.34.7 writes a snapshot to `snap.N.generating` and renames it when complete, but its
/// reader skips only files ending in `.in___motion`, so after a SIGKILL during a snapshot it picks
/// the unfinished file (it sorts last), fails its checksum, and refuses to open ("Read corrupted
/// data at file offset None"). Found by the crash test; the previous snapshot and the log replay
/// cover everything the unfinished file would have held.
fn remove_unfinished_snapshots(path: &Path) -> Result<(), Error> {
    let entries = std::fs::read_dir(path)
        .map_err(|e| Error::Storage(format!("cannot list {}: {e}", path.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path()).map_err(|e| {
                Error::Storage(format!("cannot remove {}: {e}", entry.path().display()))
            })?;
        }
    }
    Ok(())
}

/// Creates a new sled database in a scratch directory and renames it into place.
///
/// sled 0.34 writes its `conf` file in two `write` calls without a rename, so a process killed
/// between them leaves a database that never opens again ("Read corrupted data"). Creating it
/// aside and renaming the finished directory makes creation all-or-nothing; leftovers of a
/// creation that was killed are removed here.
fn create_atomically(dir: &Path, path: &Path) -> Result<(), Error> {
    let io =
        |what: &str, e: std::io::Error| Error::Storage(format!("{what} in {}: {e}", dir.display()));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("events.sled.creating-")
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let scratch = dir.join(format!("events.sled.creating-{}", std::process::id()));
    {
        let db = open_db(&scratch, dir)?;
        db.open_tree("events").map_err(|e| storage(&e))?;
        db.flush().map_err(|e| storage(&e))?;
    }
    std::fs::rename(&scratch, path).map_err(|e| io("cannot create the event log", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync the data directory", e))?;
    Ok(())
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
        let lock = lock_dir(dir)?;
        Self::open_with(dir, Some(lock))
    }

    /// Opens the sled store under `dir` whose `waymark.lock` the caller already holds (the
    /// segment backend importing an older store).
    pub(super) fn open_held(dir: &Path) -> Result<Self, Error> {
        Self::open_with(dir, None)
    }

    fn open_with(dir: &Path, lock: Option<std::fs::File>) -> Result<Self, Error> {
        let path = dir.join("events.sled");
        if path.exists() {
            remove_unfinished_snapshots(&path)?;
        } else {
            create_atomically(dir, &path)?;
        }
        let db = open_db(&path, dir)?;
        let tree = db.open_tree("events").map_err(|e| storage(&e))?;
        Ok(SledBackend {
            db,
            tree,
            _lock: Arc::new(lock),
        })
    }

    fn list(&self, prefix: u8) -> Result<Vec<RunId>, Error> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([prefix]) {
            let (k, _) = item.map_err(|e| storage(&e))?;
            let bytes: [u8; 16] = k[1..17]
                .try_into()
                .map_err(|_| Error::Storage("bad index key".into()))?;
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
            let seq = u64::from_be_bytes(
                k[17..25]
                    .try_into()
                    .map_err(|_| Error::Storage("bad event key".into()))?,
            );
            out.push((seq, v.to_vec()));
        }
        Ok(out)
    }

    fn last(&self, run: RunId) -> Result<Option<(u64, Vec<u8>)>, Error> {
        match self.tree.scan_prefix(run_prefix(run)).next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| storage(&e))?;
                let seq = u64::from_be_bytes(
                    k[17..25]
                        .try_into()
                        .map_err(|_| Error::Storage("bad event key".into()))?,
                );
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
        // Plain inserts in this order, then one flush. sled recovers a prefix of its log after a
        // crash (it refuses a later segment whose predecessor was lost), so a crash mid-batch
        // leaves a prefix of the batch: index markers before the run's first record, the
        // open-marker removal after its terminal record. `Log::open_runs` tolerates both
        // leftovers. sled's `apply_batch` would make it atomic but costs ~50 us more per call,
        // a third of a flush (BENCHMARKS.md).
        for run in &batch.opened {
            self.tree
                .insert(run_key(RUN, *run), &[])
                .map_err(|e| storage(&e))?;
            self.tree
                .insert(run_key(OPEN, *run), &[])
                .map_err(|e| storage(&e))?;
        }
        for (run, seq, bytes) in batch.records {
            self.tree
                .insert(event_key(run, seq), bytes)
                .map_err(|e| storage(&e))?;
        }
        for run in &batch.closed {
            self.tree
                .remove(run_key(OPEN, *run))
                .map_err(|e| storage(&e))?;
        }
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
