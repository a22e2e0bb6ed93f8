//! `ls`, `show`, `history`, `replay`, `verify`, `signal`, `attach`: looking at runs and talking
//! to them, through the daemon when one serves the data directory, else on the directory itself.

use std::path::Path;

use hyper::Method;
use waymark_engine::Payload;

use waymark_cli::api::{self, EventRow, RunList, SignalRequest, VerifyReport};
use waymark_cli::exit::{usage, ExitStatus};
use waymark_cli::paths::operator;
use waymark_cli::store::Store;
use waymark_cli::view::{self, mermaid, outcome_line, outcome_status, replay_json, Labels};

use super::target::{engine, Target};
use crate::args::{HistoryOutput, Output};

/// `waymark ls`.
pub async fn ls(
    data_dir: &Path,
    store: &Store,
    state: Option<&str>,
    workflow: Option<&str>,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    if let Some(s) = state {
        if !api::STATES.contains(&s) {
            return Err(usage(format!(
                "unknown state {s:?}; use one of {}",
                api::STATES.join(", ")
            )));
        }
    }
    let list: RunList = match Target::open(data_dir, store).await? {
        Target::Direct(log) => api::list(log.as_ref(), state, workflow)?,
        Target::Daemon(c) => {
            let mut q = Vec::new();
            if let Some(s) = state {
                q.push(format!("state={s}"));
            }
            if let Some(w) = workflow {
                q.push(format!("workflow={w}"));
            }
            c.json(Method::GET, &format!("/v1/runs?{}", q.join("&")), None)
                .await?
        }
    };
    for d in &list.damaged {
        eprintln!("waymark: damaged history: {d} (`waymark verify`)");
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&list.runs)?),
        Output::Text => {
            use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
            let mut table = Table::new();
            table
                .load_preset(UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_header(["RUN", "WORKFLOW", "STATE", "STARTED", "STARTED BY"]);
            let mut reasons = String::new();
            for r in &list.runs {
                if r.state == api::DAMAGED {
                    table.add_row([r.run.as_str(), "-", r.state.as_str(), "-", "-"]);
                    continue;
                }
                table.add_row([
                    r.run.clone(),
                    format!("{} v{}", r.workflow, r.version),
                    r.state.clone(),
                    r.started_at
                        .get(..19)
                        .unwrap_or(&r.started_at)
                        .replace('T', " "),
                    r.started_by.clone(),
                ]);
                if let Some(reason) = &r.reason {
                    reasons.push_str(&format!("{} {}: {reason}\n", r.run, r.state));
                }
            }
            print!("{table}\n{reasons}");
        }
    }
    Ok(ExitStatus::success_if(list.damaged.is_empty()))
}

/// `waymark show RUN`.
pub async fn show(
    data_dir: &Path,
    store: &Store,
    run: &str,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let v: serde_json::Value = match Target::open(data_dir, store).await? {
        Target::Direct(log) => api::show(log.as_ref(), api::find_run(log.as_ref(), run)?)?,
        Target::Daemon(c) => {
            c.json(Method::GET, &format!("/v1/runs/{run}"), None)
                .await?
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Text => {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            println!("run       {}", s("run"));
            println!("workflow  {} v{}", s("workflow"), v["version"]);
            println!(
                "state     {}{}",
                s("state"),
                if v["paused"].as_bool() == Some(true) {
                    " (paused)"
                } else {
                    ""
                }
            );
            println!("started   {} by {}", s("started_at"), s("started_by"));
            println!(
                "updated   {} ({} events, {:.1} s)",
                s("updated_at"),
                v["events"],
                v["duration_s"].as_f64().unwrap_or(0.0)
            );
            if let Some(c) = v["current_step"].as_str() {
                println!("current   {c}");
            }
            if let Some(reason) = v["reason"].as_str() {
                println!("reason    {reason}");
            }
            if let Some(o) = v["outcome"].as_str() {
                println!("outcome   {o}");
            }
            print!("{}", steps_table(&v));
        }
    }
    Ok(ExitStatus::Success)
}

/// `show`'s steps as a table, grouped under their runbook step (the checks before any change,
/// the nine steps, the compensation), each step's error under the table.
fn steps_table(v: &serde_json::Value) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Attribute, Cell, ContentArrangement, Table};
    let steps: Vec<&serde_json::Value> = v["steps"].as_array().into_iter().flatten().collect();
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["STEP", "STATUS", "ATTEMPTS", "TIME"]);
    let mut groups: Vec<String> = v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect();
    // Steps of an older daemon's answer (no groups) go under one heading.
    let ungrouped = "steps".to_owned();
    if steps.iter().any(|s| s["group"].as_str().is_none()) {
        groups.push(ungrouped.clone());
    }
    let mut errors = String::new();
    for g in &groups {
        let mine: Vec<&&serde_json::Value> = steps
            .iter()
            .filter(|s| s["group"].as_str().map_or(ungrouped.as_str(), |x| x) == g.as_str())
            .collect();
        if mine.is_empty() {
            table.add_row([Cell::new(g), Cell::new("-"), Cell::new(""), Cell::new("")]);
            continue;
        }
        let failed = mine.iter().any(|s| s["status"] == "failed");
        let done = mine.iter().all(|s| s["status"] == "completed");
        let status = if failed {
            "failed"
        } else if done {
            "completed"
        } else {
            "running"
        };
        let total: f64 = mine.iter().filter_map(|s| s["duration_s"].as_f64()).sum();
        table.add_row([
            Cell::new(g).add_attribute(Attribute::Bold),
            Cell::new(status).add_attribute(Attribute::Bold),
            Cell::new(format!("{} steps", mine.len())),
            Cell::new(format!("{total:.2} s")),
        ]);
        for s in mine {
            let label = s["label"].as_str().unwrap_or_default();
            table.add_row([
                format!("  {label}"),
                s["status"].as_str().unwrap_or_default().to_owned(),
                s["attempts"].to_string(),
                s["duration_s"]
                    .as_f64()
                    .map_or(String::new(), |d| format!("{d:.2} s")),
            ]);
            if let Some(e) = s["error"].as_str() {
                errors.push_str(&format!("error in {label}: {e}\n"));
            }
        }
    }
    format!("{table}\n{errors}")
}

/// `waymark history RUN`.
pub async fn history(
    data_dir: &Path,
    store: &Store,
    run: &str,
    output: HistoryOutput,
) -> anyhow::Result<ExitStatus> {
    let rows: Vec<EventRow> = match Target::open(data_dir, store).await? {
        Target::Direct(log) => api::history(log.as_ref(), api::find_run(log.as_ref(), run)?)?,
        Target::Daemon(c) => {
            c.json(Method::GET, &format!("/v1/runs/{run}/history"), None)
                .await?
        }
    };
    match output {
        HistoryOutput::Text => {
            let mut labels = Labels::default();
            for r in &rows {
                println!("{}", view::line(r.seq, r.at, &r.event, &mut labels));
            }
        }
        HistoryOutput::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        HistoryOutput::Mermaid => print!("{}", mermaid(rows.iter().map(|r| &r.event))),
    }
    Ok(ExitStatus::Success)
}

/// `waymark replay RUN`.
pub async fn replay(data_dir: &Path, store: &Store, run: &str) -> anyhow::Result<ExitStatus> {
    let v: serde_json::Value = match Target::open(data_dir, store).await? {
        Target::Direct(log) => {
            let id = api::find_run(log.as_ref(), run)?;
            replay_json(&engine(log).replay(id).await?)
        }
        Target::Daemon(c) => {
            c.json(Method::GET, &format!("/v1/runs/{run}/replay"), None)
                .await?
        }
    };
    println!(
        "run {} ({} v{}): {} events, {} commands replayed",
        v["run"].as_str().unwrap_or_default(),
        v["workflow"].as_str().unwrap_or_default(),
        v["version"],
        v["events"],
        v["positions"]
    );
    println!("{}", v["verdict"].as_str().unwrap_or_default());
    if let (Some(rec), Some(new)) = (v["recorded"].as_str(), v["new"].as_str()) {
        println!("  recorded: {rec}");
        println!("  code now: {new}");
    }
    Ok(ExitStatus::success_if(
        v["deterministic"].as_bool() == Some(true),
    ))
}

/// `waymark verify [RUN]`.
pub async fn verify(
    data_dir: &Path,
    store: &Store,
    run: Option<&str>,
) -> anyhow::Result<ExitStatus> {
    let report: VerifyReport = match Target::open(data_dir, store).await? {
        Target::Direct(log) => {
            let id = match run {
                Some(r) => Some(api::find_run(log.as_ref(), r)?),
                None => None,
            };
            api::verify(log.as_ref(), id)?
        }
        Target::Daemon(c) => {
            let q = run.map_or(String::new(), |r| format!("?run={r}"));
            c.json(Method::GET, &format!("/v1/verify{q}"), None).await?
        }
    };
    for f in &report.faults {
        println!("FAULT {f}");
    }
    println!(
        "{} runs, {} events verified (checksums and hash chains); {} with faults",
        report.runs,
        report.events,
        report.faults.len()
    );
    Ok(ExitStatus::success_if(report.faults.is_empty()))
}

/// `waymark signal RUN SIGNAL`.
pub async fn signal(
    data_dir: &Path,
    store: &Store,
    run: &str,
    name: &str,
    reason: Option<String>,
) -> anyhow::Result<ExitStatus> {
    match Target::open(data_dir, store).await? {
        Target::Direct(log) => {
            let id = api::find_run(log.as_ref(), run)?;
            let payload = Payload::encode(&reason.unwrap_or_default())?;
            let e = engine(log);
            e.signal(id, name, payload, &operator()).await?;
            if name == "cancel" {
                // A cancel of a suspended or version-refused run compensates from the history
                // right here (no daemon runs): see it through rather than exit half-way.
                if let Ok(outcome) = e.wait(id).await {
                    println!("{}", outcome_line(id, &outcome));
                    return Ok(outcome_status(&outcome));
                }
            }
            println!("signal {name} recorded for run {id}; no daemon runs here, so it takes effect when the run is resumed (`waymark resume {id}`)");
        }
        Target::Daemon(c) => {
            let v: serde_json::Value = c
                .json(
                    Method::POST,
                    &format!("/v1/runs/{run}/signal"),
                    Some(serde_json::to_value(SignalRequest {
                        signal: name.to_owned(),
                        reason,
                    })?),
                )
                .await?;
            println!(
                "signal {name} delivered to run {}",
                v["run"].as_str().unwrap_or(run)
            );
        }
    }
    Ok(ExitStatus::Success)
}

/// `waymark resolve RUN --note "..."`: frees the cluster of a run that ended with its
/// compensation incomplete, journaling who resolved it and the note.
pub async fn resolve(
    data_dir: &Path,
    store: &Store,
    run: &str,
    note: &str,
) -> anyhow::Result<ExitStatus> {
    api::check_note(note)?;
    let id = match Target::open(data_dir, store).await? {
        Target::Direct(log) => {
            let id = api::find_run(log.as_ref(), run)?;
            engine(log).resolve(id, &operator(), note).await?;
            id.to_string()
        }
        Target::Daemon(c) => {
            let v: serde_json::Value = c
                .json(
                    Method::POST,
                    &format!("/v1/runs/{run}/resolve"),
                    Some(serde_json::to_value(api::ResolveRequest {
                        note: note.to_owned(),
                    })?),
                )
                .await?;
            v["run"].as_str().unwrap_or(run).to_owned()
        }
    };
    println!("run {id} resolved: its cluster is free for the next run");
    Ok(ExitStatus::Success)
}
