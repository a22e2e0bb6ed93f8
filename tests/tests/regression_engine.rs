//! Regression tests of the engine for issue 8 (one test or more per item; each doc comment names
//! the item it covers). Each of them fails on the code before the fix.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use waymark_engine::activity;
use waymark_engine::core::RunState;
use waymark_engine::event::{Event, Payload, StepRef, SuspendReason};
use waymark_engine::log::memory::MemoryBackend;
use waymark_engine::log::{EventLog, Log};
use waymark_engine::runtime;
use waymark_engine::{Engine, RetryPolicy, RunId, RunOutcome};

use crate::util::{fast_retry, wait_until, wf};

fn history(log: &dyn EventLog, run: RunId) -> Vec<Event> {
    log.read(run)
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect()
}

fn kinds(log: &dyn EventLog, run: RunId) -> Vec<&'static str> {
    log.read(run)
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect()
}

/// A second log over the same memory backend: what a restarted process finds.
fn restart(backend: &MemoryBackend) -> Arc<Log<MemoryBackend>> {
    Arc::new(Log::new(backend.clone()))
}

/// Issue 8, item 6: a run that ended with COMPENSATION INCOMPLETE needs an operator (it is not
/// open, so nothing drives it, but `needs_operator` holds its cluster) until `Engine::resolve`
/// journals `RunResolved`; resolve refuses a run that does not need it.
#[tokio::test]
async fn incomplete_compensation_needs_an_operator_until_resolved() {
    let backend = MemoryBackend::new();
    let log = restart(&backend);
    let body = || {
        wf("half-undone", 1, |ctx| async move {
            ctx.step::<_, ()>("move", &())
                .compensate_with("move.undo", &(), "traffic back")
                .await?;
            ctx.step::<_, ()>("boom", &())
                .retry(RetryPolicy::no_retry())
                .await?;
            Ok(Payload::null())
        })
    };
    let engine = Engine::builder(log.clone())
        .workflow_dyn(body())
        .workflow_dyn(wf("fine", 1, |_| async { Ok(Payload::null()) }))
        .activity_fn("move", |_, _| async { Ok(Payload::null()) })
        .activity_fn("boom", |_, _| async {
            Err(activity::Error::fatal("restart of n1 failed"))
        })
        .activity_fn("move.undo", |_, _| async {
            Err(activity::Error::fatal("listener not found"))
        })
        .build();
    let run = engine
        .start_named("half-undone", Payload::null(), "t")
        .await
        .unwrap();
    let RunOutcome::Failed(why) = engine.wait(run).await.unwrap() else {
        panic!("the run fails")
    };
    assert!(why.contains("COMPENSATION INCOMPLETE"), "{why}");
    let state = engine.state(run).unwrap();
    assert!(state.needs_operator(), "the estate is unknown");
    assert!(!log.open_runs().unwrap().contains(&run));

    // A restarted engine does not try to drive it.
    let engine2 = Engine::builder(restart(&backend))
        .workflow_dyn(body())
        .build();
    let report = engine2.resume_all().unwrap();
    assert!(report.resumed.is_empty() && report.refused.is_empty());

    engine2
        .resolve(run, "alice", "weights checked by hand")
        .await
        .unwrap();
    let state = engine2.state(run).unwrap();
    assert!(!state.needs_operator());
    assert_eq!(
        state.resolved,
        Some(("alice".to_owned(), "weights checked by hand".to_owned()))
    );
    assert_eq!(kinds(log.as_ref(), run).last(), Some(&"RunResolved"));
    assert!(!restart(&backend).open_runs().unwrap().contains(&run));
    let again = engine2.resolve(run, "bob", "").await.unwrap_err();
    assert!(
        matches!(again, runtime::Error::NothingToResolve { .. }),
        "{again}"
    );
    assert!(
        again.to_string().contains("already resolved by alice"),
        "{again}"
    );

    let ok = engine
        .start_named("fine", Payload::null(), "t")
        .await
        .unwrap();
    engine.wait(ok).await.unwrap();
    assert!(!engine.state(ok).unwrap().needs_operator());
    let err = engine.resolve(ok, "bob", "").await.unwrap_err();
    assert!(err.to_string().contains("completed"), "{err}");
}

/// Waits for a run's outcome, failing (instead of hanging) if the run is stranded.
async fn outcome(engine: &Engine, run: RunId) -> RunOutcome {
    tokio::time::timeout(Duration::from_secs(60), engine.wait(run))
        .await
        .unwrap_or_else(|_| panic!("run {run} never ended: it is stranded"))
        .unwrap()
}

/// Issue 8, item 2: an activity that panics is a non-retryable failure of its attempt carrying
/// the panic message; the run compensates and ends, is no longer active, and the engine goes on
/// with other runs.
#[tokio::test]
async fn activity_panic_fails_the_attempt_without_retry_and_the_run_ends() {
    let log = waymark_engine::memory_log();
    let undone = Arc::new(AtomicU32::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let (u, c) = (undone.clone(), calls.clone());
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("explodes", 1, |ctx| async move {
            ctx.step::<_, ()>("do", &())
                .compensate_with("undo", &(), "undo")
                .await?;
            ctx.step::<_, ()>("explode", &())
                .retry(fast_retry())
                .await?;
            Ok(Payload::null())
        }))
        .workflow_dyn(wf("fine", 1, |ctx| async move {
            ctx.step::<_, ()>("do", &()).await?;
            Ok(Payload::null())
        }))
        .activity_fn("do", |_, _| async { Ok(Payload::null()) })
        .activity_fn("undo", move |_, _| {
            u.fetch_add(1, Ordering::SeqCst);
            async { Ok(Payload::null()) }
        })
        .activity_fn("explode", move |_, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                let nodes: Vec<u32> = Vec::new();
                assert!(!nodes.is_empty(), "no tserver in the inventory");
                Ok(Payload::null())
            }
        })
        .build();
    let run = engine
        .start_named("explodes", Payload::null(), "t")
        .await
        .unwrap();
    let RunOutcome::Failed(why) = outcome(&engine, run).await else {
        panic!("the run fails")
    };
    assert!(why.contains("no tserver in the inventory"), "{why}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a panic is not retried");
    assert_eq!(undone.load(Ordering::SeqCst), 1, "the run compensated");
    let failed = history(log.as_ref(), run)
        .into_iter()
        .find_map(|e| match e {
            Event::AttemptFailed {
                error, retryable, ..
            } => Some((error, retryable)),
            _ => None,
        })
        .unwrap();
    assert!(failed.0.contains("panicked: no tserver"), "{}", failed.0);
    assert!(!failed.1);
    assert!(engine.active_runs().is_empty());
    let other = engine
        .start_named("fine", Payload::null(), "t")
        .await
        .unwrap();
    assert!(matches!(
        outcome(&engine, other).await,
        RunOutcome::Completed(_)
    ));
}

/// Issue 8, items 2 and 5: a panic in the workflow code suspends the run for an operator with the
/// panic message; the run is no longer active, and `signal cancel` then compensates it without
/// the workflow code and ends it as cancelled.
#[tokio::test]
async fn workflow_panic_suspends_the_run_and_cancel_compensates_it() {
    let log = waymark_engine::memory_log();
    let undone = Arc::new(Mutex::new(Vec::new()));
    let u = undone.clone();
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("buggy", 1, |ctx| async move {
            ctx.step::<_, ()>("do", &1)
                .compensate_with("undo", &1, "undo 1")
                .await?;
            ctx.register_compensation("undo", &2, "undo 2").await?;
            let weights: Vec<u32> = ctx.step("read", &()).await?;
            let first = weights[3];
            Ok(Payload::encode(&first).unwrap())
        }))
        .activity_fn("do", |_, _| async { Ok(Payload::null()) })
        .activity_fn("read", |_, _| async { Ok(Payload("[100,0]".into())) })
        .activity_fn("undo", move |_, input| {
            u.lock().unwrap().push(input.0.clone());
            async { Ok(Payload::null()) }
        })
        .build();
    let run = engine
        .start_named("buggy", Payload::null(), "t")
        .await
        .unwrap();
    let RunOutcome::Suspended(reason) = outcome(&engine, run).await else {
        panic!("the run is suspended")
    };
    let SuspendReason::WorkflowPanicked { message } = &reason else {
        panic!("{reason:?}")
    };
    assert!(message.contains("index out of bounds"), "{message}");
    assert!(reason.to_string().contains("cancel the run"), "{reason}");
    assert_eq!(kinds(log.as_ref(), run).last(), Some(&"RunSuspended"));
    assert!(engine.active_runs().is_empty(), "the driver cleaned up");

    engine
        .signal(run, "cancel", Payload::encode("bug").unwrap(), "alice")
        .await
        .unwrap();
    let RunOutcome::Cancelled(why) = outcome(&engine, run).await else {
        panic!("cancel acts on a suspended run")
    };
    assert!(why.contains("alice"), "{why}");
    assert_eq!(*undone.lock().unwrap(), vec!["2", "1"], "newest first");
    assert_eq!(kinds(log.as_ref(), run).last(), Some(&"RunCancelled"));
}

/// A run of `two-step` v1 whose second step (with a compensation) is in flight when its engine
/// shuts down; returns the run.
async fn run_left_in_flight(backend: &MemoryBackend) -> RunId {
    let gate = Arc::new(Notify::new());
    let started = Arc::new(AtomicU32::new(0));
    let (g, st) = (gate.clone(), started.clone());
    let engine = Engine::builder(restart(backend))
        .workflow_dyn(wf("two-step", 1, |ctx| async move {
            ctx.step::<_, ()>("do", &1)
                .compensate_with("undo", &1, "undo 1")
                .await?;
            ctx.step::<_, ()>("wait", &2)
                .compensate_with("undo", &2, "undo 2")
                .await?;
            Ok(Payload::null())
        }))
        .activity_fn("do", |_, _| async { Ok(Payload::null()) })
        .activity_fn("wait", move |_, _| {
            st.fetch_add(1, Ordering::SeqCst);
            let g = g.clone();
            async move {
                g.notified().await;
                Ok(Payload::null())
            }
        })
        .build();
    let run = engine
        .start_named("two-step", Payload::null(), "t")
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "second step in flight", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    engine.shutdown().await;
    run
}

/// Issue 8, item 5: a run suspended for non-determinism is cancelled without its code: its open
/// step is closed, its compensations run newest first, and it ends cancelled.
#[tokio::test]
async fn cancel_of_a_suspended_run_compensates_from_the_history() {
    let backend = MemoryBackend::new();
    let run = run_left_in_flight(&backend).await;
    let undone = Arc::new(Mutex::new(Vec::new()));
    let u = undone.clone();
    let log = restart(&backend);
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("two-step", 1, |ctx| async move {
            ctx.step::<_, ()>("do", &5).await?;
            Ok(Payload::null())
        }))
        .activity_fn("undo", move |_, input| {
            u.lock().unwrap().push(input.0.clone());
            async { Ok(Payload::null()) }
        })
        .build();
    engine.resume_all().unwrap();
    assert!(matches!(
        outcome(&engine, run).await,
        RunOutcome::Suspended(_)
    ));
    engine
        .signal(run, "cancel", Payload::null(), "alice")
        .await
        .unwrap();
    assert!(matches!(
        outcome(&engine, run).await,
        RunOutcome::Cancelled(_)
    ));
    assert_eq!(*undone.lock().unwrap(), vec!["2", "1"]);
    let h = history(log.as_ref(), run);
    assert!(h.contains(&Event::AttemptInterrupted {
        step: StepRef::Workflow(1),
        attempt: 1
    }));
    assert!(h.iter().any(|e| matches!(
        e,
        Event::CompensationStarted {
            cancelled: true,
            ..
        }
    )));
    assert_eq!(kinds(log.as_ref(), run).last(), Some(&"RunCancelled"));
}

/// Issue 8, item 5: a run whose workflow version this binary lacks is refused on resume, but
/// `signal cancel` compensates it from the history (the compensation activities are registered),
/// durably: a second engine finishes compensations the first did not.
#[tokio::test]
async fn cancel_of_a_version_refused_run_compensates_without_the_code() {
    let backend = MemoryBackend::new();
    let run = run_left_in_flight(&backend).await;
    let undone = Arc::new(Mutex::new(Vec::new()));
    let log = restart(&backend);
    let build = |log: Arc<Log<MemoryBackend>>, fail_first: bool| {
        let u = undone.clone();
        Engine::builder(log)
            .workflow_dyn(wf("two-step", 2, |_| async { Ok(Payload::null()) }))
            .activity_fn("undo", move |_, input| {
                u.lock().unwrap().push(input.0.clone());
                let fail = fail_first && input.0 == "1";
                async move {
                    if fail {
                        futures::future::pending::<()>().await;
                    }
                    Ok(Payload::null())
                }
            })
            .build()
    };
    let engine = build(log.clone(), true);
    let report = engine.resume_all().unwrap();
    assert!(matches!(
        report.refused[..],
        [(r, runtime::Error::VersionMismatch { .. })] if r == run
    ));
    engine
        .signal(run, "cancel", Payload::null(), "alice")
        .await
        .unwrap();
    // The second compensation hangs: stop this engine there, as a crash would.
    wait_until(
        Duration::from_secs(30),
        "second compensation started",
        || undone.lock().unwrap().len() == 2,
    )
    .await;
    engine.shutdown().await;

    let log2 = restart(&backend);
    let engine2 = build(log2.clone(), false);
    let report = engine2.resume_all().unwrap();
    assert_eq!(report.resumed, vec![run], "{:?}", report.refused);
    assert!(matches!(
        outcome(&engine2, run).await,
        RunOutcome::Cancelled(_)
    ));
    assert_eq!(*undone.lock().unwrap(), vec!["2", "1", "1"]);
    assert!(!engine2.state(run).unwrap().needs_operator());
}

/// Issue 8, item 8: a step cancelled while it waits for its retry deadline is closed with
/// `StepFailed`, so the replay of the cancelled run is clean.
#[tokio::test]
async fn replay_of_a_run_cancelled_during_a_retry_backoff_is_clean() {
    let log = waymark_engine::memory_log();
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("backoff", 1, |ctx| async move {
            ctx.step::<_, ()>("flaky", &())
                .retry(RetryPolicy::default().initial_interval(Duration::from_secs(3600)))
                .await?;
            Ok(Payload::null())
        }))
        .activity_fn("flaky", |_, _| async {
            Err(activity::Error::retryable("503 from the API"))
        })
        .build();
    let run = engine
        .start_named("backoff", Payload::null(), "t")
        .await
        .unwrap();
    // Subscribed before the driver first runs (nothing awaited since the start); the record
    // arrives once the driver has gone on to wait for its retry deadline.
    let mut rx = engine.subscribe(run).expect("the run is active");
    loop {
        let r = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("the first attempt fails")
            .unwrap();
        if r.event.kind() == "AttemptFailed" {
            break;
        }
    }
    engine
        .signal(run, "cancel", Payload::null(), "alice")
        .await
        .unwrap();
    assert!(matches!(
        outcome(&engine, run).await,
        RunOutcome::Cancelled(_)
    ));
    let report = engine.replay(run).await.unwrap();
    assert_eq!(report.verdict, runtime::ReplayVerdict::Deterministic);
}

/// Issue 8, item 8: a step that failed once and waits paused for its next attempt, then is
/// cancelled, is closed with `StepFailed`, so the replay of the cancelled run is clean.
#[tokio::test]
async fn replay_of_a_run_cancelled_while_paused_before_a_retry_is_clean() {
    let log = waymark_engine::memory_log();
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicU32::new(0));
    let (g, c) = (gate.clone(), calls.clone());
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("paused", 1, |ctx| async move {
            ctx.step::<_, ()>("flaky", &())
                .retry(RetryPolicy::default().initial_interval(Duration::ZERO))
                .await?;
            Ok(Payload::null())
        }))
        .activity_fn("flaky", move |_, _| {
            c.fetch_add(1, Ordering::SeqCst);
            let g = g.clone();
            async move {
                g.notified().await;
                Err(activity::Error::retryable("503 from the API"))
            }
        })
        .build();
    let run = engine
        .start_named("paused", Payload::null(), "t")
        .await
        .unwrap();
    let mut rx = engine.subscribe(run).expect("the run is active");
    wait_until(Duration::from_secs(30), "first attempt running", || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    engine
        .signal(run, "pause", Payload::null(), "alice")
        .await
        .unwrap();
    gate.notify_one();
    // The record arrives once the driver, with no retry delay, holds paused before attempt 2.
    loop {
        let r = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("the first attempt fails")
            .unwrap();
        if r.event.kind() == "AttemptFailed" {
            break;
        }
    }
    engine
        .signal(run, "cancel", Payload::null(), "alice")
        .await
        .unwrap();
    assert!(matches!(
        outcome(&engine, run).await,
        RunOutcome::Cancelled(_)
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no attempt while paused");
    let report = engine.replay(run).await.unwrap();
    assert_eq!(report.verdict, runtime::ReplayVerdict::Deterministic);
}

/// Issue 8, item 8: a `join` that fails on one step drops its sibling still in flight; the
/// sibling is journaled as abandoned (`AttemptInterrupted`, `StepFailed`), and the replay of the
/// failed run is clean.
#[tokio::test]
async fn replay_of_a_join_that_dropped_a_sibling_in_flight_is_clean() {
    let log = waymark_engine::memory_log();
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("join", 1, |ctx| async move {
            let slow = ctx.step::<_, ()>("slow", &()).into_future();
            let fail = async {
                // Fails once the slow step is in flight.
                ctx.step::<_, ()>("fail", &()).await
            };
            futures::future::try_join(slow, fail).await?;
            Ok(Payload::null())
        }))
        .activity_fn("slow", |_, _| async {
            futures::future::pending::<()>().await;
            Ok(Payload::null())
        })
        .activity_fn("fail", |_, _| async {
            tokio::task::yield_now().await;
            Err(activity::Error::fatal("exit 1"))
        })
        .build();
    let run = engine
        .start_named("join", Payload::null(), "t")
        .await
        .unwrap();
    let RunOutcome::Failed(why) = outcome(&engine, run).await else {
        panic!()
    };
    assert!(why.contains("exit 1"), "{why}");
    let h = history(log.as_ref(), run);
    assert!(h.contains(&Event::AttemptInterrupted {
        step: StepRef::Workflow(0),
        attempt: 1
    }));
    assert!(h.iter().any(|e| matches!(e,
        Event::StepFailed { step: StepRef::Workflow(0), error } if error.starts_with(waymark_engine::core::ABANDONED))));
    let report = engine.replay(run).await.unwrap();
    assert_eq!(report.verdict, runtime::ReplayVerdict::Deterministic);

    // Code that waits for the abandoned step instead of dropping it diverges (and does not hang).
    let changed = Engine::builder(log.clone())
        .workflow_dyn(wf("join", 1, |ctx| async move {
            ctx.step::<_, ()>("slow", &()).await?;
            ctx.step::<_, ()>("fail", &()).await?;
            Ok(Payload::null())
        }))
        .build();
    let report = tokio::time::timeout(Duration::from_secs(60), changed.replay(run))
        .await
        .expect("replay of code waiting for an abandoned step ends")
        .unwrap();
    let runtime::ReplayVerdict::Diverged(SuspendReason::Nondeterminism { position, new, .. }) =
        report.verdict
    else {
        panic!("{:?}", report.verdict)
    };
    assert_eq!(
        (position, new.as_str()),
        (0, "the code waits for its result")
    );
}

/// Issue 8, item 13: with many parallel steps appending at once, a follower gets every record of
/// the run, in sequence order, none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_get_every_record_in_sequence_order_under_parallel_appends() {
    let log = waymark_engine::memory_log();
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("fan-out", 1, |ctx| async move {
            let _: () = ctx.wait_for_signal("go").await?;
            let steps = (0..64u32).map(|i| ctx.step::<_, u32>("echo", &i).into_future());
            futures::future::try_join_all(steps).await?;
            Ok(Payload::null())
        }))
        .activity_fn("echo", |_, input| async move { Ok(input) })
        .build();
    for round in 0..40 {
        let run = engine
            .start_named("fan-out", Payload::null(), "t")
            .await
            .unwrap();
        let mut rx = engine.subscribe(run).expect("the run is active");
        engine
            .signal(run, "go", Payload::null(), "t")
            .await
            .unwrap();
        let mut seqs = Vec::new();
        loop {
            let r = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("the run goes on")
                .expect("no record lost to lag");
            seqs.push(r.seq);
            if r.event.is_terminal() {
                break;
            }
        }
        let first = seqs[0];
        let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
        assert_eq!(
            seqs, expected,
            "round {round}: records out of order or missing"
        );
        assert_eq!(
            *seqs.last().unwrap() + 1,
            log.read(run).unwrap().len() as u64,
            "round {round}: the follower saw up to the last record"
        );
    }
}

/// Issue 8, item 14: a crash kept `AttemptFailed` (no next attempt) but lost the `StepFailed` of
/// the same batch: the step has failed, and resuming does not call the activity again.
#[tokio::test]
async fn attempt_failed_without_next_attempt_is_final_after_a_crash() {
    let canned = waymark_engine::testing::canned::gave_up_without_step_failed();
    let state = RunState::from_records(&canned.build()).unwrap();
    assert_eq!(
        state.step_next(
            StepRef::Workflow(0),
            &waymark_engine::core::StepSpec {
                activity: "restart".into(),
                label: "restart".into(),
                input: Payload("\"n1\"".into()),
                compensation: None,
            },
            state.updated_at,
            true
        ),
        waymark_engine::core::Decision::Replay(waymark_engine::core::Answer::Step(Err(
            "permission denied".into()
        )))
    );

    let log = waymark_engine::memory_log();
    let run = RunId::new();
    let events: Vec<Event> = canned.build().into_iter().map(|r| r.event).collect();
    log.append(run, events).await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("gave-up", 1, |ctx| async move {
            ctx.step::<_, ()>("restart", &"n1").await?;
            Ok(Payload::null())
        }))
        .activity_fn("restart", move |_, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(Payload::null()) }
        })
        .build();
    engine.resume_all().unwrap();
    let RunOutcome::Failed(why) = outcome(&engine, run).await else {
        panic!("the step had failed")
    };
    assert!(why.contains("permission denied"), "{why}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no attempt after a final failure"
    );
}

/// Issue 8, item 2: a huge retry delay or timer saturates instead of panicking in the core.
#[test]
fn huge_retry_delays_and_timers_saturate() {
    let state =
        RunState::from_records(&waymark_engine::testing::canned::waiting_for_retry().build())
            .unwrap();
    let now = state.updated_at;
    let policy = RetryPolicy {
        max_attempts: None,
        ..RetryPolicy::default()
    };
    let next = state.decide_retry(StepRef::Workflow(0), &policy, 2, true, now, Duration::MAX);
    assert_eq!(next, Some(chrono::DateTime::<chrono::Utc>::MAX_UTC));
    let big = Duration::from_secs(u64::MAX / 4);
    let max = chrono::DateTime::<chrono::Utc>::MAX_UTC;
    assert_eq!(
        state.decide_sleep(7, big, now),
        waymark_engine::core::Decision::Append {
            events: vec![Event::TimerStarted {
                position: 7,
                fire_at: max
            }],
            then: waymark_engine::core::Action::WaitUntil(max),
        }
    );
}

/// Review finding after one flush per step: two operators cancelling a suspended run at once
/// (the web page and the CLI). The first cancel's write starts the run's driver; the second,
/// having found no driver, wrote to the log directly and took a sequence number the new driver
/// had decided one of its own events at: the driver skipped the cancel as its own, applied its
/// own event twice and the run stopped with an invalid history. Looped to hit the window; each
/// run must end cancelled with each compensation run once and a history that folds and replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cancels_of_a_suspended_run_keep_the_history_valid() {
    let log = waymark_engine::memory_log();
    let undone = Arc::new(Mutex::new(Vec::new()));
    let u = undone.clone();
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("buggy", 1, |ctx| async move {
            ctx.step::<_, ()>("do", &1)
                .compensate_with("undo", &1, "undo 1")
                .await?;
            ctx.register_compensation("undo", &2, "undo 2").await?;
            let weights: Vec<u32> = ctx.step("read", &()).await?;
            Ok(Payload::encode(&weights[3]).unwrap())
        }))
        .activity_fn("do", |_, _| async { Ok(Payload::null()) })
        .activity_fn("read", |_, _| async { Ok(Payload("[100,0]".into())) })
        .activity_fn("undo", move |_, input| {
            u.lock().unwrap().push(input.0.clone());
            async { Ok(Payload::null()) }
        })
        .build();
    for round in 0..40 {
        undone.lock().unwrap().clear();
        let run = engine
            .start_named("buggy", Payload::null(), "t")
            .await
            .unwrap();
        assert!(
            matches!(outcome(&engine, run).await, RunOutcome::Suspended(_)),
            "round {round}: the run is suspended"
        );
        let (e1, e2) = (engine.clone(), engine.clone());
        let web = tokio::spawn(async move {
            e1.signal(run, "cancel", Payload::encode("web").unwrap(), "alice")
                .await
        });
        let cli = tokio::spawn(async move {
            e2.signal(run, "cancel", Payload::encode("cli").unwrap(), "bob")
                .await
        });
        for sent in [web.await.unwrap(), cli.await.unwrap()] {
            // The second may come after the run has ended: refused as finished, never lost.
            if let Err(e) = sent {
                assert!(
                    matches!(e, runtime::Error::Finished { .. }),
                    "round {round}: {e}"
                );
            }
        }
        let end = outcome(&engine, run).await;
        let records = log.read(run).unwrap();
        let state = RunState::from_records(&records)
            .unwrap_or_else(|e| panic!("round {round}: the history of {run} is invalid: {e}"));
        assert!(
            matches!(end, RunOutcome::Cancelled(_)),
            "round {round}: {end:?}; history {:?}",
            kinds(log.as_ref(), run)
        );
        assert_eq!(state.status.name(), "cancelled", "round {round}");
        assert_eq!(
            *undone.lock().unwrap(),
            vec!["2", "1"],
            "round {round}: each compensation once, newest first"
        );
        engine
            .replay(run)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the history of {run} replays: {e}"));
    }
}
