//! `run`, `resume`, `plan`: starting and continuing runs in the foreground, and planning.

use std::path::Path;

use waymark_engine::Payload;
use waymark_workflows::{Inventory, YbMaintenance};

use waymark_cli::api::{find_run, ClusterLocks, StartRequest};
use waymark_cli::client::Client;
use waymark_cli::exit::{usage, Exit, ExitStatus};
use waymark_cli::paths::{open_log, operator};
use waymark_cli::view::{outcome_line, outcome_status};

use super::target::engine;
use super::watch::{attach_daemon, follow, Display};
use crate::args::{HistoryOutput, Output};

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
pub async fn run(
    data_dir: &Path,
    workflow: &str,
    inventory: &Path,
    display: Display,
) -> anyhow::Result<ExitStatus> {
    check_workflow(workflow)?;
    let inv = Inventory::load(inventory)?;
    refuse_if_daemon(
        data_dir,
        "start the run there with `waymark start` (it survives your disconnecting)",
    )
    .await?;
    let log = open_log(data_dir)?;
    // We hold the data directory's lock: nothing can start a run between this check and ours.
    let locks = ClusterLocks::scan(log.as_ref(), &mut std::collections::BTreeSet::new());
    if let Some(holder) = locks.holder(&inv.cluster.name) {
        return Err(Exit::error(
            ExitStatus::Failure,
            holder.explain(&inv.cluster.name),
        ));
    }
    let engine = engine(log);
    let input = Payload::encode(&inv)?;
    let run = engine.start_named(workflow, input, &operator()).await?;
    println!("{run}");
    eprintln!("run {run} started; history in {}", data_dir.display());
    let outcome = follow(&engine, run, display).await?;
    println!("{}", outcome_line(run, &outcome));
    Ok(outcome_status(&outcome))
}

/// `waymark resume [RUN]`.
pub async fn resume(
    data_dir: &Path,
    run: Option<&str>,
    display: Display,
) -> anyhow::Result<ExitStatus> {
    refuse_if_daemon(
        data_dir,
        "the daemon resumes unfinished runs itself; `waymark attach RUN` follows one",
    )
    .await?;
    let log = open_log(data_dir)?;
    let engine = engine(log.clone());
    let runs = if let Some(text) = run {
        let id = find_run(log.as_ref(), text)?;
        engine.resume(id)?;
        vec![id]
    } else {
        let report = engine.resume_all()?;
        for (r, e) in &report.refused {
            eprintln!("waymark: run {r} not resumed: {e}");
        }
        if report.resumed.is_empty() {
            eprintln!("no unfinished run to resume in {}", data_dir.display());
            return Ok(if report.refused.is_empty() {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            });
        }
        report.resumed
    };
    let mut code = ExitStatus::Success;
    for (i, run) in runs.iter().enumerate() {
        eprintln!("resuming run {run} ({} of {})", i + 1, runs.len());
        // Other runs go on meanwhile; this follows them one after the other.
        let outcome = follow(&engine, *run, display).await?;
        println!("{}", outcome_line(*run, &outcome));
        if outcome_status(&outcome) != ExitStatus::Success {
            code = outcome_status(&outcome);
        }
        if matches!(outcome, waymark_engine::RunOutcome::Stopped(_)) {
            break;
        }
    }
    Ok(code)
}

/// `waymark plan WORKFLOW --inventory FILE`.
pub async fn plan(workflow: &str, inventory: &Path, output: Output) -> anyhow::Result<ExitStatus> {
    check_workflow(workflow)?;
    let inv = Inventory::load(inventory)?;
    let plan = waymark_workflows::plan::plan(&inv).await;
    match output {
        Output::Text => print!("{plan}"),
        Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
    }
    let mismatches = plan.mismatches();
    if mismatches.is_empty() {
        return Ok(ExitStatus::Success);
    }
    for a in &mismatches {
        eprintln!(
            "waymark: plan: {}: {} (cluster {})",
            a.action,
            waymark_workflows::plan::NOT_IN_CLUSTER,
            plan.cluster
        );
    }
    eprintln!(
        "waymark: {} the inventory ({}) disagrees with the cluster: fix its [[yugabyte.nodes]] \
         before running",
        mismatches.len(),
        inventory.display()
    );
    Ok(ExitStatus::Failure)
}

/// `waymark start WORKFLOW --inventory FILE [--detach]`: through the daemon.
pub async fn start(
    data_dir: &Path,
    workflow: &str,
    inventory: &Path,
    detach: bool,
    display: Display,
) -> anyhow::Result<ExitStatus> {
    check_workflow(workflow)?;
    let inv = Inventory::load(inventory)?;
    let Some(client) = Client::connect(data_dir).await? else {
        return Err(usage(format!(
            "no daemon serves {}: start one (`waymark daemon --data-dir {}`), or run in the foreground with `waymark run`",
            data_dir.display(),
            data_dir.display()
        )));
    };
    let v: serde_json::Value = client
        .json(
            hyper::Method::POST,
            "/v1/runs",
            Some(serde_json::to_value(StartRequest {
                workflow: workflow.to_owned(),
                inventory: inv,
            })?),
        )
        .await?;
    let run = v["run"].as_str().unwrap_or_default().to_owned();
    println!("{run}");
    if detach {
        eprintln!("run {run} started in the daemon; `waymark attach {run}` follows it");
        return Ok(ExitStatus::Success);
    }
    attach_daemon(&client, &run, display).await
}

/// `waymark attach RUN`.
pub async fn attach(
    data_dir: &Path,
    store: &waymark_cli::store::Store,
    run: &str,
    display: Display,
) -> anyhow::Result<ExitStatus> {
    if let Some(c) = Client::connect(data_dir).await? {
        attach_daemon(&c, run, display).await
    } else {
        eprintln!("no daemon serves {}: showing the history; `waymark resume {run}` continues an unfinished run", data_dir.display());
        super::inspect::history(data_dir, store, run, HistoryOutput::Text).await
    }
}

/// Refuses foreground work while a daemon owns the directory.
pub async fn refuse_if_daemon(data_dir: &Path, what: &str) -> anyhow::Result<()> {
    if Client::connect(data_dir).await?.is_some() {
        return Err(usage(format!(
            "a daemon serves {}: {what}",
            data_dir.display()
        )));
    }
    Ok(())
}
