//! `run`, `resume`, `plan`: starting and continuing runs in the foreground, and planning.

use std::path::Path;
use std::process::ExitCode;

use waymark_engine::Payload;
use waymark_workflows::{Inventory, YbMaintenance};

use super::{engine, find_run, open_log, outcome_code, outcome_line};
use crate::display::follow;
use crate::env::{operator, usage};
use crate::Output;

fn check_workflow(workflow: &str) -> anyhow::Result<()> {
    use waymark_engine::Workflow;
    if workflow == YbMaintenance::NAME {
        Ok(())
    } else {
        Err(usage(format!(
            "unknown workflow {workflow:?}; this binary has: {}",
            YbMaintenance::NAME
        )))
    }
}

/// `waymark run WORKFLOW --inventory FILE`.
pub async fn run(data_dir: &Path, workflow: &str, inventory: &Path) -> anyhow::Result<ExitCode> {
    check_workflow(workflow)?;
    let inv = Inventory::load(inventory)?;
    let log = open_log(data_dir)?;
    let engine = engine(log);
    let input = Payload::encode(&inv)?;
    let run = engine.start_named(workflow, input, &operator()).await?;
    println!("{run}");
    eprintln!("run {run} started; history in {}", data_dir.display());
    let outcome = follow(&engine, run).await?;
    println!("{}", outcome_line(run, &outcome));
    Ok(outcome_code(&outcome))
}

/// `waymark resume [RUN]`.
pub async fn resume(data_dir: &Path, run: Option<&str>) -> anyhow::Result<ExitCode> {
    let log = open_log(data_dir)?;
    let engine = engine(log.clone());
    let runs = match run {
        Some(text) => {
            let id = find_run(log.as_ref(), text)?;
            engine.resume(id)?;
            vec![id]
        }
        None => {
            let report = engine.resume_all()?;
            for (r, e) in &report.refused {
                eprintln!("waymark: run {r} not resumed: {e}");
            }
            if report.resumed.is_empty() {
                eprintln!("no unfinished run to resume in {}", data_dir.display());
                return Ok(if report.refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) });
            }
            report.resumed
        }
    };
    let mut code = ExitCode::SUCCESS;
    for (i, run) in runs.iter().enumerate() {
        eprintln!("resuming run {run} ({} of {})", i + 1, runs.len());
        // Other runs go on meanwhile; this follows them one after the other.
        let outcome = follow(&engine, *run).await?;
        println!("{}", outcome_line(*run, &outcome));
        if outcome_code(&outcome) != ExitCode::SUCCESS {
            code = outcome_code(&outcome);
        }
        if matches!(outcome, waymark_engine::RunOutcome::Stopped(_)) {
            break;
        }
    }
    Ok(code)
}

/// `waymark plan WORKFLOW --inventory FILE`.
pub async fn plan(workflow: &str, inventory: &Path, output: Output) -> anyhow::Result<ExitCode> {
    check_workflow(workflow)?;
    let inv = Inventory::load(inventory)?;
    let plan = waymark_workflows::plan::plan(&inv).await;
    match output {
        Output::Text => print!("{plan}"),
        Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
    }
    Ok(ExitCode::SUCCESS)
}
