//! What the daemon's handlers and its scheduler share: the engine, the log, the schedules, and
//! the per-cluster start lock ([`Daemon::start_run`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use waymark_engine::event::Event;
use waymark_engine::log::EventLog;
use waymark_engine::{Engine, Payload, RunId};
use waymark_workflows::Inventory;

use super::metrics::Metrics;
use crate::api;
use crate::exit::ExitStatus;
use crate::schedule::ScheduleBook;

/// What the handlers and the scheduler share.
pub(super) struct Daemon {
    pub(super) engine: Engine,
    pub(super) log: Arc<dyn EventLog>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) own_uid: u32,
    pub(super) token: Option<String>,
    pub(super) schedules_path: PathBuf,
    pub(super) schedules: Mutex<ScheduleBook>,
    /// The per-cluster lock: held from the check of who holds a cluster until the new run's
    /// `RunStarted` is durable, so two starts (API or schedule) never both pass the check. It
    /// guards the runs known to be ended for good (skipped by later checks).
    pub(super) starting: tokio::sync::Mutex<BTreeSet<RunId>>,
    /// The unix socket (named in errors).
    pub(super) socket: PathBuf,
    /// Where TCP clients may name inventories for `schedule add` (none: they may not).
    pub(super) inventory_dir: Option<PathBuf>,
    /// The store shared with other daemons, if it is one: there the cluster a run holds is also
    /// claimed in the database with its `RunStarted`, so that daemons exclude each other.
    pub(super) shared_store: Option<waymark_store_pg::PgBackend>,
}

/// Why a start did not happen.
#[derive(Debug)]
pub(super) enum StartError {
    /// The cluster is held (by a run, or because the log cannot tell).
    ClusterHeld(String),
    /// Anything else, with its exit status.
    Other(ExitStatus, String),
}

impl Daemon {
    /// The clusters among `known` that may not start a run now (all of them if the log cannot
    /// tell: fail closed).
    pub(super) async fn busy_clusters(&self, known: Vec<String>) -> BTreeSet<String> {
        let mut settled = self.starting.lock().await;
        api::ClusterLocks::scan(self.log.as_ref(), &mut settled).busy(known)
    }

    /// Starts a run unless its cluster is held (see [`api::ClusterLocks`]): the check and the
    /// start happen under one lock, so concurrent starts for a cluster (API or schedules) start
    /// one run.
    pub(super) async fn start_run(
        &self,
        workflow: &str,
        input: Payload,
        cluster: &str,
        by: &str,
    ) -> Result<RunId, StartError> {
        let mut settled = self.starting.lock().await;
        let mut released = false;
        loop {
            let locks = api::ClusterLocks::scan(self.log.as_ref(), &mut settled);
            if let Some(holder) = locks.holder(cluster) {
                return Err(StartError::ClusterHeld(holder.explain(cluster)));
            }
            match self.engine.start_named(workflow, input.clone(), by).await {
                Ok(run) => return Ok(run),
                // A shared store refused the claim: another daemon started a run on this
                // cluster (or for this fire time) meanwhile, or a run that ended still holds
                // the claim there (released lazily). The histories say which: if no run holds
                // the cluster, the ended runs' claims are released and the start tried once more.
                Err(waymark_engine::runtime::Error::Log(waymark_engine::log::Error::Claimed {
                    detail,
                    ..
                })) => {
                    let locks = api::ClusterLocks::scan(self.log.as_ref(), &mut settled);
                    if let Some(holder) = locks.holder(cluster) {
                        return Err(StartError::ClusterHeld(holder.explain(cluster)));
                    }
                    let Some(store) = self.shared_store.clone().filter(|_| !released) else {
                        return Err(StartError::ClusterHeld(detail));
                    };
                    let name = cluster.to_owned();
                    let freed = tokio::task::spawn_blocking(move || store.release_cluster(&name))
                        .await
                        .map_err(|e| StartError::Other(ExitStatus::Failure, e.to_string()))?
                        .map_err(|e| StartError::Other(ExitStatus::Failure, e.to_string()))?;
                    tracing::info!(cluster, freed, "released the cluster's claim of ended runs");
                    released = true;
                }
                Err(e) => {
                    let (status, message) = crate::exit::classify(&anyhow::Error::from(e));
                    return Err(StartError::Other(status, message));
                }
            }
        }
    }

    /// Starts the run of a schedule's fire time, unless one was started for it already (a crash
    /// between a start and the save of the schedules). The run's input is the inventory with
    /// `run.finish_by` set to the end of the fire time's window (or kept, when the inventory's
    /// own is earlier): the window bounds the start and the finish.
    pub(super) async fn start_scheduled(
        &self,
        workflow: &str,
        inv: &Inventory,
        by: &str,
        fire_time: chrono::DateTime<chrono::Utc>,
        window_closes_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<RunId, StartError> {
        if let Some(run) = started_for(self.log.as_ref(), by, fire_time) {
            tracing::info!("run {run} was already started by {by}");
            return Ok(run);
        }
        let started = self
            .start_scheduled_now(workflow, inv, by, window_closes_at)
            .await;
        if let Err(StartError::ClusterHeld(_)) = &started {
            // On a shared store another daemon may have started this fire time's run at the
            // same instant (the store lets one in): that is a start, not a failure.
            if let Some(run) = started_for(self.log.as_ref(), by, fire_time) {
                tracing::info!("run {run} was started by {by} on another daemon");
                return Ok(run);
            }
        }
        started
    }

    async fn start_scheduled_now(
        &self,
        workflow: &str,
        inv: &Inventory,
        by: &str,
        window_closes_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<RunId, StartError> {
        let mut inv = inv.clone();
        inv.run.finish_by = Some(match inv.run.finish_by {
            Some(earlier) if earlier < window_closes_at => earlier,
            _ => window_closes_at,
        });
        let input = Payload::encode(&inv)
            .map_err(|e| StartError::Other(ExitStatus::Usage, e.to_string()))?;
        self.start_run(workflow, input, &inv.cluster.name, by).await
    }
}

impl Daemon {
    /// The webhooks of the schedule that started a run (`started_by` is `schedule NAME (fire
    /// time ...)` for those), if it still exists; none for other runs.
    pub(super) fn schedule_webhooks(&self, started_by: &str) -> Vec<crate::notify::Webhook> {
        let Some(name) = started_by
            .strip_prefix("schedule ")
            .and_then(|rest| rest.split(' ').next())
        else {
            return Vec::new();
        };
        self.schedules
            .lock()
            .expect("schedules lock")
            .schedules
            .get(name)
            .map(|s| s.notify.clone())
            .unwrap_or_default()
    }
}

/// A run started by `by` (a schedule's fire time) at or after `fire_time`, if any: run ids are
/// UUID v7, so only runs created since then are read.
fn started_for(
    log: &dyn EventLog,
    by: &str,
    fire_time: chrono::DateTime<chrono::Utc>,
) -> Option<RunId> {
    let since = u64::try_from(fire_time.timestamp())
        .unwrap_or(0)
        .saturating_sub(1);
    log.runs().ok()?.into_iter().find(|run| {
        run.0
            .get_timestamp()
            .is_some_and(|t| t.to_unix().0 >= since)
            && log.read(*run).ok().is_some_and(|h| {
                h.first().is_some_and(|r| {
                    matches!(&r.event, Event::RunStarted { started_by, .. } if started_by == by)
                })
            })
    })
}
