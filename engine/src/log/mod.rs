//! The event log: an append-only, per-run history of records, durable before it is acknowledged.
//!
//! [`EventLog`] is the narrow interface the engine uses. [`Log`] implements it over a storage
//! [`Backend`] (sled on disk, or memory for tests) with one writer thread that owns every append:
//! it assigns sequence numbers, links the hash chain, writes a batch of requests at once and makes
//! it durable with one flush before acknowledging any of them (group commit). One writer is also
//! what keeps clear of sled's `flush_async` deadlock (upstream issue 1308).

pub mod memory;
pub mod segment;
pub mod sim;
pub mod sled;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::thread;

use chrono::{SubsecRound, Utc};
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::clock::{SharedClock, SystemClock};
use crate::codec;
use crate::event::{Event, Record, RunId};

/// Errors of the event log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stored record failed its checks.
    #[error("run {run}, event #{seq}: {source}")]
    Corrupt {
        /// Run whose history is damaged.
        run: RunId,
        /// Position of the bad record.
        seq: u64,
        /// What is wrong with it.
        source: codec::Error,
    },
    /// A record does not link to its predecessor: the history was edited, reordered or has a hole.
    #[error("run {run}, event #{seq}: hash chain broken ({detail}); the history was edited or records are missing")]
    Chain {
        /// Run whose history is damaged.
        run: RunId,
        /// Position where the chain breaks.
        seq: u64,
        /// What was expected.
        detail: String,
    },
    /// Records of the run were lost in damaged bytes of the store (found when it was opened).
    #[error("run {run}, event #{seq}: {detail}")]
    Lost {
        /// Run that lost records.
        run: RunId,
        /// First position lost.
        seq: u64,
        /// Where and what to do.
        detail: String,
    },
    /// The run has no events.
    #[error("run {0} not found in the event log")]
    UnknownRun(RunId),
    /// The storage itself failed (disk full, I/O error, ...). Retriable once the cause is fixed.
    #[error("event log storage failed: {0}")]
    Storage(String),
    /// The writer thread has stopped (the log was closed, or a previous write failed fatally).
    #[error("event log writer has stopped; restart the engine")]
    WriterStopped,
    /// The event could not be encoded.
    #[error("event could not be encoded: {0}")]
    Encode(String),
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Storage(_))
    }
}

/// The log as the engine sees it.
pub trait EventLog: Send + Sync + 'static {
    /// Appends events to the end of a run's history, in order. Resolves with the stored records
    /// once they are durable; never resolves `Ok` before that.
    fn append(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Vec<Record>, Error>>;

    /// A run's whole history, with every checksum and the hash chain checked.
    fn read(&self, run: RunId) -> Result<Vec<Record>, Error>;

    /// Runs whose history has no terminal event, oldest first.
    fn open_runs(&self) -> Result<Vec<RunId>, Error>;

    /// Every run in the log, oldest first.
    fn runs(&self) -> Result<Vec<RunId>, Error>;

    /// What the store found damaged when it was opened (one line each, naming where, what was
    /// lost and what to do); empty when nothing was.
    fn damage(&self) -> Vec<String> {
        Vec::new()
    }

    /// The clock that stamps records from now on (the engine's: `EngineBuilder::build` passes
    /// its clock in, so a test on paused time gets paused timestamps). A log that stamps nothing
    /// ignores it.
    fn use_clock(&self, clock: SharedClock) {
        let _ = clock;
    }
}

/// What a backend must apply atomically and durably.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Encoded records: run, sequence number, bytes.
    pub records: Vec<(RunId, u64, Vec<u8>)>,
    /// Runs that got their first record.
    pub opened: Vec<RunId>,
    /// Runs that got a terminal record.
    pub closed: Vec<RunId>,
}

/// Raw storage under [`Log`]. Implementations: [`sled::SledBackend`], [`memory::MemoryBackend`].
pub trait Backend: Clone + Send + Sync + 'static {
    /// A run's stored records in sequence order (raw bytes).
    fn scan_run(&self, run: RunId) -> Result<Vec<(u64, Vec<u8>)>, Error>;
    /// The run's last stored record, if any.
    fn last(&self, run: RunId) -> Result<Option<(u64, Vec<u8>)>, Error>;
    /// Runs recorded as open.
    fn open_runs(&self) -> Result<Vec<RunId>, Error>;
    /// Every run.
    fn all_runs(&self) -> Result<Vec<RunId>, Error>;
    /// Applies the batch in order and returns only once all of it is durable. A crash before that
    /// may keep a prefix of the batch (never a later write without an earlier one).
    fn commit(&self, batch: WriteBatch) -> Result<(), Error>;
    /// What recovery found damaged when the store was opened, one line each.
    fn damage(&self) -> Vec<String> {
        Vec::new()
    }
    /// Overwrites (`Some`) or deletes (`None`) one stored record, bypassing every check.
    /// For repair tools and for tests that damage a log on purpose.
    fn raw_put(&self, run: RunId, seq: u64, bytes: Option<Vec<u8>>) -> Result<(), Error>;
}

/// Where a request's acknowledgement goes.
type Ack = oneshot::Sender<Result<Vec<Record>, Error>>;

struct AppendRequest {
    run: RunId,
    events: Vec<Event>,
    ack: oneshot::Sender<Result<Vec<Record>, Error>>,
}

/// The event log over a backend, with its group-commit writer thread.
pub struct Log<B: Backend> {
    backend: B,
    clock: Arc<RwLock<SharedClock>>,
    tx: mpsc::Sender<AppendRequest>,
    in_flight: Arc<AtomicUsize>,
    writer: Option<thread::JoinHandle<()>>,
}

impl<B: Backend> Log<B> {
    /// Starts the writer thread over `backend`; records are stamped by the system clock until
    /// [`EventLog::use_clock`] says otherwise.
    pub fn new(backend: B) -> Self {
        let (tx, rx) = mpsc::channel();
        let writer_backend = backend.clone();
        let clock: Arc<RwLock<SharedClock>> = Arc::new(RwLock::new(Arc::new(SystemClock)));
        let writer_clock = clock.clone();
        let writer = thread::Builder::new()
            .name("waymark-log-writer".into())
            .spawn(move || writer_loop(&writer_backend, &writer_clock, &rx))
            .expect("spawn the log writer thread");
        Log {
            backend,
            clock,
            tx,
            in_flight: Arc::new(AtomicUsize::new(0)),
            writer: Some(writer),
        }
    }

    /// The backend, for tools that need raw access.
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

impl<B: Backend> Drop for Log<B> {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it has committed what it already took.
        let (dead_tx, _) = mpsc::channel();
        self.tx = dead_tx;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl<B: Backend> EventLog for Log<B> {
    fn append(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Vec<Record>, Error>> {
        let (ack, rx) = oneshot::channel();
        let alone = self.in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        let sent = self.tx.send(AppendRequest { run, events, ack });
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            let result = match sent {
                Err(_) => Err(Error::WriterStopped),
                Ok(()) if alone => wait_alone(rx).await,
                Ok(()) => rx.await.map_err(|_| Error::WriterStopped).and_then(|r| r),
            };
            in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }

    fn read(&self, run: RunId) -> Result<Vec<Record>, Error> {
        let raw = self.backend.scan_run(run)?;
        if raw.is_empty() {
            return Err(Error::UnknownRun(run));
        }
        decode_chain(run, &raw)
    }

    fn open_runs(&self) -> Result<Vec<RunId>, Error> {
        // A crash in the middle of a commit can leave an open-marker for a run whose first record
        // was lost, or whose terminal record made it: neither is open.
        let mut open = Vec::new();
        for run in self.backend.open_runs()? {
            match self.backend.last(run)? {
                None => {}
                Some((seq, bytes)) => match codec::decode(run, seq, &bytes) {
                    Ok(rec) if rec.event.is_terminal() => {}
                    _ => open.push(run),
                },
            }
        }
        Ok(open)
    }

    fn runs(&self) -> Result<Vec<RunId>, Error> {
        self.backend.all_runs()
    }

    fn damage(&self) -> Vec<String> {
        self.backend.damage()
    }

    fn use_clock(&self, clock: SharedClock) {
        *self.clock.write().expect("log clock lock") = clock;
    }
}

/// Waits for the acknowledgement of the only append in flight by polling it for up to
/// [`ALONE_SPIN`] before parking the task.
///
/// With one append in flight nothing else is waiting for this worker thread, and parking it costs
/// a thread wake-up per append (tens of microseconds on a VM, a sizeable share of a ~130 µs flush):
/// the difference between a single run reaching 0.55x and 0.7x+ of the raw sled rate (BENCHMARKS.md).
/// With several appends in flight, producers park as usual so that the worker runs other tasks.
async fn wait_alone(
    mut rx: oneshot::Receiver<Result<Vec<Record>, Error>>,
) -> Result<Vec<Record>, Error> {
    let start = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(r) => return r,
            Err(oneshot::error::TryRecvError::Closed) => return Err(Error::WriterStopped),
            Err(oneshot::error::TryRecvError::Empty) if start.elapsed() < ALONE_SPIN => {
                std::hint::spin_loop();
            }
            Err(oneshot::error::TryRecvError::Empty) => {
                return rx.await.map_err(|_| Error::WriterStopped).and_then(|r| r);
            }
        }
    }
}

/// How long a lone append polls for its acknowledgement before parking (a few flushes' worth).
const ALONE_SPIN: std::time::Duration = std::time::Duration::from_millis(2);

/// Decodes raw records and checks sequence continuity and the hash chain.
pub fn decode_chain(run: RunId, raw: &[(u64, Vec<u8>)]) -> Result<Vec<Record>, Error> {
    let mut out = Vec::with_capacity(raw.len());
    let mut prev = [0u8; 32];
    for (i, (seq, bytes)) in raw.iter().enumerate() {
        let expected = i as u64;
        if *seq != expected {
            return Err(Error::Chain {
                run,
                seq: expected,
                detail: format!("event #{expected} is missing (next stored is #{seq})"),
            });
        }
        let rec = codec::decode(run, *seq, bytes).map_err(|source| Error::Corrupt {
            run,
            seq: *seq,
            source,
        })?;
        if rec.prev_hash != prev {
            return Err(Error::Chain {
                run,
                seq: *seq,
                detail: "its previous-hash does not match the hash of the event before it".into(),
            });
        }
        prev = rec.hash;
        out.push(rec);
    }
    Ok(out)
}

/// Where a run's history currently ends, as the writer tracks it.
#[derive(Clone, Copy)]
struct Tail {
    next_seq: u64,
    hash: [u8; 32],
}

fn load_tail<B: Backend>(backend: &B, run: RunId) -> Result<Tail, Error> {
    match backend.last(run)? {
        None => Ok(Tail {
            next_seq: 0,
            hash: [0; 32],
        }),
        Some((seq, bytes)) => {
            let rec = codec::decode(run, seq, &bytes).map_err(|source| Error::Corrupt {
                run,
                seq,
                source,
            })?;
            Ok(Tail {
                next_seq: seq + 1,
                hash: rec.hash,
            })
        }
    }
}

/// Waits for the next request: spins briefly first, because a producer that just got its
/// acknowledgement usually sends its next append within microseconds, and a sleeping writer
/// thread costs a futex wake-up per append.
fn next_request(rx: &mpsc::Receiver<AppendRequest>) -> Option<AppendRequest> {
    for _ in 0..SPIN_TRIES {
        match rx.try_recv() {
            Ok(r) => return Some(r),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    rx.recv().ok()
}

/// Polls before the writer blocks (a few tens of microseconds).
const SPIN_TRIES: u32 = 20_000;

/// Largest number of append requests committed with one flush.
const MAX_BATCH: usize = 8192;

fn writer_loop<B: Backend>(
    backend: &B,
    clock: &RwLock<SharedClock>,
    rx: &mpsc::Receiver<AppendRequest>,
) {
    let mut tails: HashMap<RunId, Tail> = HashMap::new();
    while let Some(first) = next_request(rx) {
        let mut requests = vec![first];
        while requests.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        // Stored with millisecond precision; the records handed back carry the same value.
        let now = clock.read().expect("log clock lock").now().trunc_subsecs(3);
        let mut batch = WriteBatch::default();
        let mut replies: Vec<(Ack, Result<Vec<Record>, Error>)> =
            Vec::with_capacity(requests.len());
        let mut closed_tails = Vec::new();
        for req in requests {
            let result = stage(
                backend,
                &mut tails,
                &mut batch,
                &mut closed_tails,
                now,
                req.run,
                &req.events,
            );
            replies.push((req.ack, result));
        }
        let outcome = if batch.records.is_empty() {
            Ok(())
        } else {
            backend.commit(batch)
        };
        match outcome {
            Ok(()) => {
                for run in closed_tails {
                    tails.remove(&run);
                }
                for (ack, result) in replies {
                    let _ = ack.send(result);
                }
            }
            Err(e) => {
                // Nothing of this batch is known to be durable: forget every tail and fail them all.
                tails.clear();
                let msg = e.to_string();
                for (ack, _) in replies {
                    let _ = ack.send(Err(Error::Storage(msg.clone())));
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn stage<B: Backend>(
    backend: &B,
    tails: &mut HashMap<RunId, Tail>,
    batch: &mut WriteBatch,
    closed_tails: &mut Vec<RunId>,
    now: chrono::DateTime<Utc>,
    run: RunId,
    events: &[Event],
) -> Result<Vec<Record>, Error> {
    let mut tail = match tails.get(&run) {
        Some(t) => *t,
        None => load_tail(backend, run)?,
    };
    let start = tail;
    let mut records = Vec::with_capacity(events.len());
    let mut encoded = Vec::with_capacity(events.len());
    for event in events {
        let (bytes, hash) = codec::encode(tail.next_seq, now, &tail.hash, event)
            .map_err(|e| Error::Encode(e.to_string()))?;
        records.push(Record {
            run,
            seq: tail.next_seq,
            at: now,
            prev_hash: tail.hash,
            hash,
            event: event.clone(),
        });
        encoded.push((run, tail.next_seq, bytes));
        tail = Tail {
            next_seq: tail.next_seq + 1,
            hash,
        };
    }
    if start.next_seq == 0 && !records.is_empty() {
        batch.opened.push(run);
    }
    if records.iter().any(|r| r.event.is_terminal()) {
        batch.closed.push(run);
        closed_tails.push(run);
    }
    batch.records.extend(encoded);
    tails.insert(run, tail);
    Ok(records)
}

/// A log shared by the engine and its tools.
pub type SharedLog = Arc<dyn EventLog>;
