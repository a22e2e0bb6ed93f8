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
    refuse_if_daemon(
        data_dir,
        "start the run there with `waymark start` (it survives your disconnecting)",
    )
    .await?;
    let log = open_log(data_dir)?;
    // We hold the data directory's lock: nothing can start a run between this check and ours.
    let locks =
        crate::api::ClusterLocks::scan(log.as_ref(), &mut std::collections::BTreeSet::new());
    if let Some(holder) = locks.holder(&inv.cluster.name) {
        return Err(anyhow::Error::new(crate::env::Exit {
            code: 1,
            message: holder.explain(&inv.cluster.name),
        }));
    }
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
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        report.resumed
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
    let mismatches = plan.mismatches();
    if mismatches.is_empty() {
        return Ok(ExitCode::SUCCESS);
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
    Ok(ExitCode::from(1))
}

/// `waymark start WORKFLOW --inventory FILE [--detach]`: through the daemon.
pub async fn start(
    data_dir: &Path,
    workflow: &str,
    inventory: &Path,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    check_workflow(workflow)?;
    let inv = Inventory::load(inventory)?;
    let Some(client) = crate::client::Client::connect(data_dir).await? else {
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
            Some(serde_json::json!({ "workflow": workflow, "inventory": inv })),
        )
        .await?;
    let run = v["run"].as_str().unwrap_or_default().to_owned();
    println!("{run}");
    if detach {
        eprintln!("run {run} started in the daemon; `waymark attach {run}` follows it");
        return Ok(ExitCode::SUCCESS);
    }
    super::inspect::attach_daemon(&client, &run).await
}

/// `waymark attach RUN`.
pub async fn attach(data_dir: &Path, run: &str) -> anyhow::Result<ExitCode> {
    if let Some(c) = crate::client::Client::connect(data_dir).await? {
        super::inspect::attach_daemon(&c, run).await
    } else {
        eprintln!("no daemon serves {}: showing the history; `waymark resume {run}` continues an unfinished run", data_dir.display());
        super::inspect::history(data_dir, run, crate::HistoryOutput::Text).await
    }
}

/// Refuses foreground work while a daemon owns the directory.
pub async fn refuse_if_daemon(data_dir: &Path, what: &str) -> anyhow::Result<()> {
    if crate::client::Client::connect(data_dir).await?.is_some() {
        return Err(usage(format!(
            "a daemon serves {}: {what}",
            data_dir.display()
        )));
    }
    Ok(())
}
