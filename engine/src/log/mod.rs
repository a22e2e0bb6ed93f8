//! The event log: an append-only, per-run history of records, durable before it is acknowledged.
//!
//! [`EventLog`] is the narrow interface the engine uses. [`Log`] implements it over a storage
//! [`Backend`] (segment files, sled, or memory for tests) with one committer at a time: it
//! assigns sequence numbers, links the hash chain, writes a group of requests at once and makes
//! it durable with one flush before acknowledging any of them (group commit). A lone append
//! (no other in flight, nobody committing) is committed inline by its own future when first
//! polled; requests that arrive while someone commits go, as one group, to the writer thread,
//! which keeps committing until it finds nothing waiting. One committer at a time is also what
//! keeps clear of sled's `flush_async` deadlock (upstream issue 1308). The protocol and its
//! argument: `ARCHITECTURE.md`, "Write protocol".

pub mod memory;
pub mod segment;
pub mod sim;
pub mod sled;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
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
    /// The store refused the run's records because another daemon owns the run now (its lease
    /// was taken over with a newer epoch): this process must stop driving it. Not retryable.
    #[error("run {run}: fenced: {detail}")]
    Fenced {
        /// The run this process may no longer append to.
        run: RunId,
        /// Who owns it now, the epoch this process held, what to do.
        detail: String,
    },
    /// The store refused the run's first records because what they claim is taken: the
    /// cluster is held by another open run, or the schedule's fire time already started one.
    #[error("run {run}: not started: {detail}")]
    Claimed {
        /// The run that was not started.
        run: RunId,
        /// What is taken, by which run, what to do.
        detail: String,
    },
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Storage(_))
    }

    /// The same error again, for each request of a run that a backend refused (the variants a
    /// refusal carries are copied; any other is passed on as its message, as `Storage`).
    fn for_each_request(&self) -> Error {
        match self {
            Error::Fenced { run, detail } => Error::Fenced {
                run: *run,
                detail: detail.clone(),
            },
            Error::Claimed { run, detail } => Error::Claimed {
                run: *run,
                detail: detail.clone(),
            },
            Error::Lost { run, seq, detail } => Error::Lost {
                run: *run,
                seq: *seq,
                detail: detail.clone(),
            },
            Error::Chain { run, seq, detail } => Error::Chain {
                run: *run,
                seq: *seq,
                detail: detail.clone(),
            },
            Error::UnknownRun(run) => Error::UnknownRun(*run),
            other => Error::Storage(other.to_string()),
        }
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
    /// Like [`Backend::commit`], but the store may refuse some runs' records (a run another
    /// daemon took over: [`Error::Fenced`]; a claim already taken: [`Error::Claimed`]): those
    /// runs' records are left out and named with why, the rest is committed. A backend with a
    /// single writer refuses nothing (the default).
    fn commit_checked(&self, batch: WriteBatch) -> Result<Vec<(RunId, Error)>, Error> {
        self.commit(batch).map(|()| Vec::new())
    }
    /// What recovery found damaged when the store was opened, one line each.
    fn damage(&self) -> Vec<String> {
        Vec::new()
    }
    /// Overwrites (`Some`) or deletes (`None`) one stored record, bypassing every check.
    /// For repair tools and for tests that damage a log on purpose.
    fn raw_put(&self, run: RunId, seq: u64, bytes: Option<Vec<u8>>) -> Result<(), Error>;
    /// The log's clock, for a backend that reads the time itself (the segment backend names the
    /// store a salvage moves aside by it). [`Log`] passes its own on.
    fn use_clock(&self, clock: SharedClock) {
        let _ = clock;
    }
}

/// Where a request's acknowledgement goes.
type Ack = oneshot::Sender<Result<Vec<Record>, Error>>;

struct AppendRequest {
    run: RunId,
    events: Vec<Event>,
    ack: Ack,
}

/// Who holds the right to commit. One committer at a time is what lets a crash leave at most
/// one unfinished batch (the durability argument in `ARCHITECTURE.md`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Committer {
    /// Nobody: the next append decides.
    Idle,
    /// An appender, inline, for the requests it took.
    Inline,
    /// The writer thread, until it finds the queue empty.
    Thread,
}

struct Queue {
    /// Requests not yet taken by a committer, in the order they were appended.
    requests: Vec<AppendRequest>,
    committer: Committer,
    /// The log was dropped (or a commit panicked): no further appends; the writer thread
    /// commits what is queued and ends.
    closed: bool,
}

/// What the appenders and the writer thread share.
struct Shared<B: Backend> {
    backend: B,
    clock: RwLock<SharedClock>,
    queue: Mutex<Queue>,
    /// Wakes the writer thread when it is handed the queue (or the log closes).
    writer_wanted: Condvar,
    /// Where each run's history ends, as committed; used only by the committer of the moment.
    tails: Mutex<HashMap<RunId, Tail>>,
    /// Appends whose future has not finished.
    in_flight: AtomicUsize,
}

/// The event log over a backend, with its group commit (inline for a lone append, a writer
/// thread for groups).
pub struct Log<B: Backend> {
    shared: Arc<Shared<B>>,
    writer: Option<thread::JoinHandle<()>>,
}

impl<B: Backend> Log<B> {
    /// Starts the writer thread over `backend`; records are stamped by the system clock until
    /// [`EventLog::use_clock`] says otherwise.
    pub fn new(backend: B) -> Self {
        let shared = Arc::new(Shared {
            backend,
            clock: RwLock::new(Arc::new(SystemClock)),
            queue: Mutex::new(Queue {
                requests: Vec::new(),
                committer: Committer::Idle,
                closed: false,
            }),
            writer_wanted: Condvar::new(),
            tails: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
        });
        let writer_shared = shared.clone();
        let writer = thread::Builder::new()
            .name("waymark-log-writer".into())
            .spawn(move || writer_loop(&writer_shared))
            .expect("spawn the log writer thread");
        Log {
            shared,
            writer: Some(writer),
        }
    }

    /// The backend, for tools that need raw access.
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }
}

impl<B: Backend> Drop for Log<B> {
    fn drop(&mut self) {
        // The writer thread commits what is queued (an append whose future was dropped unpolled
        // is still written, as it would have been by a thread that took it), then ends.
        {
            let mut q = self.shared.lock_queue();
            q.closed = true;
            if q.committer == Committer::Idle && !q.requests.is_empty() {
                q.committer = Committer::Thread;
            }
        }
        self.shared.writer_wanted.notify_all();
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
        let alone = self.shared.in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        let guard = InFlight {
            shared: self.shared.clone(),
        };
        {
            let mut q = self.shared.lock_queue();
            if q.closed {
                return Box::pin(async move {
                    drop(guard);
                    Err(Error::WriterStopped)
                });
            }
            // Queued now, so that appends are committed in the order they were made whoever
            // commits them.
            q.requests.push(AppendRequest { run, events, ack });
            if !alone && q.committer == Committer::Idle {
                q.committer = Committer::Thread;
                drop(q);
                self.shared.writer_wanted.notify_one();
            }
        }
        Box::pin(async move {
            if alone {
                guard.shared.commit_inline();
            }
            let result = rx.await.map_err(|_| Error::WriterStopped).and_then(|r| r);
            drop(guard);
            result
        })
    }

    fn read(&self, run: RunId) -> Result<Vec<Record>, Error> {
        let raw = self.shared.backend.scan_run(run)?;
        if raw.is_empty() {
            return Err(Error::UnknownRun(run));
        }
        decode_chain(run, &raw)
    }

    fn open_runs(&self) -> Result<Vec<RunId>, Error> {
        // A crash in the middle of a commit can leave an open-marker for a run whose first record
        // was lost, or whose terminal record made it: neither is open.
        let mut open = Vec::new();
        for run in self.shared.backend.open_runs()? {
            match self.shared.backend.last(run)? {
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
        self.shared.backend.all_runs()
    }

    fn damage(&self) -> Vec<String> {
        self.shared.backend.damage()
    }

    fn use_clock(&self, clock: SharedClock) {
        self.shared.backend.use_clock(clock.clone());
        *self.shared.clock.write().expect("log clock lock") = clock;
    }
}

/// Counts an append as in flight until its future ends (or is dropped). A future dropped
/// before its request was committed hands the queue to the writer thread, so that no request
/// waits for an appender that will never come.
struct InFlight<B: Backend> {
    shared: Arc<Shared<B>>,
}

impl<B: Backend> Drop for InFlight<B> {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut q = self.shared.lock_queue();
        if q.committer == Committer::Idle && !q.requests.is_empty() {
            q.committer = Committer::Thread;
            drop(q);
            self.shared.writer_wanted.notify_one();
        }
    }
}

impl<B: Backend> Shared<B> {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A commit that panicked closes the log (below); the queue itself stays consistent.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lone append's path: if nobody is committing, commit what is queued (its own request,
    /// and any made since) here, on the appender's thread, and return; the two thread hand-offs
    /// of the writer thread (wake it, be woken by it) are what a lone append would otherwise
    /// pay beyond the flush. Whatever was queued meanwhile goes to the writer thread, so an
    /// appender commits at most one batch.
    fn commit_inline(&self) {
        let requests = {
            let mut q = self.lock_queue();
            if q.committer != Committer::Idle || q.requests.is_empty() {
                return;
            }
            q.committer = Committer::Inline;
            std::mem::take(&mut q.requests)
        };
        let release = Release { shared: self };
        // A panic inside closes the log (`CloseOnPanic`); the appender is answered
        // `WriterStopped`, as the writer thread's appenders are, rather than panicking itself.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.commit_group(requests);
        }));
        drop(release);
    }

    /// Stages every request of the group, commits them with one flush, then acknowledges each.
    fn commit_group(&self, requests: Vec<AppendRequest>) {
        let _close_on_panic = CloseOnPanic { shared: self };
        let mut tails = self
            .tails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Stored with millisecond precision; the records handed back carry the same value.
        let now = self
            .clock
            .read()
            .expect("log clock lock")
            .now()
            .trunc_subsecs(3);
        let mut batch = WriteBatch::default();
        let mut replies: Vec<(Ack, RunId, Result<Vec<Record>, Error>)> =
            Vec::with_capacity(requests.len());
        let mut closed_tails = Vec::new();
        for req in requests {
            let result = stage(
                &self.backend,
                &mut tails,
                &mut batch,
                &mut closed_tails,
                now,
                req.run,
                req.events,
            );
            replies.push((req.ack, req.run, result));
        }
        let outcome = if batch.records.is_empty() {
            Ok(Vec::new())
        } else {
            self.backend.commit_checked(batch)
        };
        match outcome {
            Ok(refused) => {
                for run in closed_tails {
                    tails.remove(&run);
                }
                // A refused run's records were not stored: its tail reloads from the store at its
                // next append, and each of its requests gets the refusal.
                let refused: HashMap<RunId, Error> = refused.into_iter().collect();
                for run in refused.keys() {
                    tails.remove(run);
                }
                drop(tails);
                for (ack, run, result) in replies {
                    let result = match (result, refused.get(&run)) {
                        (Ok(_), Some(e)) => Err(e.for_each_request()),
                        (result, _) => result,
                    };
                    let _ = ack.send(result);
                }
            }
            Err(e) => {
                // Nothing of this batch is known to be durable: forget every tail and fail them all.
                tails.clear();
                drop(tails);
                let msg = e.to_string();
                for (ack, _, _) in replies {
                    let _ = ack.send(Err(Error::Storage(msg.clone())));
                }
            }
        }
    }
}

/// Gives up the inline commit: hands what was queued meanwhile to the writer thread, or leaves
/// the log idle.
struct Release<'a, B: Backend> {
    shared: &'a Shared<B>,
}

impl<B: Backend> Drop for Release<'_, B> {
    fn drop(&mut self) {
        let mut q = self.shared.lock_queue();
        q.committer = if q.requests.is_empty() {
            Committer::Idle
        } else {
            Committer::Thread
        };
        let wake = q.committer == Committer::Thread || q.closed;
        drop(q);
        if wake {
            self.shared.writer_wanted.notify_one();
        }
    }
}

/// A commit that panics leaves the tails it was changing unknown: the log closes, every request
/// still queued is answered [`Error::WriterStopped`] (those the commit held were dropped with
/// it: their appenders get the same), and every later append is refused the same way.
struct CloseOnPanic<'a, B: Backend> {
    shared: &'a Shared<B>,
}

impl<B: Backend> Drop for CloseOnPanic<'_, B> {
    fn drop(&mut self) {
        if !thread::panicking() {
            return;
        }
        let mut q = self.shared.lock_queue();
        q.closed = true;
        for req in q.requests.drain(..) {
            let _ = req.ack.send(Err(Error::WriterStopped));
        }
        drop(q);
        self.shared.writer_wanted.notify_one();
    }
}

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

/// Largest number of append requests committed with one flush.
const MAX_BATCH: usize = 8192;

/// The writer thread: while the queue is handed to it, commits it group by group (each group
/// what was waiting when the last flush ended); gives it back when it finds it empty.
fn writer_loop<B: Backend>(shared: &Shared<B>) {
    loop {
        let requests = {
            let mut q = shared.lock_queue();
            loop {
                if q.committer == Committer::Thread {
                    if !q.requests.is_empty() {
                        break;
                    }
                    q.committer = Committer::Idle;
                }
                if q.closed && q.committer == Committer::Idle && q.requests.is_empty() {
                    return;
                }
                q = shared
                    .writer_wanted
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            let n = q.requests.len().min(MAX_BATCH);
            q.requests.drain(..n).collect::<Vec<_>>()
        };
        // A panic inside closed the log (`CloseOnPanic`): the loop then ends.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shared.commit_group(requests);
        }));
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
    events: Vec<Event>,
) -> Result<Vec<Record>, Error> {
    let mut tail = match tails.get(&run) {
        Some(t) => *t,
        None => load_tail(backend, run)?,
    };
    let start = tail;
    let mut records = Vec::with_capacity(events.len());
    let staged = batch.records.len();
    for event in events {
        let (bytes, hash) = match codec::encode(tail.next_seq, now, &tail.hash, &event) {
            Ok(encoded) => encoded,
            Err(e) => {
                // Nothing of this request goes into the batch.
                batch.records.truncate(staged);
                return Err(Error::Encode(e.to_string()));
            }
        };
        records.push(Record {
            run,
            seq: tail.next_seq,
            at: now,
            prev_hash: tail.hash,
            hash,
            event,
        });
        batch.records.push((run, tail.next_seq, bytes));
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
    tails.insert(run, tail);
    Ok(records)
}

/// A log shared by the engine and its tools.
pub type SharedLog = Arc<dyn EventLog>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Payload, StepRef};

    /// The memory backend, recording the thread of each commit; panics on commit when asked.
    #[derive(Clone, Default)]
    struct Recording {
        inner: memory::MemoryBackend,
        commits: Arc<Mutex<Vec<(String, usize)>>>,
        panic: bool,
    }

    impl Backend for Recording {
        fn scan_run(&self, run: RunId) -> Result<Vec<(u64, Vec<u8>)>, Error> {
            self.inner.scan_run(run)
        }
        fn last(&self, run: RunId) -> Result<Option<(u64, Vec<u8>)>, Error> {
            self.inner.last(run)
        }
        fn open_runs(&self) -> Result<Vec<RunId>, Error> {
            self.inner.open_runs()
        }
        fn all_runs(&self) -> Result<Vec<RunId>, Error> {
            self.inner.all_runs()
        }
        fn commit(&self, batch: WriteBatch) -> Result<(), Error> {
            assert!(!self.panic, "a backend bug");
            let name = thread::current().name().unwrap_or("").to_owned();
            self.commits
                .lock()
                .unwrap()
                .push((name, batch.records.len()));
            self.inner.commit(batch)
        }
        fn raw_put(&self, run: RunId, seq: u64, bytes: Option<Vec<u8>>) -> Result<(), Error> {
            self.inner.raw_put(run, seq, bytes)
        }
    }

    fn value(n: u64) -> Event {
        Event::StepCompleted {
            step: StepRef::Workflow(n as u32),
            output: Payload(n.to_string()),
        }
    }

    /// A lone append is committed by its own future, on the appender's thread: no hand-off to
    /// the writer thread and back (the per-append cost beyond the flush, BENCHMARKS.md).
    #[test]
    fn a_lone_append_is_committed_inline_by_its_appender() {
        let backend = Recording::default();
        let log = Log::new(backend.clone());
        let run = RunId::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for n in 0..3 {
            let records = rt.block_on(log.append(run, vec![value(n)])).unwrap();
            assert_eq!(records[0].seq, n);
        }
        let me = thread::current().name().unwrap_or("").to_owned();
        let commits = backend.commits.lock().unwrap().clone();
        assert_eq!(commits, vec![(me.clone(), 1), (me.clone(), 1), (me, 1)]);
        assert_eq!(log.read(run).unwrap().len(), 3);
    }

    /// Appends made while others are in flight go to the writer thread as one group, in the
    /// order they were made; an append whose future is dropped unpolled is still committed
    /// (by the writer thread), so nothing waits for an appender that never comes.
    #[test]
    fn appends_in_flight_together_are_one_group_in_order_and_a_dropped_one_is_still_written() {
        let backend = Recording::default();
        let log = Log::new(backend.clone());
        let run = RunId::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let futures: Vec<_> = (0..5).map(|n| log.append(run, vec![value(n)])).collect();
        let dropped = log.append(run, vec![value(5)]);
        drop(dropped);
        for (n, f) in futures.into_iter().enumerate().rev() {
            assert_eq!(rt.block_on(f).unwrap()[0].seq, n as u64);
        }
        drop(log);
        // Dropping the log let the writer thread finish what was queued.
        let commits = backend.commits.lock().unwrap().clone();
        assert!(
            commits.iter().all(|(name, _)| name == "waymark-log-writer"),
            "{commits:?}"
        );
        assert_eq!(commits.iter().map(|c| c.1).sum::<usize>(), 6, "{commits:?}");
        let reopened = Log::new(backend.inner.clone());
        let values: Vec<Event> = reopened
            .read(run)
            .unwrap()
            .into_iter()
            .map(|r| r.event)
            .collect();
        assert_eq!(values, (0..6).map(value).collect::<Vec<_>>());
    }

    /// A commit that panics stops the log: that append and every later one are answered
    /// `WriterStopped`, whichever path committed it; nothing hangs.
    #[test]
    fn a_commit_that_panics_stops_the_log_without_hanging() {
        let backend = Recording {
            panic: true,
            ..Recording::default()
        };
        let log = Log::new(backend);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let run = RunId::new();
        let first = rt.block_on(log.append(run, vec![value(0)]));
        assert!(matches!(first, Err(Error::WriterStopped)), "{first:?}");
        let later = rt.block_on(log.append(run, vec![value(1)]));
        assert!(matches!(later, Err(Error::WriterStopped)), "{later:?}");
    }
}
