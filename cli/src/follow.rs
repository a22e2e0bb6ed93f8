//! Following a run: its history so far, then its new events in sequence order (never a record
//! dropped or repeated, whatever order the engine's broadcast delivers them in, and whether or
//! not the follower lagged), the progress its activities report, and how it ended. The daemon's
//! follow stream and the CLI's foreground display both use [`follow_lines`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use waymark_engine::event::{Event, Record};
use waymark_engine::{Engine, RunId, RunOutcome};

use crate::view::{outcome_line, outcome_status};

/// One event as the API carries it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventRow {
    /// Position.
    pub seq: u64,
    /// When written.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Kind name.
    pub kind: String,
    /// The event.
    pub event: Event,
    /// Its chain hash (hex).
    pub hash: String,
}

impl From<&Record> for EventRow {
    fn from(r: &Record) -> Self {
        EventRow {
            seq: r.seq,
            at: r.at,
            kind: r.event.kind().to_owned(),
            event: r.event.clone(),
            hash: r.hash.iter().fold(String::with_capacity(64), |mut s, b| {
                use std::fmt::Write as _;
                let _ = write!(s, "{b:02x}");
                s
            }),
        }
    }
}

/// A line of the live follow stream (newline-delimited JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FollowLine {
    /// An event of the run.
    Event(EventRow),
    /// Progress an activity reported.
    Progress {
        /// Step label.
        label: String,
        /// Message.
        message: String,
    },
    /// The run's driver stopped: how.
    End {
        /// One line.
        outcome: String,
        /// Exit code for the CLI ([`crate::exit::ExitStatus::code`]: 0 completed).
        code: u8,
    },
}

/// Puts live records back in sequence order. Records at or below the last one delivered are
/// duplicates (already sent from the history) and are dropped; a record beyond the next one
/// expected waits until the ones before it arrive. Since a record is broadcast only after it is
/// durable, and the writer makes a run's records durable in sequence order, a gap can always be
/// filled at once from the log ([`InOrder::fill`]).
#[derive(Debug, Default)]
pub struct InOrder {
    last: Option<u64>,
    pending: BTreeMap<u64, Record>,
}

impl InOrder {
    /// Starts after `last` (the last record already delivered; `None`: nothing yet).
    pub fn after(last: Option<u64>) -> Self {
        InOrder {
            last,
            pending: BTreeMap::new(),
        }
    }

    /// The last record delivered.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    fn next_seq(&self) -> u64 {
        self.last.map_or(0, |l| l + 1)
    }

    /// Takes one live record; returns the records now deliverable, in order.
    pub fn accept(&mut self, record: Record) -> Vec<Record> {
        if record.seq >= self.next_seq() {
            self.pending.insert(record.seq, record);
        }
        self.drain()
    }

    /// Whether records are waiting for an earlier one (read the log and [`InOrder::fill`]).
    pub fn has_gap(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes the run's history as read from the log; returns every record not yet delivered
    /// (from the history, then from the waiting live records), in order.
    pub fn fill(&mut self, history: Vec<Record>) -> Vec<Record> {
        let next = self.next_seq();
        for r in history.into_iter().filter(|r| r.seq >= next) {
            self.pending.entry(r.seq).or_insert(r);
        }
        self.drain()
    }

    fn drain(&mut self) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some(r) = self.pending.remove(&self.next_seq()) {
            self.last = Some(r.seq);
            out.push(r);
        }
        out
    }
}

/// Sends a run's history so far, then its new events (in sequence order, none missed) and the
/// progress its activities report, then how its driver stopped, until the run stops or the
/// receiver goes away (`Ok(None)`: the follower left; the run goes on).
///
/// # Errors
/// The run's history cannot be read, or the engine cannot say how the run ended.
pub async fn follow_lines(
    engine: &Engine,
    run: RunId,
    tx: tokio::sync::mpsc::Sender<FollowLine>,
) -> anyhow::Result<Option<RunOutcome>> {
    let send_all = |records: Vec<Record>| {
        let tx = tx.clone();
        async move {
            for r in &records {
                if tx.send(FollowLine::Event(EventRow::from(r))).await.is_err() {
                    return false;
                }
            }
            true
        }
    };
    // Subscribe before reading, so that nothing appended in between is missed.
    let mut records = engine.subscribe(run);
    let mut progress = engine.progress(run);
    let mut order = InOrder::after(None);
    if !send_all(order.fill(engine.log().read(run)?)).await {
        return Ok(None);
    }
    let wait = engine.wait(run);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            outcome = &mut wait => {
                let outcome = outcome?;
                if !send_all(order.fill(engine.log().read(run)?)).await {
                    return Ok(None);
                }
                let end = FollowLine::End {
                    outcome: outcome_line(run, &outcome),
                    code: outcome_status(&outcome).code(),
                };
                let _ = tx.send(end).await;
                return Ok(Some(outcome));
            }
            rec = async {
                match records.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => futures::future::pending().await,
                }
            } => {
                let ready = match rec {
                    Ok(r) => {
                        let ready = order.accept(r);
                        if order.has_gap() {
                            // The missing records are durable already: read them.
                            let mut ready = ready;
                            ready.extend(order.fill(engine.log().read(run)?));
                            ready
                        } else {
                            ready
                        }
                    }
                    // This follower fell behind the broadcast: what it missed is in the log.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        order.fill(engine.log().read(run)?)
                    }
                    // The driver stopped: the outcome branch reads the rest.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        records = None;
                        Vec::new()
                    }
                };
                if !send_all(ready).await {
                    return Ok(None);
                }
            }
            changed = async {
                match progress.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => futures::future::pending().await,
                }
            } => {
                if !changed {
                    progress = None;
                    continue;
                }
                let p = progress.as_ref().and_then(|rx| rx.borrow().clone());
                if let Some(p) = p {
                    if tx.send(FollowLine::Progress { label: p.label, message: p.message }).await.is_err() {
                        return Ok(None);
                    }
                }
            }
        }
    }
}
