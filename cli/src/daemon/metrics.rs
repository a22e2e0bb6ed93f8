//! What `/metrics` exports: runs by state (also `held`, `refused`, `needs-operator`, `damaged`),
//! step, retry and compensation counters, and the latency of durable appends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use waymark_engine::event::{Event, Record};
use waymark_engine::log::{self, EventLog};
use waymark_engine::RunId;

use crate::api;

/// Counters for `/metrics`, fed by [`MeteredLog`].
#[derive(Default)]
pub struct Metrics {
    appends: AtomicU64,
    append_micros: AtomicU64,
    append_buckets: [AtomicU64; 6],
    steps: AtomicU64,
    retries: AtomicU64,
    compensations: AtomicU64,
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
