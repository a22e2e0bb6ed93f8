//! The power-cut child: runs `crash-test` workflows like `waymark-crash-child`, and reports every
//! append the log acknowledged to an ack file that lives OUTSIDE the filesystem whose power is
//! cut (one `write` per acknowledged append, made after the acknowledgement).
//!
//! `waymark-power-child DATA_DIR SINK_DIR ACK_FILE RUNS STEPS WORK_MS SLEEP_MS`
//! Each ack line is `RUN SEQ HASH` (the record's hash, hex). Prints `done` and exits 0 when every
//! run has completed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use waymark_engine::log::{self, EventLog, SharedLog};
use waymark_engine::{Event, Record, RunId};
use waymark_tests::{CrashInput, EffectSink};

/// Hex of a hash.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// An [`EventLog`] that writes every acknowledged record to the ack file before handing the
/// acknowledgement to the engine.
struct AckingLog {
    inner: SharedLog,
    acks: Arc<Mutex<File>>,
}

impl EventLog for AckingLog {
    fn append(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Vec<Record>, log::Error>> {
        let fut = self.inner.append(run, events);
        let acks = self.acks.clone();
        Box::pin(async move {
            let records = fut.await?;
            let mut lines = String::new();
            for r in &records {
                lines.push_str(&format!("{} {} {}\n", r.run, r.seq, hex(&r.hash)));
            }
            acks.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .write_all(lines.as_bytes())
                .expect("write the ack file");
            Ok(records)
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 8,
        "usage: waymark-power-child DATA_DIR SINK_DIR ACK_FILE RUNS STEPS WORK_MS SLEEP_MS"
    );
    let data = PathBuf::from(&args[1]);
    let sink = EffectSink::new(&PathBuf::from(&args[2]))?;
    let acks = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args[3])?;
    let runs: usize = args[4].parse()?;
    let input = CrashInput {
        steps: args[5].parse()?,
        work_ms: args[6].parse()?,
        sleep_ms: args[7].parse()?,
    };
    let durable = waymark_engine::open_log(&data)?;
    let log: SharedLog = Arc::new(AckingLog {
        inner: durable,
        acks: Arc::new(Mutex::new(acks)),
    });
    waymark_tests::drive_crash_runs(log, sink, runs, &input).await?;
    println!("done");
    Ok(())
}
