//! What `/metrics` exports: runs by state (also `held`, `refused`, `needs-operator`, `damaged`),
//! step, retry and compensation counters, and the latency of durable appends.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use waymark_engine::clock::SharedClock;
use waymark_engine::event::{Event, Record};
use waymark_engine::log::{self, EventLog};
use waymark_engine::RunId;

use crate::api;

/// Counters for `/metrics`, and each run's last appended sequence number, fed by
/// [`MeteredLog`].
#[derive(Default)]
pub struct Metrics {
    /// The sequence number of each run's last record appended since the daemon started (every
    /// append of the daemon goes through its [`MeteredLog`]: it holds the data directory's lock).
    last_seq: Mutex<HashMap<RunId, u64>>,
    appends: AtomicU64,
    append_micros: AtomicU64,
    append_buckets: [AtomicU64; 6],
    steps: AtomicU64,
    retries: AtomicU64,
    compensations: AtomicU64,
    /// Runs this daemon stopped driving because another daemon holds them (shared store).
    fenced: Mutex<std::collections::HashSet<RunId>>,
    /// This daemon's name in a shared store (`--daemon-id`), the label of its counters there.
    daemon: Mutex<Option<String>>,
    /// Other daemons append to the store too: no run is ever "unchanged since the daemon
    /// started" ([`Metrics::last_appended`]).
    shared_store: std::sync::atomic::AtomicBool,
    /// Drawn by [`Metrics::last_appended`] for a shared store: a version never seen before.
    fresh: AtomicU64,
}

const BUCKETS_US: [u64; 6] = [250, 500, 1000, 5000, 25_000, 100_000];

/// The log with counters around `append`: the daemon's engine writes through it.
pub struct MeteredLog {
    inner: Arc<dyn EventLog>,
    metrics: Arc<Metrics>,
}

impl EventLog for MeteredLog {
    fn append(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Vec<Record>, log::Error>> {
        let m = self.metrics.clone();
        for e in &events {
            match e {
                Event::StepScheduled { .. } => m.steps.fetch_add(1, Ordering::Relaxed),
                Event::AttemptFailed {
                    next_retry_at: Some(_),
                    ..
                } => m.retries.fetch_add(1, Ordering::Relaxed),
                Event::CompensationStarted { .. } => {
                    m.compensations.fetch_add(1, Ordering::Relaxed)
                }
                _ => 0,
            };
        }
        let fut = self.inner.append(run, events);
        Box::pin(async move {
            let start = Instant::now();
            let r = fut.await;
            if let Err(e @ log::Error::Fenced { .. }) = &r {
                // The driver stops on this error; the store's fence refused the append because
                // another daemon took the run over.
                m.count_fenced(run, &format!("{e}"));
            }
            if let Some(last) = r.as_ref().ok().and_then(|records| records.last()) {
                let mut seqs = m.last_seq.lock().expect("last_seq lock");
                let seq = seqs.entry(last.run).or_insert(last.seq);
                *seq = (*seq).max(last.seq);
            }
            let us = start.elapsed().as_micros() as u64;
            m.appends.fetch_add(1, Ordering::Relaxed);
            m.append_micros.fetch_add(us, Ordering::Relaxed);
            for (i, b) in BUCKETS_US.iter().enumerate() {
                if us <= *b {
                    m.append_buckets[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            r
        })
    }
    fn read(&self, run: RunId) -> Result<Vec<Record>, log::Error> {
        self.inner.read(run)
    }
    fn open_runs(&self) -> Result<Vec<RunId>, log::Error> {
        self.inner.open_runs()
    }
    fn runs(&self) -> Result<Vec<RunId>, log::Error> {
        self.inner.runs()
    }
    fn damage(&self) -> Vec<String> {
        self.inner.damage()
    }
    fn use_clock(&self, clock: SharedClock) {
        // The engine's clock stamps the records (a default no-op here would silently keep the
        // system clock under a test's paused time).
        self.inner.use_clock(clock);
    }
}

impl Metrics {
    /// The sequence number of `run`'s last record appended since the daemon started; `None`:
    /// none was, so the run is as the daemon found it. Read it before reading the run: an
    /// append in between then only makes the value stale, never the history.
    pub fn last_appended(&self, run: RunId) -> Option<u64> {
        if self.shared_store.load(Ordering::Relaxed) {
            // Other daemons' appends do not pass here: every read must see the store.
            return Some(u64::MAX - self.fresh.fetch_add(1, Ordering::Relaxed));
        }
        self.last_seq
            .lock()
            .expect("last_seq lock")
            .get(&run)
            .copied()
    }
}

impl Metrics {
    /// Marks the store as shared by several daemons, this one named `daemon`.
    pub fn set_shared_store(&self, daemon: &str) {
        self.shared_store.store(true, Ordering::Relaxed);
        *self.daemon.lock().expect("daemon lock") = Some(daemon.to_owned());
    }

    /// Counts (once per run) and logs a run this daemon stopped driving because another daemon
    /// holds it: its lease was taken over, or the store refused an append (the fence).
    pub fn count_fenced(&self, run: RunId, message: &str) {
        if self.fenced.lock().expect("fenced lock").insert(run) {
            tracing::error!(%run, "{message}");
        }
    }

    /// Runs this daemon stopped driving because another daemon holds them.
    pub fn fenced_runs(&self) -> u64 {
        self.fenced.lock().expect("fenced lock").len() as u64
    }
}

impl MeteredLog {
    /// `inner` with counters, and the counters.
    pub fn wrap(inner: Arc<dyn EventLog>) -> (Arc<MeteredLog>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (
            Arc::new(MeteredLog {
                inner,
                metrics: metrics.clone(),
            }),
            metrics,
        )
    }
}

/// The Prometheus text of `/metrics`. Fails when the runs cannot be counted (a scrape must
/// not report zero then).
pub fn render(log: &dyn EventLog, m: &Metrics) -> anyhow::Result<String> {
    let mut by_state: BTreeMap<String, u64> =
        api::STATES.iter().map(|s| ((*s).to_owned(), 0)).collect();
    let list = api::list(log, None, None)?;
    let damaged = list.damaged.len();
    let mut refused = Vec::new();
    for r in list.runs {
        if r.state == api::REFUSED {
            refused.push((r.run.clone(), r.reason.clone().unwrap_or_default()));
        }
        *by_state.entry(r.state).or_default() += 1;
    }
    let mut out =
        String::from("# HELP waymark_runs Runs in the log by state.\n# TYPE waymark_runs gauge\n");
    for (s, n) in by_state {
        out.push_str(&format!("waymark_runs{{state=\"{s}\"}} {n}\n"));
    }
    out.push_str(&format!(
        "# HELP waymark_runs_damaged Runs whose history does not load (`waymark verify`).\n\
         # TYPE waymark_runs_damaged gauge\nwaymark_runs_damaged {damaged}\n"
    ));
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        ));
    };
    counter(
        &mut out,
        "waymark_steps_total",
        "Steps scheduled since the daemon started.",
        m.steps.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "waymark_retries_total",
        "Attempts that failed and were retried.",
        m.retries.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "waymark_compensations_total",
        "Runs that started compensating.",
        m.compensations.load(Ordering::Relaxed),
    );
    if let Some(daemon) = m.daemon.lock().expect("daemon lock").clone() {
        out.push_str(&format!(
            "# HELP waymark_runs_fenced_total Runs this daemon stopped driving because another \
             daemon took them over (lease taken, or an append refused by the store's fence).\n\
             # TYPE waymark_runs_fenced_total counter\n\
             waymark_runs_fenced_total{{daemon=\"{}\"}} {}\n",
            label_value(&daemon),
            m.fenced_runs()
        ));
    }
    out.push_str("# HELP waymark_append_seconds Latency of durable appends to the event log.\n# TYPE waymark_append_seconds histogram\n");
    for (i, b) in BUCKETS_US.iter().enumerate() {
        out.push_str(&format!(
            "waymark_append_seconds_bucket{{le=\"{}\"}} {}\n",
            *b as f64 / 1e6,
            m.append_buckets[i].load(Ordering::Relaxed)
        ));
    }
    let n = m.appends.load(Ordering::Relaxed);
    out.push_str(&format!(
        "waymark_append_seconds_bucket{{le=\"+Inf\"}} {n}\n"
    ));
    out.push_str(&format!(
        "waymark_append_seconds_sum {}\n",
        m.append_micros.load(Ordering::Relaxed) as f64 / 1e6
    ));
    out.push_str(&format!("waymark_append_seconds_count {n}\n"));
    out.push_str(
        "# HELP waymark_run_refused A run that ended refused (nothing changed), with its reasons.\n\
         # TYPE waymark_run_refused gauge\n",
    );
    for (run, reason) in refused {
        out.push_str(&format!(
            "waymark_run_refused{{run=\"{run}\",reason=\"{}\"}} 1\n",
            label_value(&reason)
        ));
    }
    Ok(out)
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, TimeZone, Utc};
    use waymark_engine::clock::Clock;
    use waymark_engine::event::Event;
    use waymark_engine::log::memory::MemoryBackend;
    use waymark_engine::log::{EventLog, Log};
    use waymark_engine::{Payload, RunId};

    use super::MeteredLog;

    struct Fixed(DateTime<Utc>);
    impl Clock for Fixed {
        fn now(&self) -> DateTime<Utc> {
            self.0
        }
    }

    fn started() -> Event {
        Event::RunStarted {
            workflow: "w".into(),
            version: 1,
            input: Payload("{}".into()),
            started_by: "test".into(),
        }
    }

    /// The engine hands its clock to the log it was built on; through the daemon's wrapper it
    /// must reach the log that stamps the records.
    #[tokio::test]
    async fn the_metered_log_passes_the_engines_clock_to_the_log_it_wraps() {
        let (log, _) = MeteredLog::wrap(Arc::new(Log::new(MemoryBackend::new())));
        let then = Utc.with_ymd_and_hms(2001, 2, 3, 4, 5, 6).unwrap();
        log.use_clock(Arc::new(Fixed(then)));
        let records = log.append(RunId::new(), vec![started()]).await.unwrap();
        assert_eq!(records[0].at, then);
    }

    #[tokio::test]
    async fn the_metered_log_knows_each_runs_last_appended_sequence_number() {
        let (log, metrics) = MeteredLog::wrap(Arc::new(Log::new(MemoryBackend::new())));
        let (a, b) = (RunId::new(), RunId::new());
        assert_eq!(metrics.last_appended(a), None);
        log.append(a, vec![started()]).await.unwrap();
        log.append(b, vec![started()]).await.unwrap();
        log.append(
            a,
            vec![Event::RunCompleted {
                output: Payload("null".into()),
            }],
        )
        .await
        .unwrap();
        assert_eq!(metrics.last_appended(a), Some(1));
        assert_eq!(metrics.last_appended(b), Some(0));
    }
}
