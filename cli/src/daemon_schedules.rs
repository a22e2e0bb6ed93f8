//! The daemon's schedules: the API routes, and the scheduler loop that asks the pure schedule
//! core (`waymark_cli::schedule`) what to start at each tick and starts it under the cluster lock.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path as AxPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use waymark_cli::schedule::{Decision, NewSchedule, ScheduleBook};
use waymark_workflows::Inventory;

use crate::daemon::{Daemon, Peer};

/// What `schedule add` sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddBody {
    /// Name.
    pub name: String,
    /// Workflow.
    pub workflow: String,
    /// Absolute inventory path.
    pub inventory: PathBuf,
    /// 5-field cron.
    pub cron: String,
    /// Window text (`30m`), optional.
    pub window: Option<String>,
    /// `skip` or `queue`.
    pub overlap: String,
    /// `none` or `latest`.
    pub catch_up: String,
}

/// Turns an `add` request into the core's input, checking the inventory (its cluster is the lock key).
pub fn new_schedule(b: &AddBody) -> anyhow::Result<NewSchedule> {
    let inv = Inventory::load(&b.inventory)?;
    let window = match &b.window {
        Some(w) => {
            let d = waymark_cli::schedule::parse_duration(w)
                .map_err(|e| crate::env::usage(e.to_string()))?;
            waymark_cli::schedule::validate_window(d)
                .map_err(|e| crate::env::usage(e.to_string()))?;
            Some(d)
        }
        None => None,
    };
    Ok(NewSchedule {
        name: b.name.clone(),
        workflow: b.workflow.clone(),
        inventory: b.inventory.clone(),
        cluster: inv.cluster.name,
        cron: b.cron.clone(),
        window,
        overlap: b
            .overlap
            .parse()
            .map_err(|e: waymark_cli::schedule::Error| crate::env::usage(e.to_string()))?,
        catch_up: b
            .catch_up
            .parse()
            .map_err(|e: waymark_cli::schedule::Error| crate::env::usage(e.to_string()))?,
    })
}

/// One schedule as listings show it.
pub fn rows(book: &ScheduleBook) -> Vec<serde_json::Value> {
    let now = Utc::now();
    book.schedules
        .values()
        .map(|s| {
            serde_json::json!({
                "name": s.name, "workflow": s.workflow, "inventory": s.inventory, "cluster": s.cluster,
                "cron": s.cron.as_str(), "window": waymark_cli::schedule::format_duration(s.effective_window()),
                "overlap": s.overlap.as_str(), "catch_up": s.catch_up.as_str(), "paused": s.paused,
                "next": s.next_fire_time(now).map(|t| t.to_rfc3339()),
                "queued": book.queued.iter().filter(|q| q.schedule == s.name).count(),
                "last_failure": s.last_failure.as_ref().map(|f| serde_json::json!({
                    "at": f.at.to_rfc3339(), "fire_time": f.fire_time.to_rfc3339(), "message": f.message,
                })),
            })
        })
        .collect()
}

fn bad(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": e.to_string(), "code": 2 })),
    )
        .into_response()
}

fn save(d: &Daemon, book: &ScheduleBook) -> Result<(), Response> {
    book.save(d.schedules_path()).map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": e.to_string(), "code": 3 })),
        )
            .into_response()
    })
}

async fn list(State(d): State<Arc<Daemon>>) -> Response {
    Json(rows(&d.schedules().lock().expect("schedules lock"))).into_response()
}

/// A TCP client may only name an inventory inside `--inventory-dir` (the daemon must not become
/// a way to read, or probe for, any file its user can read). Unix-socket peers run as the
/// daemon's user (or root) and may name any file.
fn check_inventory_path(d: &Daemon, p: &Peer, path: &std::path::Path) -> Result<(), Response> {
    if p.unix {
        return Ok(());
    }
    let refuse = |why: String| {
        Err((
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": why, "code": 2 })),
        )
            .into_response())
    };
    let Some(dir) = d.inventory_dir() else {
        return refuse(
            "TCP clients may not name inventory files: start the daemon with --inventory-dir DIR \
             and put the inventory there, or add the schedule through the unix socket"
                .to_owned(),
        );
    };
    let lexically_inside = path.is_absolute()
        && path.starts_with(dir)
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    // Symbolic links are followed before the final check.
    if lexically_inside && std::fs::canonicalize(path).is_ok_and(|c| c.starts_with(dir)) {
        return Ok(());
    }
    refuse(format!(
        "TCP clients may only name inventory files inside {} (--inventory-dir)",
        dir.display()
    ))
}

async fn add(
    State(d): State<Arc<Daemon>>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Json(b): Json<AddBody>,
) -> Response {
    if let Err(r) = check_inventory_path(&d, &p, &b.inventory) {
        return r;
    }
    let new = match new_schedule(&b) {
        Ok(n) => n,
        Err(e) => return bad(format!("{e:#}")),
    };
    let mut book = d.schedules().lock().expect("schedules lock");
    if let Err(e) = book.add(new, Utc::now()) {
        return bad(e);
    }
    if let Err(r) = save(&d, &book) {
        return r;
    }
    tracing::info!(schedule = %b.name, by = %p.operator, "schedule added");
    Json(serde_json::json!({ "name": b.name })).into_response()
}

async fn remove(State(d): State<Arc<Daemon>>, AxPath(name): AxPath<String>) -> Response {
    let mut book = d.schedules().lock().expect("schedules lock");
    if let Err(e) = book.remove(&name) {
        return bad(e);
    }
    if let Err(r) = save(&d, &book) {
        return r;
    }
    Json(serde_json::json!({ "name": name })).into_response()
}

async fn pause(
    State(d): State<Arc<Daemon>>,
    AxPath((name, verb)): AxPath<(String, String)>,
) -> Response {
    let paused = match verb.as_str() {
        "pause" => true,
        "unpause" => false,
        other => return bad(format!("unknown verb {other:?}: use pause or unpause")),
    };
    let mut book = d.schedules().lock().expect("schedules lock");
    if let Err(e) = book.set_paused(&name, paused, Utc::now()) {
        return bad(e);
    }
    if let Err(r) = save(&d, &book) {
        return r;
    }
    Json(serde_json::json!({ "name": name, "paused": paused })).into_response()
}

/// Schedule routes.
pub fn routes() -> axum::Router<Arc<Daemon>> {
    axum::Router::new()
        .route("/v1/schedules", get(list).post(add))
        .route("/v1/schedules/{name}", delete(remove))
        .route("/v1/schedules/{name}/{verb}", post(pause))
}

/// Every `tick`: asks the schedule core what to do now and starts what is due. A fire time is
/// saved as handled only after its run started; a failed start is recorded on its schedule and
/// kept (see `ScheduleBook::start_failed`).
pub async fn scheduler(
    d: Arc<Daemon>,
    tick: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tick_once(&d).await;
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn tick_once(d: &Daemon) {
    let known: Vec<String> = d
        .schedules()
        .lock()
        .expect("schedules lock")
        .schedules
        .values()
        .map(|s| s.cluster.clone())
        .collect();
    let busy = d.busy_clusters(known).await;
    let decisions = {
        let mut book = d.schedules().lock().expect("schedules lock");
        let decisions = book.tick(Utc::now(), &busy);
        decisions
            .into_iter()
            .map(|dec| {
                let target = book
                    .schedules
                    .get(dec.schedule())
                    .map(|s| (s.workflow.clone(), s.inventory.clone()));
                (dec, target)
            })
            .collect::<Vec<_>>()
    };
    if decisions.is_empty() {
        return;
    }
    let mut failures = Vec::new();
    for (decision, target) in decisions {
        let Decision::Start {
            schedule,
            fire_time,
        } = &decision
        else {
            tracing::info!("{decision}");
            continue;
        };
        let Some((workflow, inventory)) = target else {
            continue;
        };
        let by = format!("schedule {schedule} (fire time {})", fire_time.to_rfc3339());
        let started = match Inventory::load(&inventory) {
            Ok(inv) => d.start_scheduled(&workflow, &inv, &by, *fire_time).await,
            Err(e) => Err((false, format!("inventory {}: {e}", inventory.display()))),
        };
        match started {
            Ok(run) => tracing::info!("schedule {schedule} started run {run}"),
            Err((busy, message)) => {
                tracing::warn!(
                    "schedule {schedule}: fire time {fire_time} could not start: {message}"
                );
                failures.push((schedule.clone(), *fire_time, message, busy));
            }
        }
    }
    let mut book = d.schedules().lock().expect("schedules lock");
    for (schedule, fire_time, message, busy) in failures {
        let what = book.start_failed(&schedule, fire_time, Utc::now(), &message, busy);
        tracing::info!("{what}");
    }
    if let Err(e) = book.save(d.schedules_path()) {
        tracing::error!("cannot save schedules: {e}");
    }
}
