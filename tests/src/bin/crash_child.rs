//! The crash-test child: runs `crash-test` workflows on a sled log until they finish, optionally
//! killing itself with SIGKILL right after its N-th durable append.
//!
//! `waymark-crash-child DATA_DIR SINK_DIR RUNS STEPS WORK_MS SLEEP_MS [KILL_AFTER]`
//! Prints `done` and exits 0 when every run has completed.

use std::path::PathBuf;
use std::sync::Arc;

use waymark_tests::{CrashInput, CrashingLog, EffectSink};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 7,
        "usage: waymark-crash-child DATA_DIR SINK_DIR RUNS STEPS WORK_MS SLEEP_MS [KILL_AFTER]"
    );
    let data = PathBuf::from(&args[1]);
    let sink = EffectSink::new(&PathBuf::from(&args[2]))?;
    let runs: usize = args[3].parse()?;
    let input = CrashInput {
        steps: args[4].parse()?,
        work_ms: args[5].parse()?,
        sleep_ms: args[6].parse()?,
    };
    let durable = waymark_engine::open_log(&data)?;
    let log: waymark_engine::log::SharedLog = match args.get(7) {
        Some(n) => Arc::new(CrashingLog::new(durable, n.parse()?)),
        None => durable,
    };
    waymark_tests::drive_crash_runs(log, sink, runs, &input).await?;
    println!("done");
    Ok(())
}
