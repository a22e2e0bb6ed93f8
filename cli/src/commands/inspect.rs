//! `ls`, `show`, `history`, `replay`, `verify`, `signal`: looking at runs and talking to them.

use std::path::Path;
use std::process::ExitCode;

use waymark_engine::core::RunState;
use waymark_engine::log::EventLog;
use waymark_engine::runtime::ReplayVerdict;
use waymark_engine::Payload;

use super::{engine, find_run, open_log};
use crate::display::{event_line, mermaid, summary, Labels};
use crate::env::{operator, usage};
use crate::{HistoryOutput, Output};

/// `waymark ls`.
pub fn ls(data_dir: &Path, state: Option<&str>, workflow: Option<&str>, output: Output) -> anyhow::Result<ExitCode> {
    const STATES: [&str; 6] = ["running", "compensating", "suspended", "completed", "failed", "cancelled"];
    if let Some(s) = state {
        if !STATES.contains(&s) {
            return Err(usage(format!("unknown state {s:?}; use one of {}", STATES.join(", "))));
        }
    }
    let log = open_log(data_dir)?;
    let mut rows = Vec::new();
    let mut damaged = 0;
    for run in log.runs()? {
        let st = match log.read(run).map_err(anyhow::Error::from).and_then(|r| Ok(RunState::from_records(&r)?)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("waymark: run {run}: {e:#} (`waymark verify {run}`)");
                damaged += 1;
                continue;
            }
        };
        if state.is_some_and(|s| s != st.status.name()) || workflow.is_some_and(|w| w != st.workflow) {
            continue;
        }
        rows.push(st);
    }
    match output {
        Output::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "run": s.run.to_string(), "workflow": s.workflow, "version": s.version,
                        "state": s.status.name(), "started_by": s.started_by,
                        "started_at": s.started_at.to_rfc3339(), "updated_at": s.updated_at.to_rfc3339(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            println!("{:<36}  {:<16} {:<13} {:<20} STARTED BY", "RUN", "WORKFLOW", "STATE", "STARTED");
            for s in &rows {
                println!(
                    "{:<36}  {:<16} {:<13} {:<20} {}",
                    s.run,
                    format!("{} v{}", s.workflow, s.version),
                    s.status.name(),
                    s.started_at.format("%Y-%m-%d %H:%M:%S"),
                    s.started_by
                );
            }
        }
    }
    Ok(if damaged > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `waymark show RUN`.
pub fn show(data_dir: &Path, run: &str, output: Output) -> anyhow::Result<ExitCode> {
    let log = open_log(data_dir)?;
    let id = find_run(log.as_ref(), run)?;
    let records = log.read(id)?;
    let st = RunState::from_records(&records)?;
    let v = summary(&st, &records);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Text => {
            println!("run       {}", v["run"].as_str().unwrap_or_default());
            println!("workflow  {} v{}", st.workflow, st.version);
            println!("state     {}{}", st.status.name(), if st.paused { " (paused)" } else { "" });
            println!("started   {} by {}", st.started_at.format("%Y-%m-%d %H:%M:%S%.3f"), st.started_by);
            println!("updated   {} ({} events)", st.updated_at.format("%Y-%m-%d %H:%M:%S%.3f"), st.events);
            if let Some(c) = v["current_step"].as_str() {
                println!("current   {c}");
            }
            if let Some(o) = v["outcome"].as_str() {
                println!("outcome   {o}");
            }
            println!("steps:");
            for s in v["steps"].as_array().into_iter().flatten() {
                println!(
                    "  {:<10} {:<60} attempts {:<2} {}{}",
                    s["status"].as_str().unwrap_or_default(),
                    s["label"].as_str().unwrap_or_default(),
                    s["attempts"],
                    s["duration_s"].as_f64().map_or(String::new(), |d| format!("{d:.2} s")),
                    s["error"].as_str().map_or(String::new(), |e| format!("  error: {e}")),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `waymark history RUN`.
pub fn history(data_dir: &Path, run: &str, output: HistoryOutput) -> anyhow::Result<ExitCode> {
    let log = open_log(data_dir)?;
    let id = find_run(log.as_ref(), run)?;
    let records = log.read(id)?;
    match output {
        HistoryOutput::Text => {
            let mut labels = Labels::default();
            for r in &records {
                println!("{}", event_line(r, &mut labels));
            }
        }
        HistoryOutput::Json => {
            let v: Vec<_> = records
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "seq": r.seq, "at": r.at.to_rfc3339(), "kind": r.event.kind(),
                        "event": r.event, "hash": hex(&r.hash),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        HistoryOutput::Mermaid => print!("{}", mermaid(&records)),
    }
    Ok(ExitCode::SUCCESS)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `waymark replay RUN`.
pub async fn replay(data_dir: &Path, run: &str) -> anyhow::Result<ExitCode> {
    let log = open_log(data_dir)?;
    let id = find_run(log.as_ref(), run)?;
    let report = engine(log).replay(id).await?;
    println!(
        "run {} ({} v{}): {} events, {} commands replayed",
        report.run, report.workflow, report.version, report.events, report.positions
    );
    match report.verdict {
        ReplayVerdict::Deterministic => {
            println!("deterministic: the code reproduces every recorded step and the outcome");
            Ok(ExitCode::SUCCESS)
        }
        ReplayVerdict::InProgress { next } => {
            println!("deterministic so far (the run is unfinished); next it would: {next}");
            Ok(ExitCode::SUCCESS)
        }
        ReplayVerdict::Diverged(waymark_engine::event::SuspendReason::Nondeterminism { position, recorded, new }) => {
            println!("NOT deterministic at command {position}:");
            println!("  recorded: {recorded}");
            println!("  code now: {new}");
            Ok(ExitCode::from(1))
        }
        ReplayVerdict::OutcomeDiffers { recorded, replayed } => {
            println!("NOT deterministic: the outcome differs");
            println!("  recorded: {recorded}");
            println!("  code now: {replayed}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `waymark verify [RUN]`.
pub fn verify(data_dir: &Path, run: Option<&str>) -> anyhow::Result<ExitCode> {
    let log = open_log(data_dir)?;
    let runs = match run {
        Some(r) => vec![find_run(log.as_ref(), r)?],
        None => log.runs()?,
    };
    let mut faults = 0;
    let mut events = 0;
    for r in &runs {
        match log.read(*r) {
            Ok(recs) => events += recs.len(),
            Err(e) => {
                faults += 1;
                println!("FAULT {e}");
            }
        }
    }
    println!(
        "{} runs, {events} events verified (checksums and hash chains); {faults} with faults",
        runs.len()
    );
    Ok(if faults == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `waymark signal RUN SIGNAL`.
pub async fn signal(data_dir: &Path, run: &str, name: &str, reason: Option<String>) -> anyhow::Result<ExitCode> {
    let log = open_log(data_dir)?;
    let id = find_run(log.as_ref(), run)?;
    let engine = engine(log);
    let payload = Payload::encode(&reason.unwrap_or_default())?;
    engine.signal(id, name, payload, &operator()).await?;
    println!("signal {name} recorded for run {id}; it takes effect when the run is resumed (`waymark resume {id}`)");
    Ok(ExitCode::SUCCESS)
}
