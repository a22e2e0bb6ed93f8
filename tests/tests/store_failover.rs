//! Several daemons on one store (issue 15): `Engine::relinquish`, the primitive a daemon uses when
//! another daemon took one of its runs over.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use waymark_engine::log::memory::MemoryBackend;
use waymark_engine::log::{EventLog, Log};
use waymark_engine::{Engine, Payload, RunOutcome};

use crate::util::{wait_until, wf};

/// Sets its flag when dropped: tells that an activity's future was dropped, not left running.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A run whose step `block` never finishes on its own: relinquished, its driver and the
/// activity in flight are dropped, the run is no longer active, nothing is appended (not even by
/// the engine's shutdown, which journals an interruption only for runs it still drives), and a
/// new driver can be started on the same history (the new owner's resume).
#[tokio::test]
async fn relinquish_drops_the_driver_and_its_activity_and_appends_nothing() {
    let log = Arc::new(Log::new(MemoryBackend::new()));
    let started = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let engine = {
        let (started, dropped) = (started.clone(), dropped.clone());
        Engine::builder(log.clone())
            .workflow_dyn(wf("blocks", 1, |ctx| async move {
                let () = ctx.step("block", &()).await?;
                Ok(Payload::null())
            }))
            .activity_fn("block", move |_ctx, _input| {
                started.fetch_add(1, Ordering::SeqCst);
                let guard = DropFlag(dropped.clone());
                async move {
                    let _guard = guard;
                    futures::future::pending::<()>().await;
                    Ok(Payload::null())
                }
            })
            .build()
    };
    let run = engine
        .start_named("blocks", Payload::null(), "test")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the activity started", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    let before = log.read(run).unwrap().len();
    assert!(
        engine.relinquish(run, "lease lost"),
        "a driven run is relinquished"
    );
    assert!(
        !engine.active_runs().contains(&run),
        "the run is no longer active"
    );
    wait_until(
        Duration::from_secs(10),
        "the activity's future dropped",
        || dropped.load(Ordering::SeqCst),
    )
    .await;
    assert!(
        !engine.relinquish(run, "again"),
        "a run not driven is not relinquished twice"
    );
    engine.shutdown().await;
    let after: Vec<&str> = log
        .read(run)
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect();
    assert_eq!(
        after.len(),
        before,
        "nothing appended after relinquish: {after:?}"
    );
    assert_eq!(after.last(), Some(&"AttemptStarted"), "{after:?}");
    assert_eq!(started.load(Ordering::SeqCst), 1);
}

/// What waiters see: the run's driver stopped with the reason given, and the engine can drive
/// the run again later (a lease taken back).
#[tokio::test]
async fn a_relinquished_run_can_be_resumed_by_the_same_engine() {
    let log = Arc::new(Log::new(MemoryBackend::new()));
    let started = Arc::new(AtomicUsize::new(0));
    let engine = {
        let started = started.clone();
        Engine::builder(log.clone())
            .workflow_dyn(wf("blocks", 1, |ctx| async move {
                let () = ctx.step("block", &()).await?;
                Ok(Payload::null())
            }))
            .activity_fn("block", move |_ctx, _input| {
                let n = started.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        futures::future::pending::<()>().await;
                    }
                    Ok(Payload::null())
                }
            })
            .build()
    };
    let run = engine
        .start_named("blocks", Payload::null(), "test")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the first attempt started", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    let waiter = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.wait(run).await })
    };
    // The waiter must be waiting on the driver before it is relinquished.
    tokio::task::yield_now().await;
    assert!(engine.relinquish(run, "run R: lease lost to daemon b"));
    match waiter.await.unwrap() {
        Ok(RunOutcome::Stopped(why)) => assert_eq!(why, "run R: lease lost to daemon b"),
        Ok(other) => panic!("the driver stopped with {other:?}"),
        // The waiter had not subscribed yet: it read the log, where the run is unfinished.
        Err(waymark_engine::runtime::Error::NotActive(r)) => assert_eq!(r, run),
        Err(e) => panic!("{e}"),
    }
    engine.resume(run).unwrap();
    match engine.wait(run).await.unwrap() {
        RunOutcome::Completed(_) => {}
        other => panic!("the resumed run ended with {other:?}"),
    }
    let kinds: Vec<&str> = log
        .read(run)
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect();
    assert!(
        kinds.contains(&"AttemptInterrupted"),
        "the resume journaled the dropped attempt as interrupted: {kinds:?}"
    );
    assert_eq!(started.load(Ordering::SeqCst), 2);
}
