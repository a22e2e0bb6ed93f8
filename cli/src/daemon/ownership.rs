//! Ownership of runs when several daemons share one store (`--store postgres://...`): each open
//! run is driven by the daemon holding its lease. This loop renews the leases of the runs this
//! daemon drives (every ttl/3), stops driving the runs whose lease another daemon took
//! ([`waymark_engine::Engine::relinquish`]: nothing appended), and takes over runs whose lease
//! expired (every ttl/2), resuming them as recovery does (an attempt in flight is journaled as
//! interrupted and re-attempted under its idempotency key). The store's fence (every append is
//! conditional on the owner's epoch) is what makes a late daemon harmless; this loop only makes
//! it stop early. With the embedded store there is one owner and no loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use waymark_engine::log;
use waymark_engine::{Engine, RunId};

use super::metrics::Metrics;

/// A run whose lease this daemon no longer holds, and by whom it is held now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostLease {
    /// The run.
    pub run: RunId,
    /// Who holds it now, e.g. `owned by daemon b since epoch 3 (this daemon held epoch 2)`.
    pub detail: String,
}

/// What the loop asks of the shared store (synchronous: called on a blocking thread).
pub trait Leases: Send + Sync + 'static {
    /// How long a lease lasts without renewal.
    fn ttl(&self) -> Duration;
    /// Renews this daemon's leases of `runs` (the runs it drives) and its heartbeat; returns
    /// the runs whose lease it no longer holds.
    fn renew(&self, runs: &[RunId]) -> Result<Vec<LostLease>, log::Error>;
    /// Takes over open runs whose lease expired (a bounded number per call, each with a new
    /// epoch); returns the runs this daemon now holds.
    fn take_over_expired(&self) -> Result<Vec<RunId>, log::Error>;
    /// This daemon stops cleanly (after its engine journaled its attempts in flight): its
    /// leases end now, so another daemon takes its open runs without waiting for them.
    fn release(&self) -> Result<(), log::Error>;
    /// Whether this daemon holds `run`'s lease (the runs it resumes at start).
    fn holds(&self, run: RunId) -> bool;
    /// When this daemon's leases were taken: just before the store was opened (its open takes
    /// the leases of this daemon's own open runs). Until the first renewal, the local deadline
    /// counts from then, not from when the loop starts.
    fn taken_at(&self) -> std::time::Instant;
}

/// The leases of a daemon on the `PostgreSQL` store.
pub struct PgLeases {
    /// The store (shares its connections and the epochs held with the engine's log).
    pub backend: waymark_store_pg::PgBackend,
    /// This daemon process's incarnation (its heartbeat row).
    pub incarnation: uuid::Uuid,
    /// The lease's length.
    pub ttl: Duration,
    /// Taken just before the store was opened ([`Leases::taken_at`]).
    pub taken_at: std::time::Instant,
}

impl Leases for PgLeases {
    fn ttl(&self) -> Duration {
        self.ttl
    }
    fn renew(&self, runs: &[RunId]) -> Result<Vec<LostLease>, log::Error> {
        Ok(self
            .backend
            .renew(runs, self.incarnation)?
            .into_iter()
            .map(|(run, detail)| LostLease { run, detail })
            .collect())
    }
    fn take_over_expired(&self) -> Result<Vec<RunId>, log::Error> {
        self.backend.take_over_expired()
    }
    fn release(&self) -> Result<(), log::Error> {
        self.backend.release(self.incarnation)
    }
    fn holds(&self, run: RunId) -> bool {
        self.backend.epoch(run).is_some()
    }
    fn taken_at(&self) -> std::time::Instant {
        self.taken_at
    }
}

/// How long past the last renewal that succeeded this daemon keeps driving when renewals fail:
/// the lease's length less a margin (1 s, or a quarter of a short lease), so that it stops
/// before another daemon may take its runs.
pub fn local_deadline(ttl: Duration) -> Duration {
    ttl.saturating_sub(Duration::from_secs(1).min(ttl / 4))
}

/// The message of a run this daemon stopped driving because another daemon holds it.
pub fn fenced_message(run: RunId, detail: &str) -> String {
    format!("run {run}: fenced: {detail}; stopped driving it")
}

/// Renews and takes over until `stop` turns true.
pub async fn keep_leases(
    engine: Engine,
    leases: Arc<dyn Leases>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let ttl = leases.ttl();
    let renew_every = (ttl / 3).max(Duration::from_millis(50));
    let scan_every = (ttl / 2).max(Duration::from_millis(50));
    // The leases were taken when the store was opened, before the runs were resumed and this
    // loop began (a slow start can take a good part of a short lease): the local deadline counts
    // from then, and the first renewal is at once.
    let mut held_since = Instant::from_std(leases.taken_at());
    let mut next_renew = Instant::now();
    // At once: runs of a daemon that died while this one was down are taken without delay.
    let mut next_scan = Instant::now();
    loop {
        let wake = next_renew.min(next_scan);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep_until(wake) => {}
        }
        if Instant::now() >= next_renew {
            // First the local deadline: a daemon that could not renew for most of a lease (the
            // store did not answer, or this process was paused) may have lost its runs already;
            // it stops driving them before asking, so that an activity of a run another daemon
            // took does not go on meanwhile. Whoever takes a run next resumes it.
            let unrenewed = Instant::now().duration_since(held_since);
            if unrenewed >= local_deadline(ttl) {
                for run in engine.active_runs() {
                    let why = format!(
                        "run {run}: its lease was not renewed for {:.1}s (lease {:.1}s: the \
                         store did not answer, or this process was paused); stopped driving it \
                         so that another daemon can take it over safely; the daemon that takes \
                         its lease next resumes it",
                        unrenewed.as_secs_f64(),
                        ttl.as_secs_f64()
                    );
                    if engine.relinquish(run, &why) {
                        tracing::error!("{why}");
                    }
                }
            }
            let sent = Instant::now();
            let runs = engine.active_runs();
            let answer = {
                let leases = leases.clone();
                tokio::task::spawn_blocking(move || leases.renew(&runs)).await
            };
            match answer {
                Ok(Ok(lost)) => {
                    held_since = sent;
                    for l in lost {
                        let message = fenced_message(l.run, &l.detail);
                        if engine.relinquish(l.run, &message) {
                            metrics.count_fenced(l.run, &message);
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!("renewing the leases of this daemon's runs failed: {e}");
                }
                Err(e) => tracing::warn!("renewing the leases: the task failed: {e}"),
            }
            next_renew = sent + renew_every;
        }
        if Instant::now() >= next_scan {
            let taken = {
                let leases = leases.clone();
                tokio::task::spawn_blocking(move || leases.take_over_expired()).await
            };
            match taken {
                Ok(Ok(runs)) => {
                    for run in runs {
                        match engine.resume(run) {
                            Ok(()) => tracing::info!(
                                %run,
                                "took over run (its owner's lease expired); resuming it"
                            ),
                            Err(e) => {
                                tracing::error!(%run, "took over run but could not resume it: {e}");
                            }
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!("looking for runs whose lease expired failed: {e}"),
                Err(e) => tracing::warn!("taking over runs: the task failed: {e}"),
            }
            next_scan = Instant::now() + scan_every;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use waymark_engine::log::memory::MemoryBackend;
    use waymark_engine::workflow::{self, Workflow};
    use waymark_engine::{Payload, WorkflowContext};

    use super::*;

    /// A run that waits an hour on a durable timer: active until relinquished.
    struct Waits;

    impl Workflow for Waits {
        const NAME: &'static str = "waits";
        const VERSION: u32 = 1;
        type Input = ();
        type Output = ();
        async fn run(&self, ctx: WorkflowContext, (): ()) -> Result<(), workflow::Error> {
            ctx.sleep(Duration::from_secs(3600)).await
        }
    }

    /// Leases taken at `taken_at`; renewals always succeed and are recorded.
    struct Fake {
        ttl: Duration,
        taken_at: std::time::Instant,
        renewed: Mutex<Vec<Vec<RunId>>>,
    }

    impl Leases for Fake {
        fn ttl(&self) -> Duration {
            self.ttl
        }
        fn renew(&self, runs: &[RunId]) -> Result<Vec<LostLease>, log::Error> {
            self.renewed.lock().expect("lock").push(runs.to_vec());
            Ok(Vec::new())
        }
        fn take_over_expired(&self) -> Result<Vec<RunId>, log::Error> {
            Ok(Vec::new())
        }
        fn release(&self) -> Result<(), log::Error> {
            Ok(())
        }
        fn holds(&self, _run: RunId) -> bool {
            true
        }
        fn taken_at(&self) -> std::time::Instant {
            self.taken_at
        }
    }

    /// Leases taken longer ago than the local deadline (a slow start between the store's open
    /// and this loop) may have expired: the run stops being driven before the first renewal,
    /// which is at once. Before the fix the loop counted from its own start, renewed only a
    /// third of a lease later, and went on driving the run.
    #[tokio::test]
    async fn leases_taken_before_a_slow_start_stop_the_runs_before_the_first_renewal() {
        let log: log::SharedLog = Arc::new(log::Log::new(MemoryBackend::new()));
        let engine = Engine::builder(log).workflow(Waits).build();
        let run = engine
            .start_named("waits", Payload::encode(&()).expect("encode"), "test")
            .await
            .expect("start");
        assert!(engine.active_runs().contains(&run));
        let ttl = Duration::from_secs(600);
        let leases = Arc::new(Fake {
            ttl,
            taken_at: std::time::Instant::now()
                .checked_sub(ttl)
                .expect("an instant a lease ago"),
            renewed: Mutex::new(Vec::new()),
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(keep_leases(
            engine.clone(),
            leases.clone(),
            Arc::new(Metrics::default()),
            stop_rx,
        ));
        // A safety net against a hang, not a timing assertion: the first renewal is at once,
        // and a third of this lease is 200 s.
        let first = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(first) = leases.renewed.lock().expect("lock").first().cloned() {
                    return first;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the first renewal comes at once");
        stop_tx.send_replace(true);
        task.await.expect("the loop ends");
        assert_eq!(
            first,
            Vec::<RunId>::new(),
            "the run was let go before renewing"
        );
        assert!(!engine.active_runs().contains(&run), "no longer driven");
        engine.shutdown().await;
    }
}
