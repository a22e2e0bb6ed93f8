//! The simulation log: an in-memory [`EventLog`] whose appends complete inline (no writer
//! thread, no real time), for the deterministic simulation of crashes.
//!
//! Records are stored in the same form as on disk ([`codec`]: framing, checksum, hash chain),
//! stamped by the engine's clock. Each append is its own flush: once `append` returns, its
//! records are durable, unless a crash was set at that append ([`SimLog::set_crash`]). A crash
//! models the death of the process at an append boundary: the chosen append's records are lost
//! (`durable: false`, the process died before the flush) or kept (`durable: true`, it died
//! right after the flush, before anyone heard of it); either way that append and every later one
//! never resolve (the process is dead), and [`SimLog::restart`] opens exactly the durable
//! records, as a restarted process would.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use chrono::SubsecRound;
use futures::future::BoxFuture;

use super::{decode_chain, Error, EventLog};
use crate::clock::{SharedClock, SystemClock};
use crate::codec;
use crate::event::{Event, Record, RunId};

/// Where the simulated process dies: at the `append`-th append (counted from 0 since the
/// [`SimLog`] was created), with that append's records `durable` or lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CrashAt {
    /// Index of the append the crash happens at.
    pub append: u64,
    /// Whether that append's flush completed before the death (its records survive).
    pub durable: bool,
}

#[derive(Default)]
struct State {
    /// Encoded records per run, in sequence order.
    records: BTreeMap<RunId, Vec<Vec<u8>>>,
    /// Hash of each run's last record.
    tails: HashMap<RunId, [u8; 32]>,
    /// Every run, oldest first.
    order: Vec<RunId>,
    /// Runs whose last record is terminal.
    closed: HashSet<RunId>,
    appends: u64,
    crash: Option<CrashAt>,
    crashed: bool,
}

/// An in-memory event log for simulation: appends complete inline; crashes are set per append.
pub struct SimLog {
    state: Mutex<State>,
    clock: RwLock<SharedClock>,
}

impl SimLog {
    /// An empty log, stamping records with the system clock until the engine gives it its own
    /// ([`EventLog::use_clock`]).
    pub fn new() -> Arc<SimLog> {
        Arc::new(SimLog {
            state: Mutex::new(State::default()),
            clock: RwLock::new(Arc::new(SystemClock)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("simulation log lock")
    }

    /// Sets (or clears) where the process dies. Appends already made are not affected.
    pub fn set_crash(&self, crash: Option<CrashAt>) {
        self.lock().crash = crash;
    }

    /// Appends received so far (every call of `append`, empty or not, crashed or not).
    pub fn appends(&self) -> u64 {
        self.lock().appends
    }

    /// Whether the crash happened: from then on no append resolves.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// A fresh log holding exactly the durable records (no crash set, appends counted from 0),
    /// as a process restarted after the crash would open them.
    pub fn restart(&self) -> Arc<SimLog> {
        let s = self.lock();
        let fresh = State {
            records: s.records.clone(),
            tails: s.tails.clone(),
            order: s.order.clone(),
            closed: s.closed.clone(),
            ..State::default()
        };
        Arc::new(SimLog {
            state: Mutex::new(fresh),
            clock: RwLock::new(Arc::new(SystemClock)),
        })
    }

    /// A run's durable records, decoded and checked (empty for a run the log does not have).
    pub fn records(&self, run: RunId) -> Vec<Record> {
        self.read(run).unwrap_or_default()
    }

    /// A run's durable records as stored (the codec's bytes), for byte-for-byte comparisons.
    pub fn encoded(&self, run: RunId) -> Vec<Vec<u8>> {
        self.lock().records.get(&run).cloned().unwrap_or_default()
    }

    /// Encodes `events` after the run's tail; nothing is stored.
    fn stage(
        s: &State,
        now: chrono::DateTime<chrono::Utc>,
        run: RunId,
        events: &[Event],
    ) -> Result<(Vec<Record>, Vec<Vec<u8>>), Error> {
        let first = s.records.get(&run).map_or(0, |r| r.len() as u64);
        let mut prev = s.tails.get(&run).copied().unwrap_or([0; 32]);
        let mut records = Vec::with_capacity(events.len());
        let mut bytes = Vec::with_capacity(events.len());
        for (seq, event) in (first..).zip(events) {
            let (encoded, hash) =
                codec::encode(seq, now, &prev, event).map_err(|e| Error::Encode(e.to_string()))?;
            records.push(Record {
                run,
                seq,
                at: now,
                prev_hash: prev,
                hash,
                event: event.clone(),
            });
            bytes.push(encoded);
            prev = hash;
        }
        Ok((records, bytes))
    }

    fn store(s: &mut State, run: RunId, records: &[Record], bytes: Vec<Vec<u8>>) {
        let Some(last) = records.last() else { return };
        let stored = s.records.entry(run).or_default();
        if stored.is_empty() {
            s.order.push(run);
        }
        stored.extend(bytes);
        s.tails.insert(run, last.hash);
        if records.iter().any(|r| r.event.is_terminal()) {
            s.closed.insert(run);
        }
    }
}

impl EventLog for SimLog {
    fn append(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Vec<Record>, Error>> {
        // Stored with millisecond precision, as the durable log does.
        let now = self
            .clock
            .read()
            .expect("simulation log clock")
            .now()
            .trunc_subsecs(3);
        let mut s = self.lock();
        let index = s.appends;
        s.appends += 1;
        if s.crashed {
            return Box::pin(std::future::pending());
        }
        let staged = Self::stage(&s, now, run, &events);
        let crash = s.crash.filter(|c| c.append == index);
        let (records, bytes) = match staged {
            Ok(staged) => staged,
            Err(e) if crash.is_none() => return Box::pin(std::future::ready(Err(e))),
            Err(_) => (Vec::new(), Vec::new()),
        };
        if crash.is_none_or(|c| c.durable) {
            Self::store(&mut s, run, &records, bytes);
        }
        if crash.is_some() {
            s.crashed = true;
            return Box::pin(std::future::pending());
        }
        Box::pin(std::future::ready(Ok(records)))
    }

    fn read(&self, run: RunId) -> Result<Vec<Record>, Error> {
        let raw: Vec<(u64, Vec<u8>)> = {
            let s = self.lock();
            let Some(stored) = s.records.get(&run) else {
                return Err(Error::UnknownRun(run));
            };
            (0u64..).zip(stored.iter().cloned()).collect()
        };
        decode_chain(run, &raw)
    }

    fn open_runs(&self) -> Result<Vec<RunId>, Error> {
        let s = self.lock();
        Ok(s.order
            .iter()
            .filter(|r| !s.closed.contains(r))
            .copied()
            .collect())
    }

    fn runs(&self) -> Result<Vec<RunId>, Error> {
        Ok(self.lock().order.clone())
    }

    fn use_clock(&self, clock: SharedClock) {
        *self.clock.write().expect("simulation log clock") = clock;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::event::Payload;

    fn event(n: u32) -> Event {
        Event::SignalReceived {
            name: format!("s{n}"),
            payload: Payload::null(),
            sent_by: "t".into(),
        }
    }

    fn poll_once<F: Future>(f: F) -> Poll<F::Output> {
        let mut f = pin!(f);
        f.as_mut()
            .poll(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }

    #[test]
    fn appends_resolve_inline_and_keep_the_chain() {
        let log = SimLog::new();
        let run = RunId::new();
        let Poll::Ready(Ok(first)) = poll_once(log.append(run, vec![event(0), event(1)])) else {
            panic!("an append resolves at once")
        };
        let Poll::Ready(Ok(second)) = poll_once(log.append(run, vec![event(2)])) else {
            panic!("an append resolves at once")
        };
        assert_eq!(second[0].seq, 2);
        assert_eq!(second[0].prev_hash, first[1].hash);
        let read = log.read(run).unwrap();
        assert_eq!(read.len(), 3);
        assert_eq!(log.appends(), 2);
        assert_eq!(log.encoded(run).len(), 3);
        let bytes = &log.encoded(run)[2];
        assert_eq!(
            codec::decode(run, 2, bytes).unwrap().event,
            event(2),
            "stored in the codec's form"
        );
    }

    #[test]
    fn a_crash_loses_or_keeps_its_append_and_nothing_resolves_after_it() {
        for durable in [false, true] {
            let log = SimLog::new();
            let run = RunId::new();
            log.set_crash(Some(CrashAt { append: 1, durable }));
            assert!(poll_once(log.append(run, vec![event(0)])).is_ready());
            assert!(!log.crashed());
            assert!(poll_once(log.append(run, vec![event(1)])).is_pending());
            assert!(log.crashed());
            assert!(poll_once(log.append(run, vec![event(2)])).is_pending());
            let expected = if durable { 2 } else { 1 };
            assert_eq!(log.records(run).len(), expected, "durable: {durable}");
            let reopened = log.restart();
            assert!(!reopened.crashed());
            assert_eq!(reopened.appends(), 0);
            assert_eq!(reopened.records(run).len(), expected);
            assert_eq!(reopened.open_runs().unwrap(), vec![run]);
            let Poll::Ready(Ok(more)) = poll_once(reopened.append(run, vec![event(3)])) else {
                panic!("the reopened log takes appends")
            };
            assert_eq!(
                more[0].seq, expected as u64,
                "the chain goes on from the durable tail"
            );
            assert_eq!(reopened.read(run).unwrap().len(), expected + 1);
        }
    }
}
