//! The PostgreSQL store's benchmark. Run with `cargo bench -p waymark-store-pg`.
//!
//! Starts a private PostgreSQL server (`test_server`: `fsync=on`, the client connects with
//! `synchronous_commit=on`, so each commit waits for its WAL flush) and runs the engine's peer
//! workloads on it: one run of 1,000 no-op steps, then 100 and 1,000 concurrent runs of 10 steps.
//! Each figure is given beside the raw baseline measured in the same run, just before and just
//! after it (median of the two): one connection, one `INSERT` of a record of the engine's size
//! per transaction (`INSERT ...; COMMIT`, autocommit), so the ratio says what the engine's log
//! gets out of one durable commit. The same workloads on the segment store (the embedded
//! default, in a temporary directory) and on the sled store (flushed with sync_file_range: NOT
//! durable, shown as BENCHMARKS.md does elsewhere) are run beside. Group commit is shown as the mean number
//! of records per transaction. Prints a Markdown table (for BENCHMARKS.md).

// "PostgreSQL" and event names are prose here, not code.
#![allow(clippy::doc_markdown)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use waymark_engine::event::{Event, Record, RunId};
use waymark_engine::log::segment::SegmentBackend;
use waymark_engine::log::{EventLog, Log, SharedLog};
use waymark_engine::workflow::{self, Workflow};
use waymark_engine::{Engine, RunOutcome, WorkflowContext};
use waymark_store_pg::test_server::TestServer;
use waymark_store_pg::{Options, PgBackend};

#[derive(Serialize, Deserialize)]
struct Steps {
    n: u32,
}

/// `n` no-op steps in sequence.
struct NoopSteps;

impl Workflow for NoopSteps {
    const NAME: &'static str = "bench-noop";
    const VERSION: u32 = 1;
    type Input = Steps;
    type Output = u32;
    async fn run(&self, ctx: WorkflowContext, input: Steps) -> Result<u32, workflow::Error> {
        for i in 0..input.n {
            let _: u32 = ctx.step("noop", &i).await?;
        }
        Ok(input.n)
    }
}

/// Counts the appends made through it (each one request to the log's writer).
struct CountingLog {
    inner: SharedLog,
    appends: Arc<AtomicU64>,
}

impl EventLog for CountingLog {
    fn append(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Vec<Record>, waymark_engine::log::Error>> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.inner.append(run, events)
    }
    fn read(&self, run: RunId) -> Result<Vec<Record>, waymark_engine::log::Error> {
        self.inner.read(run)
    }
    fn open_runs(&self) -> Result<Vec<RunId>, waymark_engine::log::Error> {
        self.inner.open_runs()
    }
    fn runs(&self) -> Result<Vec<RunId>, waymark_engine::log::Error> {
        self.inner.runs()
    }
}

fn engine(log: SharedLog) -> Engine {
    Engine::builder(log)
        .workflow(NoopSteps)
        .activity_fn("noop", |_, input| async move { Ok(input) })
        .build()
}

/// One run of 1,000 no-op steps: steps per second, appends per step.
async fn one_run(log: SharedLog) -> anyhow::Result<(f64, f64)> {
    let appends = Arc::new(AtomicU64::new(0));
    let counted: SharedLog = Arc::new(CountingLog {
        inner: log,
        appends: appends.clone(),
    });
    let e = engine(counted);
    let start = Instant::now();
    let run = e.start::<NoopSteps>(&Steps { n: 1000 }, "bench").await?;
    let out = e.wait(run).await?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(matches!(out, RunOutcome::Completed(_)), "{out:?}");
    Ok((
        1000.0 / secs,
        appends.load(Ordering::SeqCst) as f64 / 1000.0,
    ))
}

/// `runs` concurrent runs of 10 steps: events per second (32 per run: RunStarted, 10 x 3 step
/// events, RunCompleted).
async fn many_runs(log: SharedLog, runs: usize) -> anyhow::Result<f64> {
    let e = engine(log);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..runs {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let run = e
                .start::<NoopSteps>(&Steps { n: 10 }, "bench")
                .await
                .unwrap();
            e.wait(run).await.unwrap()
        }));
    }
    for t in tasks {
        anyhow::ensure!(matches!(t.await?, RunOutcome::Completed(_)));
    }
    Ok(runs as f64 * 32.0 / start.elapsed().as_secs_f64())
}

/// The raw baseline: `n` transactions of one `INSERT` each (autocommit) of `bytes`, on one
/// connection: commits per second.
async fn raw_commits(config: &tokio_postgres::Config, n: u32, bytes: &[u8]) -> anyhow::Result<f64> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS raw_baseline (run uuid NOT NULL, seq bigint NOT NULL, bytes bytea NOT NULL, \
             PRIMARY KEY (run, seq))",
        )
        .await?;
    let insert = client
        .prepare("INSERT INTO raw_baseline (run, seq, bytes) VALUES ($1, $2, $3)")
        .await?;
    let run = uuid::Uuid::now_v7();
    let start = Instant::now();
    for seq in 0..i64::from(n) {
        client.execute(&insert, &[&run, &seq, &bytes]).await?;
    }
    Ok(f64::from(n) / start.elapsed().as_secs_f64())
}

struct Row {
    workload: &'static str,
    pg: f64,
    baseline: f64,
    group: f64,
    segment: f64,
    sled: f64,
}

fn pg_log(url: &str, server: &TestServer, daemon: &str) -> anyhow::Result<Arc<Log<PgBackend>>> {
    let mut options = Options::new(daemon);
    options.password_file = Some(server.passfile().to_path_buf());
    Ok(Arc::new(Log::new(PgBackend::open(url, options)?)))
}

fn group(log: &Log<PgBackend>, before: waymark_store_pg::Stats) -> f64 {
    let after = log.backend().stats();
    (after.records - before.records) as f64 / (after.commits - before.commits).max(1) as f64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = TestServer::start().map_err(anyhow::Error::msg)?;
    let schema = server.create_schema().map_err(anyhow::Error::msg)?;
    let url = server.url(&schema);
    PgBackend::migrate(&url, Some(server.passfile()))?;
    let config = server.config(&schema);
    // A record of the engine's size: a step's completion as the codec frames it.
    let sample = waymark_engine::codec::encode(
        7,
        chrono::Utc::now(),
        &[0; 32],
        &Event::StepCompleted {
            step: waymark_engine::event::StepRef::Workflow(7),
            output: waymark_engine::event::Payload("7".into()),
        },
    )?
    .0;
    let segment_dir = tempfile::tempdir()?;
    let segment: SharedLog = Arc::new(Log::new(SegmentBackend::open(segment_dir.path())?));
    let sled_dir = tempfile::tempdir()?;
    let sled: SharedLog = Arc::new(Log::new(waymark_engine::log::sled::SledBackend::open(
        sled_dir.path(),
    )?));
    let log = pg_log(&url, &server, "bench")?;
    let mut rows = Vec::new();

    let before_base = raw_commits(&config, 500, &sample).await?;
    let stats = log.backend().stats();
    let (steps, per_step) = one_run(log.clone()).await?;
    let g = group(&log, stats);
    let after_base = raw_commits(&config, 500, &sample).await?;
    let (segment_steps, _) = one_run(segment.clone()).await?;
    let (sled_steps, _) = one_run(sled.clone()).await?;
    rows.push(Row {
        workload: "one run of 1,000 steps (steps/s)",
        pg: steps,
        baseline: f64::midpoint(before_base, after_base),
        group: g,
        segment: segment_steps,
        sled: sled_steps,
    });
    eprintln!("one run: {per_step:.2} appends per step");
    for (runs, name) in [
        (100, "100 concurrent runs of 10 steps (events/s)"),
        (1000, "1,000 concurrent runs of 10 steps (events/s)"),
    ] {
        let before_base = raw_commits(&config, 500, &sample).await?;
        let stats = log.backend().stats();
        let events = many_runs(log.clone(), runs).await?;
        let g = group(&log, stats);
        let after_base = raw_commits(&config, 500, &sample).await?;
        let segment_events = many_runs(segment.clone(), runs).await?;
        let sled_events = many_runs(sled.clone(), runs).await?;
        rows.push(Row {
            workload: name,
            pg: events,
            baseline: f64::midpoint(before_base, after_base),
            group: g,
            segment: segment_events,
            sled: sled_events,
        });
    }
    let stats = log.backend().stats();
    println!(
        "| workload | PostgreSQL | raw INSERT; COMMIT per s (same run) | ratio | records per transaction | segment store | sled store (NOT durable) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.2}x | {:.1} | {:.0} | {:.0} |",
            r.workload,
            r.pg,
            r.baseline,
            r.pg / r.baseline,
            r.group,
            r.segment,
            r.sled
        );
    }
    println!(
        "({} transactions, {} records, {} retried, {} runs refused; record of {} bytes in the baseline)",
        stats.commits,
        stats.records,
        stats.retries,
        stats.refused_runs,
        sample.len()
    );
    Ok(())
}
