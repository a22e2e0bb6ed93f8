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

fn unusable(message: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": message.to_string(), "code": ExitStatus::Unusable.code() })),
    )
        .into_response()
}

/// How the shared book is named in errors.
const SHARED_BOOK: &str = "the store's schedule book (table waymark_schedules)";

/// How many times an edit or a tick of the shared book is redone when other daemons keep saving
/// first, before it gives up (the next tick, or the operator, tries again).
const SHARED_BOOK_ATTEMPTS: usize = 20;

/// The shared schedule book and its version (`None`: no daemon saved one yet, an empty book).
pub(super) fn load_shared(
    store: &waymark_store_pg::PgBackend,
) -> Result<(Option<i64>, ScheduleBook), String> {
    match store
        .schedule_book()
        .map_err(|e| format!("reading {SHARED_BOOK}: {e}"))?
    {
        None => Ok((None, ScheduleBook::default())),
        Some((version, text)) => {
            let book = ScheduleBook::from_json(text.as_bytes(), std::path::Path::new(SHARED_BOOK))
                .map_err(|e| {
                    format!(
                        "{e}; repair or delete the row of waymark_schedules (every daemon on \
                         this store reads it)"
                    )
                })?;
            Ok((Some(version), book))
        }
    }
}

/// Saves `book` as the shared book if it is still at version `read`; false: another daemon
/// saved first.
pub(super) fn save_shared(
    store: &waymark_store_pg::PgBackend,
    read: Option<i64>,
    book: &ScheduleBook,
) -> Result<bool, String> {
    let text = book
        .to_json()
        .map_err(|e| format!("encoding the schedules for {SHARED_BOOK}: {e}"))?;
    Ok(store
        .save_schedule_book(read, text)
        .map_err(|e| format!("saving {SHARED_BOOK}: {e}"))?
        .is_some())
}

/// The schedule book of a daemon starting on a shared store: the store's. A store without a
/// book yet is given this daemon's schedules file (schedules added before `--store`, or while no
/// daemon ran); a file beside a store that has a book is not read again, and is named in a warning.
pub(super) fn shared_book_at_start(
    store: &waymark_store_pg::PgBackend,
    file_book: ScheduleBook,
    file: &std::path::Path,
) -> Result<ScheduleBook, String> {
    let (read, book) = load_shared(store)?;
    if file_book.schedules.is_empty() {
        return Ok(book);
    }
    if read.is_none() && save_shared(store, None, &file_book)? {
        tracing::info!(
            file = %file.display(),
            "schedules: the store had no schedule book; it now holds this daemon's schedules file"
        );
        return Ok(file_book);
    }
    tracing::warn!(
        file = %file.display(),
        "schedules: this daemon's schedules file is not used: on a shared store every daemon \
         uses {SHARED_BOOK}; add its schedules again with `waymark schedule add` if they are \
         missing there, then delete the file"
    );
    let (_, book) = load_shared(store)?;
    Ok(book)
}

/// Edits the daemon's schedule book with `edit` and saves it: the schedules file, or, on a
/// shared store, the store's book (read, edit, save if nobody saved meanwhile, else again from
/// the new version). The copy in memory follows.
async fn edit_book<R, F>(d: &Arc<Daemon>, mut edit: F) -> Result<R, Response>
where
    R: Send + 'static,
    F: FnMut(&mut ScheduleBook) -> Result<R, Response> + Send + 'static,
{
    let Some(store) = d.shared_store.clone() else {
        let mut book = d.schedules.lock().expect("schedules lock");
        let r = edit(&mut book)?;
        book.save(&d.schedules_path).map_err(unusable)?;
        return Ok(r);
    };
    let daemon = d.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..SHARED_BOOK_ATTEMPTS {
            let (read, mut book) = load_shared(&store).map_err(unusable)?;
            let r = edit(&mut book)?;
            if save_shared(&store, read, &book).map_err(unusable)? {
                *daemon.schedules.lock().expect("schedules lock") = book;
                return Ok(r);
            }
        }
        Err(unusable(format!(
            "{SHARED_BOOK} changed {SHARED_BOOK_ATTEMPTS} times while this edit was saved (other \
             daemons save it at every tick that starts or queues a run); try again"
        )))
    })
    .await
    .map_err(unusable)?
}

async fn list(State(d): State<Arc<Daemon>>) -> Response {
    if let Some(store) = d.shared_store.clone() {
        let daemon = d.clone();
        let rows = tokio::task::spawn_blocking(move || {
            let (_, book) = load_shared(&store)?;
            let rows = schedule_rows(&book);
            *daemon.schedules.lock().expect("schedules lock") = book;
            Ok::<_, String>(rows)
        })
        .await;
        return match rows {
            Ok(Ok(rows)) => Json(rows).into_response(),
            Ok(Err(e)) => unusable(e),
            Err(e) => unusable(e),
        };
    }
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
    let added = edit_book(&d, move |book| {
        book.add(new.clone(), Utc::now()).map(|_| ()).map_err(bad)
    })
    .await;
    if let Err(r) = added {
        return r;
    }
    tracing::info!(schedule = %b.name, by = %p.operator, "schedule added");
    Json(serde_json::json!({ "name": b.name })).into_response()
}

async fn remove(State(d): State<Arc<Daemon>>, AxPath(name): AxPath<String>) -> Response {
    let which = name.clone();
    if let Err(r) = edit_book(&d, move |book| book.remove(&which).map(|_| ()).map_err(bad)).await {
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
    let which = name.clone();
    let edited = edit_book(&d, move |book| {
        book.set_paused(&which, paused, Utc::now()).map_err(bad)
    })
    .await;
    if let Err(r) = edited {
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

/// Opens the daemon's notifier ([`crate::notify::Opened`]) on `DATA_DIR/notifications.jsonl`,
/// journaling when each of its own `webhooks` is first served. `None`: notifications are off
/// (the error is logged).
pub(super) fn open_notifier(
    schedules_path: &std::path::Path,
    webhooks: Vec<crate::notify::Webhook>,
    tick: Duration,
) -> Option<crate::notify::Opened> {
    use crate::notify::{Opened, RetrySettings, Settings};
    Opened::open(Settings {
        webhooks,
        journal: schedules_path.with_file_name("notifications.jsonl"),
        tick: tick.min(Duration::from_secs(1)),
        retry: RetrySettings::default(),
    })
}

/// The daemon's notifier ([`crate::notify::run_notifier`]): its own webhooks for every run, and
/// a schedule's for the runs that schedule started.
pub(super) async fn notifier(
    d: Arc<Daemon>,
    opened: crate::notify::Opened,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use crate::notify::{run_notifier, RunFacts, RunTargets};
    let book = d.clone();
    let targets: RunTargets =
        Arc::new(move |facts: &RunFacts| book.schedule_webhooks(&facts.started_by));
    run_notifier(opened, d.log.clone(), targets, stop).await;
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

/// A decision of a tick, with what its start needs (workflow, inventory, end of its window).
type Decided = Vec<(
    Decision,
    Option<(String, std::path::PathBuf, chrono::DateTime<Utc>)>,
)>;
/// A fire time that could not start: (schedule, fire time, why, whether its cluster was busy).
type Failures = Vec<(String, chrono::DateTime<Utc>, String, bool)>;

async fn tick_once(d: &Arc<Daemon>) {
    if let Some(store) = d.shared_store.clone() {
        tick_shared(d, store).await;
        return;
    }
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
        decide(&mut book, &busy)
    };
    if decisions.is_empty() {
        return;
    }
    let failures = start_decided(d, decisions).await;
    let mut book = d.schedules.lock().expect("schedules lock");
    record_failures(&mut book, failures);
    if let Err(e) = book.save(&d.schedules_path) {
        tracing::error!("cannot save schedules: {e}");
    }
}

/// A tick on the store's shared book: read it, tick it, start what is due, save it if no other
/// daemon saved meanwhile; else again from the new version. Every daemon ticks the same book:
/// the fire-time claim in the store lets one start per fire time win, and a daemon that lost
/// finds the winner's run (`Daemon::start_scheduled`), so a redone tick starts nothing twice.
async fn tick_shared(d: &Arc<Daemon>, store: waymark_store_pg::PgBackend) {
    for _ in 0..SHARED_BOOK_ATTEMPTS {
        let loaded = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || load_shared(&store)).await
        };
        let (read, mut book) = match loaded {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => return tracing::error!("schedules: {e}"),
            Err(e) => return tracing::error!("schedules: reading the shared book failed: {e}"),
        };
        let before = book.clone();
        // The book as read, before any run of it starts: the notifier finds a run's schedule
        // (and its webhooks) here, and a run that ends at once must not find it missing (a
        // schedule another daemon added since this one's last tick).
        *d.schedules.lock().expect("schedules lock") = before.clone();
        let known: Vec<String> = book.schedules.values().map(|s| s.cluster.clone()).collect();
        let busy = d.busy_clusters(known).await;
        let decisions = decide(&mut book, &busy);
        let failures = start_decided(d, decisions).await;
        record_failures(&mut book, failures);
        if book == before {
            *d.schedules.lock().expect("schedules lock") = book;
            return;
        }
        let saved = {
            let (store, book) = (store.clone(), book.clone());
            tokio::task::spawn_blocking(move || save_shared(&store, read, &book)).await
        };
        match saved {
            Ok(Ok(true)) => {
                *d.schedules.lock().expect("schedules lock") = book;
                return;
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => return tracing::error!("schedules: {e}"),
            Err(e) => return tracing::error!("schedules: saving the shared book failed: {e}"),
        }
    }
    tracing::warn!(
        "schedules: {SHARED_BOOK} changed {SHARED_BOOK_ATTEMPTS} times during one tick; the next \
         tick tries again"
    );
}

/// Ticks `book` now: its decisions, each with what its start needs.
fn decide(book: &mut ScheduleBook, busy: &std::collections::BTreeSet<String>) -> Decided {
    let decisions = book.tick(Utc::now(), busy);
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
        .collect()
}

/// Carries out the decisions of a tick; returns the fire times that could not start.
async fn start_decided(d: &Daemon, decisions: Decided) -> Failures {
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
    failures
}

fn record_failures(book: &mut ScheduleBook, failures: Failures) {
    for (schedule, fire_time, message, busy) in failures {
        let what = book.start_failed(&schedule, fire_time, Utc::now(), &message, busy);
        tracing::info!("{what}");
    }
}
