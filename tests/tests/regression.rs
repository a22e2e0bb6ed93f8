//! One test per bug found.

use waymark_engine::event::{Event, Payload};
use waymark_engine::log::sled::SledBackend;
use waymark_engine::log::{EventLog, Log};
use waymark_engine::RunId;

use crate::util::temp_dir;

/// The sled store of earlier versions (still opened to import it into segment files).
fn sled_log(dir: &std::path::Path) -> Result<Log<SledBackend>, waymark_engine::log::Error> {
    Ok(Log::new(SledBackend::open(dir)?))
}

/// sled 0.34.7 picks an unfinished `snap.N.generating` file (left by a SIGKILL during a
/// snapshot) over the last complete snapshot and refuses to open. Found by the random-kill test.
#[tokio::test]
async fn log_opens_after_a_kill_during_a_sled_snapshot() {
    let dir = temp_dir();
    let run = RunId::new();
    {
        let log = sled_log(dir.path()).unwrap();
        log.append(
            run,
            vec![Event::RunStarted {
                workflow: "w".into(),
                version: 1,
                input: Payload::null(),
                started_by: "t".into(),
            }],
        )
        .await
        .unwrap();
    }
    // What a killed snapshot writer leaves: a truncated file that sorts after every real one.
    std::fs::write(
        dir.path()
            .join("events.sled/snap.FFFFFFFFFFFFFFFF.generating"),
        b"partial snapsh",
    )
    .unwrap();
    let log = sled_log(dir.path()).expect("opens despite the unfinished snapshot");
    assert_eq!(log.read(run).unwrap().len(), 1);
}

/// sled 0.34.7 writes its `conf` in two writes; a kill between them made a new log unopenable.
/// The log is now created aside and renamed into place; leftovers are cleaned up.
#[test]
fn log_creation_killed_halfway_leaves_nothing_that_blocks_the_next_open() {
    let dir = temp_dir();
    let leftover = dir.path().join("events.sled.creating-4242");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(
        leftover.join("conf"),
        b"segment_size: 524288\nuse_compression: false\nversion: 0.34\n",
    )
    .unwrap();
    drop(sled_log(dir.path()).expect("a fresh log opens"));
    assert!(!leftover.exists(), "the unfinished creation was removed");
}

/// Issue 8, item 5 (the CLI side): `waymark signal RUN cancel` without a daemon on a run this
/// binary cannot drive (its workflow version is unknown here) compensates it from the history in
/// that process and reports the outcome, instead of saying the cancel takes effect "when the run
/// is resumed" (a resume refuses such a run) and exiting.
#[tokio::test]
async fn direct_cancel_of_a_version_refused_run_sees_it_through() {
    let dir = temp_dir();
    let run = RunId::new();
    {
        let log = waymark_engine::open_log(dir.path()).unwrap();
        log.append(
            run,
            vec![Event::RunStarted {
                workflow: "yb-maintenance".into(),
                version: 999,
                input: Payload::null(),
                started_by: "t".into(),
            }],
        )
        .await
        .unwrap();
    }
    let out = crate::util::waymark(dir.path())
        .args(["signal", &run.to_string(), "cancel", "--reason", "abandon"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("cancelled") && !text.contains("takes effect when the run is resumed"),
        "{text}"
    );
    let log = waymark_engine::open_log(dir.path()).unwrap();
    assert!(
        log.read(run)
            .unwrap()
            .iter()
            .any(|r| matches!(r.event, Event::RunCancelled { .. })),
        "the run ended cancelled"
    );
}

/// Two processes on one data dir: the second is told who to talk to instead of failing obscurely.
#[test]
fn second_opener_is_told_the_log_is_in_use() {
    let dir = temp_dir();
    let _first = waymark_engine::open_log(dir.path()).unwrap();
    let Err(err) = waymark_engine::open_log(dir.path()) else {
        panic!("second open should fail")
    };
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

/// `Engine::shutdown` listed the active runs after telling them to stop; a driver that stopped
/// and removed itself first was missed, and its in-flight attempt was not journaled as
/// interrupted. Found by the daemon's SIGTERM test (1 run in 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_journals_every_in_flight_attempt() {
    use std::sync::Arc;
    use waymark_engine::workflow;
    use waymark_engine::{Engine, RunId, WorkflowContext};

    struct Blocked;
    impl waymark_engine::Workflow for Blocked {
        const NAME: &'static str = "blocked";
        const VERSION: u32 = 1;
        type Input = u32;
        type Output = ();
        async fn run(&self, ctx: WorkflowContext, i: u32) -> Result<(), workflow::Error> {
            let (): () = ctx.step("block", &i).await?;
            Ok(())
        }
    }
    let log = waymark_engine::memory_log();
    let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let e2 = entered.clone();
    let engine = Engine::builder(log.clone())
        .workflow(Blocked)
        .activity_fn("block", move |_, _| {
            e2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                futures::future::pending::<()>().await;
                Ok(waymark_engine::Payload::null())
            }
        })
        .build();
    let mut runs: Vec<RunId> = Vec::new();
    for i in 0..200 {
        runs.push(engine.start::<Blocked>(&i, "t").await.unwrap());
    }
    crate::util::wait_until(
        std::time::Duration::from_secs(10),
        "every step in flight",
        || entered.load(std::sync::atomic::Ordering::SeqCst) == 200,
    )
    .await;
    engine.shutdown().await;
    for run in runs {
        let h = log.read(run).unwrap();
        assert!(
            h.iter()
                .any(|r| matches!(r.event, Event::AttemptInterrupted { .. })),
            "run {run}: in-flight attempt journaled as interrupted"
        );
    }
}
