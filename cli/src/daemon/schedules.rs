//! The daemon's schedules: the API routes, and the scheduler loop that asks the pure schedule
//! core ([`crate::schedule`]) what to start at each tick and starts it under the cluster lock.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path as AxPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json;
use chrono::Utc;
use waymark_workflows::Inventory;

use super::peer::Peer;
use super::state::{Daemon, StartError};
use crate::api::{new_schedule, schedule_rows, ScheduleAddRequest};
use crate::exit::ExitStatus;
use crate::schedule::{Decision, ScheduleBook};

fn bad(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": e.to_string(), "code": ExitStatus::Usage.code() })),
    )
        .into_response()
}

fn save(d: &Daemon, book: &ScheduleBook) -> Result<(), Response> {
    book.save(&d.schedules_path).map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(
                serde_json::json!({ "error": e.to_string(), "code": ExitStatus::Unusable.code() }),
            ),
        )
            .into_response()
    })
}

async fn list(State(d): State<Arc<Daemon>>) -> Response {
    Json(schedule_rows(&d.schedules.lock().expect("schedules lock"))).into_response()
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
            Json(serde_json::json!({ "error": why, "code": ExitStatus::Usage.code() })),
        )
            .into_response())
    };
    let Some(dir) = d.inventory_dir.as_deref() else {
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
    Json(b): Json<ScheduleAddRequest>,
) -> Response {
    if let Err(r) = check_inventory_path(&d, &p, &b.inventory) {
        return r;
    }
    if !p.unix && !b.notify.is_empty() {
        // A webhook names a file or a variable of the daemon's: not for TCP clients to pick.
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({
                "error": "TCP clients may not name webhooks (their URL files and variables are the daemon's): add the schedule through the unix socket",
                "code": ExitStatus::Usage.code(),
            })),
        )
            .into_response();
    }
    // Checked where it will be read: the daemon's files and environment.
    for webhook in &b.notify {
        if let Err(e) = webhook.read_url() {
            return bad(format!("--notify: {e}"));
        }
    }
    let new = match new_schedule(&b) {
        Ok(n) => n,
        Err(e) => return bad(format!("{e:#}")),
    };
    let mut book = d.schedules.lock().expect("schedules lock");
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
    let mut book = d.schedules.lock().expect("schedules lock");
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
    let mut book = d.schedules.lock().expect("schedules lock");
    if let Err(e) = book.set_paused(&name, paused, Utc::now()) {
        return bad(e);
    }
    if let Err(r) = save(&d, &book) {
        return r;
    }
    Json(serde_json::json!({ "name": name, "paused": paused })).into_response()
}

/// Schedule routes.
pub(super) fn routes() -> axum::Router<Arc<Daemon>> {
    axum::Router::new()
        .route("/v1/schedules", get(list).post(add))
        .route("/v1/schedules/{name}", delete(remove))
        .route("/v1/schedules/{name}/{verb}", post(pause))
}

/// The daemon's notifier ([`crate::notify::run_notifier`]): its own webhooks for every run, and
/// a schedule's for the runs that schedule started; journal `DATA_DIR/notifications.jsonl`.
pub(super) async fn notifier(
    d: Arc<Daemon>,
    webhooks: Vec<crate::notify::Webhook>,
    tick: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use crate::notify::{run_notifier, RetrySettings, RunFacts, RunTargets, Settings};
    let journal = d.schedules_path.with_file_name("notifications.jsonl");
    let book = d.clone();
    let targets: RunTargets =
        Arc::new(move |facts: &RunFacts| book.schedule_webhooks(&facts.started_by));
    let settings = Settings {
        webhooks,
        journal,
        tick: tick.min(Duration::from_secs(1)),
        retry: RetrySettings::default(),
    };
    run_notifier(d.log.clone(), settings, targets, stop).await;
}

/// Every `tick`: asks the schedule core what to do now and starts what is due. A fire time is
/// saved as handled only after its run started; a failed start is recorded on its schedule and
/// kept (see `ScheduleBook::start_failed`).
pub(super) async fn scheduler(
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
        .schedules
        .lock()
        .expect("schedules lock")
        .schedules
        .values()
        .map(|s| s.cluster.clone())
        .collect();
    let busy = d.busy_clusters(known).await;
    let decisions = {
        let mut book = d.schedules.lock().expect("schedules lock");
        let decisions = book.tick(Utc::now(), &busy);
        decisions
            .into_iter()
            .map(|dec| {
                let target = book.schedules.get(dec.schedule()).map(|s| {
                    let closes_at = match &dec {
                        Decision::Start { fire_time, .. } => s.window_closes_at(*fire_time),
                        _ => Utc::now(),
                    };
                    (s.workflow.clone(), s.inventory.clone(), closes_at)
                });
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
        let Some((workflow, inventory, closes_at)) = target else {
            continue;
        };
        let by = format!("schedule {schedule} (fire time {})", fire_time.to_rfc3339());
        let started = match Inventory::load(&inventory) {
            Ok(inv) => d
                .start_scheduled(&workflow, &inv, &by, *fire_time, closes_at)
                .await
                .map_err(|e| match e {
                    StartError::ClusterHeld(m) => (true, m),
                    StartError::Other(_, m) => (false, m),
                }),
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
    let mut book = d.schedules.lock().expect("schedules lock");
    for (schedule, fire_time, message, busy) in failures {
        let what = book.start_failed(&schedule, fire_time, Utc::now(), &message, busy);
        tracing::info!("{what}");
    }
    if let Err(e) = book.save(&d.schedules_path) {
        tracing::error!("cannot save schedules: {e}");
    }
}
