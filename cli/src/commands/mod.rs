//! One function per command; `dispatch` picks it.

mod demo;
mod inspect;
mod recover;
mod runs;
mod sandbox;
mod schedules;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use waymark_engine::event::SuspendReason;
use waymark_engine::runtime::{ReplayReport, ReplayVerdict};
use waymark_engine::DurableLog;
use waymark_engine::{Engine, RunOutcome};

use crate::client::Client;
use crate::{Command, SandboxCommand};

/// Runs a command.
pub async fn dispatch(command: Command, data_dir: std::path::PathBuf) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            workflow,
            inventory,
        } => runs::run(&data_dir, &workflow, &inventory).await,
        Command::Resume { run } => runs::resume(&data_dir, run.as_deref()).await,
        Command::Plan {
            workflow,
            inventory,
            output,
        } => runs::plan(&workflow, &inventory, output).await,
        Command::Demo {
            fail_at,
            faster,
            time_scale,
        } => demo::demo(&data_dir, fail_at, faster, time_scale).await,
        Command::Ls {
            state,
            workflow,
            output,
        } => inspect::ls(&data_dir, state.as_deref(), workflow.as_deref(), output).await,
        Command::Show { run, output } => inspect::show(&data_dir, &run, output).await,
        Command::History { run, output } => inspect::history(&data_dir, &run, output).await,
        Command::Replay { run } => inspect::replay(&data_dir, &run).await,
        Command::Verify { run } => inspect::verify(&data_dir, run.as_deref()).await,
        Command::Start {
            workflow,
            inventory,
            detach,
        } => runs::start(&data_dir, &workflow, &inventory, detach).await,
        Command::Attach { run } => runs::attach(&data_dir, &run).await,
        Command::Daemon {
            listen_tcp,
            token_file,
            inventory_dir,
        } => {
            crate::daemon::run(crate::daemon::Options {
                data_dir,
                tcp: listen_tcp,
                token_file,
                inventory_dir,
                tick: std::time::Duration::from_secs(5),
            })
            .await
        }
        Command::Schedule { command } => schedules::command(&data_dir, command).await,
        Command::Completions { shell } => {
            let mut cmd = <crate::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "waymark", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <crate::Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Signal {
            run,
            signal,
            reason,
        } => inspect::signal(&data_dir, &run, &signal, reason).await,
        Command::Resolve { run, note } => inspect::resolve(&data_dir, &run, &note).await,
        Command::Recover => recover::recover(&data_dir),
        Command::Sandbox {
            command:
                SandboxCommand::Up {
                    dir,
                    faster,
                    time_scale,
                },
        } => sandbox::up(&dir, faster, time_scale).await,
    }
}

/// Opens the event log of a data directory.
pub fn open_log(data_dir: &Path) -> anyhow::Result<Arc<DurableLog>> {
    let log = waymark_engine::open_log(data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    // What recovery found: the write in flight at a crash (informational), or damage.
    for finding in &log.backend().report().findings {
        if !finding.is_damage() {
            tracing::info!("event log in {}: {finding}", data_dir.display());
        }
    }
    for line in waymark_engine::log::EventLog::damage(log.as_ref()) {
        eprintln!("waymark: {line}");
    }
    Ok(log)
}

/// An engine with every workflow and activity of this binary.
pub fn engine(log: Arc<DurableLog>) -> Engine {
    waymark_workflows::register(Engine::builder(log)).build()
}

pub use crate::api::find_run;
pub use crate::env::check_note;

/// Where a command's data comes from: the daemon serving the data directory, or the directory.
pub enum Target {
    /// No daemon: the CLI opens the log itself (and holds its lock meanwhile).
    Direct(Arc<DurableLog>),
    /// A daemon answers on the directory's socket.
    Daemon(Client),
}

impl Target {
    /// The daemon if one answers, else the directory.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Target> {
        match Client::connect(data_dir).await? {
            Some(c) => Ok(Target::Daemon(c)),
            None => Ok(Target::Direct(open_log(data_dir)?)),
        }
    }
}

/// Exit code for how a run ended.
pub fn outcome_code(outcome: &RunOutcome) -> ExitCode {
    ExitCode::from(outcome_code_u8(outcome))
}

pub use waymark_cli::follow::{outcome_code as outcome_code_u8, outcome_line};

/// A replay report as the CLI prints it (and the daemon sends it).
pub fn replay_json(r: &ReplayReport) -> serde_json::Value {
    let (deterministic, verdict, recorded, new) = match &r.verdict {
        ReplayVerdict::Deterministic => (
            true,
            "deterministic: the code reproduces every recorded step and the outcome".to_owned(),
            None,
            None,
        ),
        ReplayVerdict::InProgress { next } => (
            true,
            format!("deterministic so far (the run is unfinished); next it would: {next}"),
            None,
            None,
        ),
        ReplayVerdict::Diverged(SuspendReason::Nondeterminism {
            position,
            recorded,
            new,
        }) => (
            false,
            format!("NOT deterministic at command {position}:"),
            Some(recorded.clone()),
            Some(new.clone()),
        ),
        ReplayVerdict::Diverged(reason @ SuspendReason::WorkflowPanicked { .. }) => {
            (false, reason.to_string(), None, None)
        }
        ReplayVerdict::OutcomeDiffers { recorded, replayed } => (
            false,
            "NOT deterministic: the outcome differs".to_owned(),
            Some(recorded.clone()),
            Some(replayed.clone()),
        ),
    };
    serde_json::json!({
        "run": r.run.to_string(), "workflow": r.workflow, "version": r.version, "events": r.events,
        "positions": r.positions, "deterministic": deterministic, "verdict": verdict,
        "recorded": recorded, "new": new,
    })
}
