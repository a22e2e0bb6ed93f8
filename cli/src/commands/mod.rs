//! One function per command; `dispatch` picks it.

mod demo;
mod inspect;
mod runs;
mod sandbox;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use waymark_engine::log::sled::SledBackend;
use waymark_engine::log::{EventLog, Log};
use waymark_engine::{Engine, RunId, RunOutcome};

use crate::env::usage;
use crate::{Command, SandboxCommand};

/// Runs a command.
pub async fn dispatch(command: Command, data_dir: std::path::PathBuf) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { workflow, inventory } => runs::run(&data_dir, &workflow, &inventory).await,
        Command::Resume { run } => runs::resume(&data_dir, run.as_deref()).await,
        Command::Plan {
            workflow,
            inventory,
            output,
        } => runs::plan(&workflow, &inventory, output).await,
        Command::Demo { fail_at, faster } => demo::demo(&data_dir, fail_at, faster).await,
        Command::Ls {
            state,
            workflow,
            output,
        } => inspect::ls(&data_dir, state.as_deref(), workflow.as_deref(), output),
        Command::Show { run, output } => inspect::show(&data_dir, &run, output),
        Command::History { run, output } => inspect::history(&data_dir, &run, output),
        Command::Replay { run } => inspect::replay(&data_dir, &run).await,
        Command::Verify { run } => inspect::verify(&data_dir, run.as_deref()),
        Command::Signal { run, signal, reason } => inspect::signal(&data_dir, &run, &signal, reason).await,
        Command::Sandbox {
            command: SandboxCommand::Up { dir, faster },
        } => sandbox::up(&dir, faster).await,
    }
}

/// Opens the event log of a data directory.
pub fn open_log(data_dir: &Path) -> anyhow::Result<Arc<Log<SledBackend>>> {
    waymark_engine::open_sled_log(data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))
}

/// An engine with every workflow and activity of this binary.
pub fn engine(log: Arc<Log<SledBackend>>) -> Engine {
    waymark_workflows::register(Engine::builder(log)).build()
}

/// Finds a run by id or unique prefix.
pub fn find_run(log: &dyn EventLog, text: &str) -> anyhow::Result<RunId> {
    if let Ok(id) = text.parse::<RunId>() {
        return Ok(id);
    }
    let matches: Vec<RunId> = log
        .runs()?
        .into_iter()
        .filter(|r| r.to_string().starts_with(text))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(usage(format!("no run matches {text:?}; `waymark ls` lists the runs"))),
        many => Err(usage(format!(
            "{text:?} matches {} runs; give more of the id (`waymark ls`)",
            many.len()
        ))),
    }
}

/// Exit code for how a run ended.
pub fn outcome_code(outcome: &RunOutcome) -> ExitCode {
    match outcome {
        RunOutcome::Completed(_) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// One line for how a run ended.
pub fn outcome_line(run: RunId, outcome: &RunOutcome) -> String {
    match outcome {
        RunOutcome::Completed(out) => format!("run {run} completed: {out}"),
        RunOutcome::Failed(e) => format!("run {run} FAILED (compensations ran): {e}"),
        RunOutcome::Cancelled(e) => format!("run {run} CANCELLED (compensations ran): {e}"),
        RunOutcome::Suspended(r) => format!(
            "run {run} SUSPENDED: the workflow code no longer matches its history: {r:?}; \
             `waymark replay {run}` shows the divergence"
        ),
        RunOutcome::Stopped(why) => format!("run {run} stopped unfinished ({why}); `waymark resume {run}` continues it"),
    }
}
