//! The driver end to end on the memory log: retries, timeouts, heartbeats, signals, timers,
//! compensation, restarts, non-determinism and versioning.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use waymark_engine::activity;
use waymark_engine::clock::{SharedClock, TokioClock};
use waymark_engine::event::{Event, Payload, StepRef, SuspendReason};
use waymark_engine::log::memory::MemoryBackend;
use waymark_engine::log::{EventLog, Log};
use waymark_engine::runtime::{self, EngineBuilder};
use waymark_engine::workflow::{self, DynWorkflow};
use waymark_engine::{Engine, RetryPolicy, RunId, RunOutcome};

use crate::util::{fast_retry, wait_until, wf};

/// Idempotency key and attempt of each call.
type CallLog = Vec<(String, u32)>;

/// Counts calls per activity name.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<String, CallLog>>>);

impl Calls {
    fn record(&self, name: &str, ctx: &activity::Context) {
        self.0
            .lock()
            .unwrap()
            .entry(name.into())
            .or_default()
            .push((ctx.idempotency_key(), ctx.attempt));
    }
    fn count(&self, name: &str) -> usize {
        self.0.lock().unwrap().get(name).map_or(0, Vec::len)
    }
    fn get(&self, name: &str) -> Vec<(String, u32)> {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

/// An activity that records its call and echoes its input.
fn echo(b: EngineBuilder, name: &'static str, calls: &Calls) -> EngineBuilder {
    let calls = calls.clone();
    b.activity_fn(name, move |ctx, input| {
        calls.record(name, &ctx);
        async move { Ok(input) }
    })
}

/// An activity that records its call and blocks until `gate` is notified.
fn gated(b: EngineBuilder, name: &'static str, calls: &Calls, gate: &Arc<Notify>) -> EngineBuilder {
    let calls = calls.clone();
    let gate = gate.clone();
    b.activity_fn(name, move |ctx, input| {
        calls.record(name, &ctx);
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok(input)
        }
    })
}

/// The engine's clock for the tests on paused time (`start_paused`): wall time that moves only
/// with tokio's clock, so timers, timeouts, heartbeats and retry delays pass without waiting and
/// the journaled times are exact.
fn paused_clock() -> SharedClock {
    Arc::new(TokioClock::starting_at(
        chrono::DateTime::parse_from_rfc3339("2026-01-05T02:00:00Z")
            .unwrap()
            .to_utc(),
    ))
}

fn kinds(log: &dyn EventLog, run: RunId) -> Vec<&'static str> {
    log.read(run)
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect()
}

fn history(log: &dyn EventLog, run: RunId) -> Vec<Event> {
    log.read(run)
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect()
}

fn three_steps() -> Arc<dyn DynWorkflow> {
    wf("three", 1, |ctx| async move {
        let a: u32 = ctx.step("a", &1).await?;
        let b: u32 = ctx.step("b", &(a + 1)).await?;
        let c: u32 = ctx.step("c", &(b + 1)).await?;
        Ok(Payload::encode(&c).unwrap())
    })
}

#[tokio::test]
async fn steps_run_once_in_order_and_the_run_completes() {
    let log = waymark_engine::memory_log();
    let calls = Calls::default();
    let mut b = Engine::builder(log.clone()).workflow_dyn(three_steps());
    for n in ["a", "b", "c"] {
        b = echo(b, n, &calls);
    }
    let engine = b.build();
    let run = engine
        .start_named("three", Payload::null(), "alice")
        .await
        .unwrap();
    assert_eq!(
        engine.wait(run).await.unwrap(),
        RunOutcome::Completed(Payload("3".into()))
    );
    for n in ["a", "b", "c"] {
        assert_eq!(calls.count(n), 1, "{n} called once");
    }
    assert_eq!(
        kinds(log.as_ref(), run),
        [
            "RunStarted",
            "StepScheduled",
            "AttemptStarted",
            "StepCompleted",
            "StepScheduled",
            "AttemptStarted",
            "StepCompleted",
            "StepScheduled",
            "AttemptStarted",
            "StepCompleted",
            "RunCompleted"
        ]
    );
    let Event::RunStarted { started_by, .. } = &history(log.as_ref(), run)[0] else {
        panic!()
    };
    assert_eq!(started_by, "alice");
}

/// Issue 12: the workflow code knows who started its run (to require a different approver),
/// from the history, so a replay sees the same starter.
#[tokio::test]
async fn the_workflow_sees_who_started_the_run_also_on_replay() {
    let log = waymark_engine::memory_log();
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("starter", 1, |ctx| async move {
            let by = ctx.started_by();
            ctx.step::<_, String>("echo", &by).await?;
            Ok(Payload::encode(&by).unwrap())
        }))
        .activity_fn("echo", |_, input| async move { Ok(input) })
        .build();
    let run = engine
        .start_named("starter", Payload::null(), "alice")
        .await
        .unwrap();
    assert_eq!(
        engine.wait(run).await.unwrap(),
        RunOutcome::Completed(Payload("\"alice\"".into()))
    );
    let report = engine.replay(run).await.unwrap();
    assert_eq!(report.verdict, runtime::ReplayVerdict::Deterministic);
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried_with_journaled_deadlines() {
    let log = waymark_engine::memory_log();
    let tries = Arc::new(AtomicU32::new(0));
    let t = tries.clone();
    let engine = Engine::builder(log.clone())
        .clock(paused_clock())
        .workflow_dyn(wf("flaky", 1, |ctx| async move {
            let v: String = ctx.step("flaky", &()).retry(fast_retry()).await?;
            Ok(Payload::encode(&v).unwrap())
        }))
        .activity_fn("flaky", move |ctx, _| {
            let n = t.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(activity::Error::retryable(format!(
                        "503 from upstream (attempt {})",
                        ctx.attempt
                    )))
                } else {
                    Ok(Payload::encode(&format!("ok on attempt {}", ctx.attempt)).unwrap())
                }
            }
        })
        .build();
    let run = engine
        .start_named("flaky", Payload::null(), "t")
        .await
        .unwrap();
    assert_eq!(
        engine.wait(run).await.unwrap(),
        RunOutcome::Completed(Payload("\"ok on attempt 3\"".into()))
    );
    let failures: Vec<_> = history(log.as_ref(), run)
        .into_iter()
        .filter_map(|e| match e {
            Event::AttemptFailed {
                attempt,
                next_retry_at,
                retryable,
                ..
            } => Some((attempt, retryable, next_retry_at.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(failures, vec![(1, true, true), (2, true, true)]);
}

#[tokio::test]
async fn non_retryable_failure_stops_at_once_and_compensates_in_reverse() {
    let log = waymark_engine::memory_log();
    let calls = Calls::default();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut b = Engine::builder(log.clone()).workflow_dyn(wf("saga", 1, |ctx| async move {
        ctx.step::<_, u32>("do", &1)
            .compensate_with("undo", &1, "undo 1")
            .await?;
        ctx.register_compensation("undo", &2, "undo 2").await?;
        ctx.step::<_, u32>("do", &3)
            .compensate_with("undo", &3, "undo 3")
            .await?;
        ctx.step::<_, ()>("boom", &()).retry(fast_retry()).await?;
        Ok(Payload::null())
    }));
    b = echo(b, "do", &calls);
    let o = order.clone();
    b = b.activity_fn("undo", move |_, input| {
        o.lock().unwrap().push(input.0.clone());
        async move { Ok(Payload::null()) }
    });
    let c = calls.clone();
    b = b.activity_fn("boom", move |ctx, _| {
        c.record("boom", &ctx);
        async move {
            Err(activity::Error::fatal(
                "permission denied on node n1: check the SSH user",
            ))
        }
    });
    let engine = b.build();
    let run = engine
        .start_named("saga", Payload::null(), "t")
        .await
        .unwrap();
    let RunOutcome::Failed(why) = engine.wait(run).await.unwrap() else {
        panic!("should fail")
    };
    assert!(why.contains("permission denied"), "{why}");
    assert_eq!(calls.count("boom"), 1, "no retry of a non-retryable error");
    assert_eq!(
        *order.lock().unwrap(),
        vec!["3", "2", "1"],
        "compensations newest first"
    );
    let h = kinds(log.as_ref(), run);
    assert_eq!(h.last(), Some(&"RunFailed"));
    assert!(h.contains(&"CompensationStarted"));
}

#[tokio::test(start_paused = true)]
async fn start_to_close_timeout_fails_the_attempt_as_retryable() {
    let log = waymark_engine::memory_log();
    let engine = Engine::builder(log.clone())
        .clock(paused_clock())
        .workflow_dyn(wf("slow", 1, |ctx| async move {
            ctx.step::<_, ()>("hang", &())
                .start_to_close(Duration::from_millis(30))
                .retry(fast_retry().max_attempts(2))
                .await?;
            Ok(Payload::null())
        }))
        .activity_fn("hang", |_, _| async {
            futures::future::pending::<()>().await;
            Ok(Payload::null())
        })
        .build();
    let run = engine
        .start_named("slow", Payload::null(), "t")
        .await
        .unwrap();
    let RunOutcome::Failed(why) = engine.wait(run).await.unwrap() else {
        panic!()
    };
    assert!(why.contains("timed out"), "{why}");
    let errors: Vec<bool> = history(log.as_ref(), run)
        .into_iter()
        .filter_map(|e| match e {
            Event::AttemptFailed { retryable, .. } => Some(retryable),
            _ => None,
        })
        .collect();
    assert_eq!(errors, vec![true, true], "two attempts, both timed out");
}

#[tokio::test(start_paused = true)]
async fn missing_heartbeats_fail_the_attempt_and_steady_heartbeats_keep_it_alive() {
    let log = waymark_engine::memory_log();
    let engine = Engine::builder(log.clone())
        .clock(paused_clock())
        .workflow_dyn(wf("beats", 1, |ctx| async move {
            ctx.step::<_, ()>("beating", &())
                .heartbeat_timeout(Duration::from_millis(200))
                .await?;
            ctx.step::<_, ()>("silent", &())
                .heartbeat_timeout(Duration::from_millis(30))
                .retry(RetryPolicy::no_retry())
                .await?;
            Ok(Payload::null())
        }))
        .activity_fn("beating", |ctx, _| async move {
            for i in 0..10 {
                ctx.heartbeat(Some(format!("{}%", i * 10)));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(Payload::null())
        })
        .activity_fn("silent", |_, _| async {
            futures::future::pending::<()>().await;
            Ok(Payload::null())
        })
        .build();
    let run = engine
        .start_named("beats", Payload::null(), "t")
        .await
        .unwrap();
    let RunOutcome::Failed(why) = engine.wait(run).await.unwrap() else {
        panic!()
    };
    assert!(why.contains("silent") && why.contains("heartbeat"), "{why}");
    let completed = history(log.as_ref(), run)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Event::StepCompleted {
                    step: StepRef::Workflow(0),
                    ..
                }
            )
        })
        .count();
    assert_eq!(completed, 1, "the step that heartbeats completes");
}

#[tokio::test]
async fn approval_signal_releases_the_gate_and_is_journaled() {
    let log = waymark_engine::memory_log();
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("gate", 1, |ctx| async move {
            let note: String = ctx.wait_for_signal("approve").await?;
            Ok(Payload::encode(&note).unwrap())
        }))
        .build();
    let run = engine
        .start_named("gate", Payload::null(), "t")
        .await
        .unwrap();
    engine
        .signal(run, "approve", Payload::encode("go ahead").unwrap(), "bob")
        .await
        .unwrap();
    assert_eq!(
        engine.wait(run).await.unwrap(),
        RunOutcome::Completed(Payload("\"go ahead\"".into()))
    );
    assert!(kinds(log.as_ref(), run).contains(&"SignalConsumed"));
}

#[tokio::test]
async fn cancel_abandons_the_step_in_flight_and_compensates() {
    let log = waymark_engine::memory_log();
    let calls = Calls::default();
    let gate = Arc::new(Notify::new());
    let mut b = Engine::builder(log.clone()).workflow_dyn(wf("cancel-me", 1, |ctx| async move {
        ctx.step::<_, u32>("traffic", &1)
            .compensate_with("traffic.back", &1, "traffic back to B")
            .await?;
        ctx.step::<_, u32>("long", &2).await?;
        Ok(Payload::null())
    }));
    b = echo(b, "traffic", &calls);
    b = echo(b, "traffic.back", &calls);
    b = gated(b, "long", &calls, &gate);
    let engine = b.build();
    let run = engine
        .start_named("cancel-me", Payload::null(), "t")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "long step started", || {
        calls.count("long") == 1
    })
    .await;
    engine
        .signal(
            run,
            "cancel",
            Payload::encode("window closed").unwrap(),
            "carol",
        )
        .await
        .unwrap();
    let RunOutcome::Cancelled(why) = engine.wait(run).await.unwrap() else {
        panic!()
    };
    assert!(
        why.contains("carol") && why.contains("window closed"),
        "{why}"
    );
    assert_eq!(calls.count("traffic.back"), 1);
    assert_eq!(kinds(log.as_ref(), run).last(), Some(&"RunCancelled"));
}

#[tokio::test]
async fn pause_holds_the_next_step_until_resume() {
    let log = waymark_engine::memory_log();
    let calls = Calls::default();
    let gate = Arc::new(Notify::new());
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = asked.clone();
    let mut b = Engine::builder(log.clone()).workflow_dyn(wf("pausable", 1, move |ctx| {
        let flag = flag.clone();
        async move {
            ctx.step::<_, u32>("first", &1).await?;
            flag.store(true, Ordering::SeqCst);
            ctx.step::<_, u32>("second", &2).await?;
            Ok(Payload::null())
        }
    }));
    b = gated(b, "first", &calls, &gate);
    b = echo(b, "second", &calls);
    let engine = b.build();
    let run = engine
        .start_named("pausable", Payload::null(), "t")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "first step started", || {
        calls.count("first") == 1
    })
    .await;
    engine
        .signal(run, "pause", Payload::null(), "ops")
        .await
        .unwrap();
    gate.notify_one();
    // The code has the first result and asks for the second step: the pause holds it (the
    // assertion below does not depend on how long we look: the order of the journal does).
    wait_until(
        Duration::from_secs(10),
        "the code asked for the second step",
        || asked.load(Ordering::SeqCst),
    )
    .await;
    engine
        .signal(run, "resume", Payload::null(), "ops")
        .await
        .unwrap();
    assert!(matches!(
        engine.wait(run).await.unwrap(),
        RunOutcome::Completed(_)
    ));
    assert_eq!(calls.count("second"), 1);
    let h = history(log.as_ref(), run);
    let resumed = position_of(
        &h,
        |e| matches!(e, Event::SignalReceived { name, .. } if name == "resume"),
    )
    .unwrap();
    let second = position_of(
        &h,
        |e| matches!(e, Event::StepScheduled { activity, .. } if activity == "second"),
    )
    .unwrap();
    assert!(
        resumed < second,
        "paused: the next step starts only after resume: {:?}",
        kinds(log.as_ref(), run)
    );
}

#[tokio::test]
async fn parallel_steps_run_concurrently() {
    let log = waymark_engine::memory_log();
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("fan", 1, |ctx| async move {
            let steps = (0..3).map(|i| ctx.step::<_, u32>("meet", &i).into_future());
            let outs = futures::future::try_join_all(steps).await?;
            Ok(Payload::encode(&outs).unwrap())
        }))
        .activity_fn("meet", move |_, input| {
            let b = barrier.clone();
            async move {
                b.wait().await;
                Ok(input)
            }
        })
        .build();
    let run = engine
        .start_named("fan", Payload::null(), "t")
        .await
        .unwrap();
    assert_eq!(
        engine.wait(run).await.unwrap(),
        RunOutcome::Completed(Payload("[0,1,2]".into()))
    );
}

use std::future::IntoFuture;

/// A second engine over the same memory backend: what a restarted process finds.
fn restart(backend: &MemoryBackend) -> Arc<Log<MemoryBackend>> {
    Arc::new(Log::new(backend.clone()))
}

#[tokio::test]
async fn restart_retries_the_in_flight_step_with_the_same_key_and_keeps_recorded_values() {
    let backend = MemoryBackend::new();
    let calls = Calls::default();
    let gate = Arc::new(Notify::new());
    let body = || {
        wf("resumable", 1, |ctx| async move {
            let t = ctx.now().await?;
            let id = ctx.uuid().await?;
            ctx.step::<_, u32>("done-before", &1).await?;
            ctx.step::<_, u32>("in-flight", &2).await?;
            Ok(Payload::encode(&format!("{id}@{}", t.to_rfc3339())).unwrap())
        })
    };
    let engine1 = {
        let b = Engine::builder(restart(&backend)).workflow_dyn(body());
        let b = echo(b, "done-before", &calls);
        gated(b, "in-flight", &calls, &gate).build()
    };
    let run = engine1
        .start_named("resumable", Payload::null(), "t")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "in-flight step started", || {
        calls.count("in-flight") == 1
    })
    .await;
    let recorded_before: Vec<Event> = history(engine1.log().as_ref(), run);
    engine1.shutdown().await;
    drop(engine1);

    let log2 = restart(&backend);
    let engine2 = {
        let b = Engine::builder(log2.clone()).workflow_dyn(body());
        let b = echo(b, "done-before", &calls);
        echo(b, "in-flight", &calls).build()
    };
    let report = engine2.resume_all().unwrap();
    assert_eq!(report.resumed, vec![run]);
    let RunOutcome::Completed(out) = engine2.wait(run).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        calls.count("done-before"),
        1,
        "a journaled step is never re-run"
    );
    let in_flight = calls.get("in-flight");
    assert_eq!(in_flight.len(), 2);
    assert_eq!(in_flight[0].0, in_flight[1].0, "same idempotency key");
    assert_eq!(
        (in_flight[0].1, in_flight[1].1),
        (1, 2),
        "attempt numbers go on"
    );
    let h = history(log2.as_ref(), run);
    assert!(h.contains(&Event::AttemptInterrupted {
        step: StepRef::Workflow(3),
        attempt: 1
    }));
    let recorded = |evs: &[Event]| -> Vec<String> {
        evs.iter()
            .filter_map(|e| match e {
                Event::ValueRecorded { value, .. } => Some(value.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        recorded(&h),
        recorded(&recorded_before),
        "now() and uuid() replayed, not redrawn"
    );
    assert!(out.0.contains(&recorded(&h)[1]));
}

#[tokio::test(start_paused = true)]
async fn durable_timer_keeps_its_deadline_across_restart() {
    let backend = MemoryBackend::new();
    let clock = paused_clock();
    let body = || {
        wf("sleeper", 1, |ctx| async move {
            ctx.sleep(Duration::from_millis(300)).await?;
            Ok(Payload::null())
        })
    };
    let engine1 = Engine::builder(restart(&backend))
        .clock(clock.clone())
        .workflow_dyn(body())
        .build();
    let run = engine1
        .start_named("sleeper", Payload::null(), "t")
        .await
        .unwrap();
    // Followed, not polled: a poll's sleeps would move paused time on while the timer's append
    // is with the log's writer thread. The driver has not run yet (one thread, no await since
    // the start), so no record is missed.
    let mut records = engine1.subscribe(run).expect("the run is driven");
    while !matches!(
        records.recv().await.expect("the run's records").event,
        Event::TimerStarted { .. }
    ) {}
    engine1.shutdown().await;
    assert!(
        !kinds(engine1.log().as_ref(), run).contains(&"TimerFired"),
        "the timer has not fired before the restart"
    );
    let log2 = restart(&backend);
    let engine2 = Engine::builder(log2.clone())
        .clock(clock)
        .workflow_dyn(body())
        .build();
    engine2.resume_all().unwrap();
    assert!(matches!(
        engine2.wait(run).await.unwrap(),
        RunOutcome::Completed(_)
    ));
    let records = log2.read(run).unwrap();
    let started: Vec<_> = records
        .iter()
        .filter(|r| matches!(r.event, Event::TimerStarted { .. }))
        .collect();
    assert_eq!(started.len(), 1, "the timer was not started again");
    let Event::TimerStarted { fire_at, .. } = &started[0].event else {
        panic!()
    };
    assert_eq!(
        *fire_at - started[0].at,
        chrono::Duration::milliseconds(300),
        "the deadline is journaled when the timer starts"
    );
    let fired_at = records
        .iter()
        .find(|r| matches!(r.event, Event::TimerFired { .. }))
        .unwrap()
        .at;
    assert!(
        fired_at >= *fire_at,
        "fired at {fired_at}, before its deadline {fire_at}"
    );
}

#[tokio::test]
async fn changed_code_is_suspended_with_both_steps_side_by_side() {
    let backend = MemoryBackend::new();
    let calls = Calls::default();
    let gate = Arc::new(Notify::new());
    let engine1 = {
        let b = Engine::builder(restart(&backend)).workflow_dyn(wf("drift", 1, |ctx| async move {
            ctx.step::<_, u32>("scale", &3).await?;
            ctx.step::<_, u32>("wait", &0).await?;
            Ok(Payload::null())
        }));
        let b = echo(b, "scale", &calls);
        gated(b, "wait", &calls, &gate).build()
    };
    let run = engine1
        .start_named("drift", Payload::null(), "t")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "second step started", || {
        calls.count("wait") == 1
    })
    .await;
    engine1.shutdown().await;

    let log2 = restart(&backend);
    let engine2 = {
        let b = Engine::builder(log2.clone()).workflow_dyn(wf("drift", 1, |ctx| async move {
            ctx.step::<_, u32>("scale", &5).await?;
            Ok(Payload::null())
        }));
        echo(b, "scale", &calls).build()
    };
    engine2.resume_all().unwrap();
    let RunOutcome::Suspended(SuspendReason::Nondeterminism {
        position,
        recorded,
        new,
    }) = engine2.wait(run).await.unwrap()
    else {
        panic!("expected a suspension")
    };
    assert_eq!(
        (position, recorded.as_str(), new.as_str()),
        (0, "step scale(3)", "step scale(5)")
    );
    assert_eq!(
        calls.count("scale"),
        1,
        "nothing ran for the diverging code"
    );
    assert_eq!(kinds(log2.as_ref(), run).last(), Some(&"RunSuspended"));
    assert!(
        log2.open_runs().unwrap().contains(&run),
        "a suspended run stays open for an operator"
    );
}

#[tokio::test]
async fn run_of_an_unavailable_version_is_refused_and_left_untouched() {
    let backend = MemoryBackend::new();
    let gate = Arc::new(Notify::new());
    let calls = Calls::default();
    let engine1 = {
        let b =
            Engine::builder(restart(&backend)).workflow_dyn(wf("versioned", 1, |ctx| async move {
                ctx.step::<_, u32>("x", &1).await?;
                Ok(Payload::null())
            }));
        gated(b, "x", &calls, &gate).build()
    };
    let run = engine1
        .start_named("versioned", Payload::null(), "t")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "step started", || {
        calls.count("x") == 1
    })
    .await;
    engine1.shutdown().await;
    let log2 = restart(&backend);
    let before = log2.read(run).unwrap().len();
    let engine2 = Engine::builder(log2.clone())
        .workflow_dyn(wf("versioned", 2, |_| async { Ok(Payload::null()) }))
        .build();
    let report = engine2.resume_all().unwrap();
    assert!(report.resumed.is_empty());
    let (r, err) = &report.refused[0];
    assert_eq!(*r, run);
    assert!(matches!(
        err,
        runtime::Error::VersionMismatch { recorded: 1, .. }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("version 1") && msg.contains("version(s) 2"),
        "{msg}"
    );
    assert_eq!(log2.read(run).unwrap().len(), before, "nothing appended");
}

#[tokio::test]
async fn crash_during_compensation_resumes_the_remaining_compensations() {
    let backend = MemoryBackend::new();
    let calls = Calls::default();
    let gate = Arc::new(Notify::new());
    let body = || {
        wf("undo-crash", 1, |ctx| async move {
            ctx.step::<_, u32>("do", &0)
                .compensate_with("undo0", &0, "undo 0")
                .await?;
            ctx.step::<_, u32>("do", &1)
                .compensate_with("undo1", &1, "undo 1")
                .await?;
            ctx.step::<_, ()>("fail", &())
                .retry(RetryPolicy::no_retry())
                .await?;
            Ok(Payload::null())
        })
    };
    let fail = |b: EngineBuilder| {
        b.activity_fn("fail", |_, _| async {
            Err(activity::Error::fatal("exit status 3"))
        })
    };
    let engine1 = {
        let b = fail(Engine::builder(restart(&backend)).workflow_dyn(body()));
        let b = echo(b, "do", &calls);
        let b = echo(b, "undo1", &calls);
        gated(b, "undo0", &calls, &gate).build()
    };
    let run = engine1
        .start_named("undo-crash", Payload::null(), "t")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "second compensation started",
        || calls.count("undo0") == 1,
    )
    .await;
    engine1.shutdown().await;
    let log2 = restart(&backend);
    let engine2 = {
        let b = fail(Engine::builder(log2.clone()).workflow_dyn(body()));
        let b = echo(b, "do", &calls);
        let b = echo(b, "undo1", &calls);
        echo(b, "undo0", &calls).build()
    };
    engine2.resume_all().unwrap();
    let RunOutcome::Failed(why) = engine2.wait(run).await.unwrap() else {
        panic!()
    };
    assert!(why.contains("exit status 3"), "{why}");
    assert_eq!(calls.count("do"), 2, "forward steps not re-run");
    assert_eq!(calls.count("undo1"), 1, "finished compensation not re-run");
    assert_eq!(calls.count("undo0"), 2, "interrupted compensation retried");
    let keys = calls.get("undo0");
    assert_eq!(keys[0].0, keys[1].0);
}

#[tokio::test]
async fn failed_compensation_is_reported_for_an_operator() {
    let log = waymark_engine::memory_log();
    let engine = Engine::builder(log.clone())
        .workflow_dyn(wf("stuck", 1, |ctx| async move {
            ctx.register_compensation("undo", &(), "traffic back to zone B")
                .await?;
            Err(workflow::Error::failed("cluster unhealthy"))
        }))
        .activity_fn("undo", |_, _| async {
            Err(activity::Error::fatal("listener not found"))
        })
        .build();
    let run = engine
        .start_named("stuck", Payload::null(), "t")
        .await
        .unwrap();
    let RunOutcome::Failed(why) = engine.wait(run).await.unwrap() else {
        panic!()
    };
    assert!(
        why.contains("cluster unhealthy")
            && why.contains("COMPENSATION INCOMPLETE")
            && why.contains("traffic back to zone B"),
        "{why}"
    );
}

#[tokio::test]
async fn unknown_workflow_names_the_known_ones() {
    let engine = Engine::builder(waymark_engine::memory_log())
        .workflow_dyn(three_steps())
        .build();
    let err = engine
        .start_named("nope", Payload::null(), "t")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no workflow named \"nope\" in this binary (known: three v1)"
    );
}

#[tokio::test]
async fn signal_to_a_finished_run_is_refused() {
    let log = waymark_engine::memory_log();
    let calls = Calls::default();
    let mut b = Engine::builder(log.clone()).workflow_dyn(three_steps());
    for n in ["a", "b", "c"] {
        b = echo(b, n, &calls);
    }
    let engine = b.build();
    let run = engine
        .start_named("three", Payload::null(), "t")
        .await
        .unwrap();
    engine.wait(run).await.unwrap();
    let err = engine
        .signal(run, "cancel", Payload::null(), "t")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("already ended (completed)"),
        "{err}"
    );
}

#[tokio::test]
async fn replay_of_a_finished_run_calls_nothing_and_reports_divergence_side_by_side() {
    let backend = MemoryBackend::new();
    let calls = Calls::default();
    let mut b = Engine::builder(restart(&backend)).workflow_dyn(three_steps());
    for n in ["a", "b", "c"] {
        b = echo(b, n, &calls);
    }
    let engine = b.build();
    let run = engine
        .start_named("three", Payload::null(), "t")
        .await
        .unwrap();
    engine.wait(run).await.unwrap();
    let before = engine.log().read(run).unwrap().len();
    let report = engine.replay(run).await.unwrap();
    assert_eq!(report.verdict, runtime::ReplayVerdict::Deterministic);
    assert_eq!((report.events, report.positions), (before, 3));
    assert_eq!(
        calls.count("a") + calls.count("b") + calls.count("c"),
        3,
        "replay called no activity"
    );
    assert_eq!(
        engine.log().read(run).unwrap().len(),
        before,
        "replay appended nothing"
    );

    // A build whose second step changed.
    let changed = Engine::builder(restart(&backend))
        .workflow_dyn(wf("three", 1, |ctx| async move {
            let a: u32 = ctx.step("a", &1).await?;
            let _: u32 = ctx.step("b", &(a + 10)).await?;
            Ok(Payload::null())
        }))
        .build();
    let runtime::ReplayVerdict::Diverged(SuspendReason::Nondeterminism {
        position,
        recorded,
        new,
    }) = changed.replay(run).await.unwrap().verdict
    else {
        panic!("expected divergence")
    };
    assert_eq!(
        (position, recorded.as_str(), new.as_str()),
        (1, "step b(2)", "step b(11)")
    );

    // A build with one more step than the run had.
    let longer = Engine::builder(restart(&backend))
        .workflow_dyn(wf("three", 1, |ctx| async move {
            for (n, i) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
                let _: u32 = ctx.step(n, &i).await?;
            }
            Ok(Payload::null())
        }))
        .build();
    let runtime::ReplayVerdict::Diverged(SuspendReason::Nondeterminism { new, .. }) =
        longer.replay(run).await.unwrap().verdict
    else {
        panic!("expected divergence")
    };
    assert_eq!(new, "step d(4)");
}

/// An activity that records its call, waits for `gate`, then fails (not retryable).
fn gated_failure(
    b: EngineBuilder,
    name: &'static str,
    calls: &Calls,
    gate: &Arc<Notify>,
) -> EngineBuilder {
    let calls = calls.clone();
    let gate = gate.clone();
    b.activity_fn(name, move |ctx, _| {
        calls.record(name, &ctx);
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Err(activity::Error::fatal("zone B alarms"))
        }
    })
}

fn position_of(events: &[Event], what: impl Fn(&Event) -> bool) -> Option<usize> {
    events.iter().position(what)
}

#[tokio::test]
async fn hold_journals_the_failure_of_the_current_step_and_compensates_only_after_resume() {
    let log = waymark_engine::memory_log();
    let calls = Calls::default();
    let gate = Arc::new(Notify::new());
    let returned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = returned.clone();
    let mut b = Engine::builder(log.clone()).workflow_dyn(wf("holdable", 1, move |ctx| {
        let flag = flag.clone();
        async move {
            let r = ctx
                .step::<_, u32>("first", &1)
                .retry(RetryPolicy::default().max_attempts(1))
                .compensate_with("undo", &1, "undo first")
                .await;
            flag.store(true, Ordering::SeqCst);
            r?;
            Ok(Payload::null())
        }
    }));
    b = gated_failure(b, "first", &calls, &gate);
    b = echo(b, "undo", &calls);
    let engine = b.build();
    let run = engine
        .start_named("holdable", Payload::null(), "t")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "first step started", || {
        calls.count("first") == 1
    })
    .await;
    engine
        .signal(
            run,
            "hold",
            Payload::encode("zone B looks wrong").unwrap(),
            "alice",
        )
        .await
        .unwrap();
    assert_eq!(
        engine.state(run).unwrap().held,
        Some(("alice".to_owned(), "zone B looks wrong".to_owned()))
    );
    gate.notify_one();
    wait_until(
        Duration::from_secs(10),
        "the workflow code saw the failure",
        || returned.load(Ordering::SeqCst) && kinds(log.as_ref(), run).contains(&"StepFailed"),
    )
    .await;
    let state = engine.state(run).unwrap();
    assert!(!state.status.is_terminal(), "held: the run has not ended");
    assert_eq!(calls.count("undo"), 0, "held: no compensation begins");
    engine
        .signal(run, "resume", Payload::null(), "alice")
        .await
        .expect("a held run is still open: resume reaches it");
    assert!(matches!(
        engine.wait(run).await.unwrap(),
        RunOutcome::Failed(_)
    ));
    assert_eq!(calls.count("undo"), 1);
    let h = history(log.as_ref(), run);
    let failed = position_of(&h, |e| matches!(e, Event::StepFailed { .. })).unwrap();
    let resumed = position_of(
        &h,
        |e| matches!(e, Event::SignalReceived { name, .. } if name == "resume"),
    )
    .unwrap();
    let compensating = position_of(&h, |e| matches!(e, Event::CompensationStarted { .. })).unwrap();
    assert!(
        failed < resumed && resumed < compensating,
        "the failure is journaled under the hold, the compensation begins after resume: {:?}",
        kinds(log.as_ref(), run)
    );
}

#[tokio::test]
async fn hold_stops_before_the_next_step_and_cancel_lifts_it_and_compensates() {
    let log = waymark_engine::memory_log();
    let calls = Calls::default();
    let gate = Arc::new(Notify::new());
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = asked.clone();
    let mut b = Engine::builder(log.clone()).workflow_dyn(wf("holdable2", 1, move |ctx| {
        let flag = flag.clone();
        async move {
            ctx.step::<_, u32>("first", &1)
                .compensate_with("undo", &1, "undo first")
                .await?;
            flag.store(true, Ordering::SeqCst);
            ctx.step::<_, u32>("second", &2).await?;
            Ok(Payload::null())
        }
    }));
    b = gated(b, "first", &calls, &gate);
    b = echo(b, "second", &calls);
    b = echo(b, "undo", &calls);
    let engine = b.build();
    let run = engine
        .start_named("holdable2", Payload::null(), "t")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "first step started", || {
        calls.count("first") == 1
    })
    .await;
    engine
        .signal(run, "hold", Payload::null(), "alice")
        .await
        .unwrap();
    gate.notify_one();
    wait_until(
        Duration::from_secs(10),
        "the code asked for the second step",
        || asked.load(Ordering::SeqCst),
    )
    .await;
    engine
        .signal(run, "cancel", Payload::encode("abort").unwrap(), "bob")
        .await
        .unwrap();
    assert!(matches!(
        engine.wait(run).await.unwrap(),
        RunOutcome::Cancelled(_)
    ));
    assert_eq!(
        calls.count("second"),
        0,
        "held: the next step never started"
    );
    assert_eq!(
        calls.count("undo"),
        1,
        "cancel lifted the hold and compensated"
    );
    let h = history(log.as_ref(), run);
    assert!(
        !h.iter().any(|e| matches!(
            e,
            Event::StepScheduled { activity, .. } if activity == "second"
        )),
        "the step asked for under the hold never reached the history: {:?}",
        kinds(log.as_ref(), run)
    );
}

#[tokio::test]
async fn a_refusal_ends_the_run_refused_without_compensation() {
    let log = waymark_engine::memory_log();
    let calls = Calls::default();
    let mut b = Engine::builder(log.clone()).workflow_dyn(wf("preflight", 1, |ctx| async move {
        let ok: bool = ctx.step("check", &false).await?;
        if !ok {
            return Err(workflow::Error::refused(vec![
                "zone A has no healthy target".into(),
                "MirrorMaker2 has 0 replicas".into(),
            ]));
        }
        Ok(Payload::null())
    }));
    b = echo(b, "check", &calls);
    let engine = b.build();
    let run = engine
        .start_named("preflight", Payload::null(), "t")
        .await
        .unwrap();
    let reasons = vec![
        "zone A has no healthy target".to_owned(),
        "MirrorMaker2 has 0 replicas".to_owned(),
    ];
    assert_eq!(
        engine.wait(run).await.unwrap(),
        RunOutcome::Refused(reasons.clone())
    );
    assert_eq!(
        kinds(log.as_ref(), run),
        vec![
            "RunStarted",
            "StepScheduled",
            "AttemptStarted",
            "StepCompleted",
            "RunRefused"
        ]
    );
    let state = engine.state(run).unwrap();
    assert_eq!(
        state.status,
        waymark_engine::core::RunStatus::Refused(reasons)
    );
    assert!(!state.needs_operator(), "a refused run frees its cluster");
    assert!(
        log.open_runs().unwrap().is_empty(),
        "a refused run is not open"
    );
}

/// A workflow that waits for `approve` at most `ms` and returns who sent it, or "timed out".
fn approval_waiter(ms: u64) -> Arc<dyn DynWorkflow> {
    wf("approval-waiter", 1, move |ctx| async move {
        let got = ctx
            .wait_for_signal_until::<String>("approve", Duration::from_millis(ms))
            .await?;
        let text = match got {
            Some((why, by)) => format!("{why} from {by}"),
            None => "timed out".to_owned(),
        };
        Ok(Payload::encode(&text).unwrap())
    })
}

#[tokio::test(start_paused = true)]
async fn signal_wait_with_deadline_keeps_its_deadline_across_restart_and_times_out_once_passed() {
    let backend = MemoryBackend::new();
    let clock = paused_clock();
    let engine1 = Engine::builder(restart(&backend))
        .clock(clock.clone())
        .workflow_dyn(approval_waiter(300))
        .build();
    let run = engine1
        .start_named("approval-waiter", Payload::null(), "alice")
        .await
        .unwrap();
    let mut records = engine1.subscribe(run).expect("the run is driven");
    while !matches!(
        records.recv().await.expect("the run's records").event,
        Event::SignalWaitStarted { .. }
    ) {}
    engine1.shutdown().await;
    // The engine is down past the deadline.
    tokio::time::advance(Duration::from_secs(5)).await;
    let log2 = restart(&backend);
    let engine2 = Engine::builder(log2.clone())
        .clock(clock)
        .workflow_dyn(approval_waiter(300))
        .build();
    engine2.resume_all().unwrap();
    let RunOutcome::Completed(out) = engine2.wait(run).await.unwrap() else {
        panic!("the run completes")
    };
    assert_eq!(out.0, "\"timed out\"");
    let records = log2.read(run).unwrap();
    let started: Vec<_> = records
        .iter()
        .filter(|r| matches!(r.event, Event::SignalWaitStarted { .. }))
        .collect();
    assert_eq!(started.len(), 1, "the wait was not started again");
    let Event::SignalWaitStarted { deadline, .. } = &started[0].event else {
        panic!()
    };
    assert_eq!(
        *deadline - started[0].at,
        chrono::Duration::milliseconds(300),
        "the deadline is journaled when the wait starts"
    );
    assert!(
        records
            .iter()
            .any(|r| r.event == Event::SignalWaitTimedOut { position: 0 }),
        "{records:?}"
    );
    let report = engine2.replay(run).await.unwrap();
    assert!(
        matches!(report.verdict, runtime::ReplayVerdict::Deterministic),
        "{:?}",
        report.verdict
    );
}

#[tokio::test(start_paused = true)]
async fn signal_wait_with_deadline_gives_the_signal_and_its_sender_and_replays_cleanly() {
    let engine = Engine::builder(Arc::new(Log::new(MemoryBackend::new())))
        .clock(paused_clock())
        .workflow_dyn(approval_waiter(3_600_000))
        .build();
    let run = engine
        .start_named("approval-waiter", Payload::null(), "alice")
        .await
        .unwrap();
    let mut records = engine.subscribe(run).expect("the run is driven");
    while !matches!(
        records.recv().await.expect("the run's records").event,
        Event::SignalWaitStarted { .. }
    ) {}
    engine
        .signal(
            run,
            "approve",
            Payload::encode("looks good").unwrap(),
            "bob",
        )
        .await
        .unwrap();
    let RunOutcome::Completed(out) = engine.wait(run).await.unwrap() else {
        panic!("the run completes")
    };
    assert_eq!(out.0, "\"looks good from bob\"");
    assert!(
        !kinds(engine.log().as_ref(), run).contains(&"SignalWaitTimedOut"),
        "the signal ended the wait"
    );
    let report = engine.replay(run).await.unwrap();
    assert!(
        matches!(report.verdict, runtime::ReplayVerdict::Deterministic),
        "{:?}",
        report.verdict
    );
    assert_eq!(report.positions, 1, "one command position");
}

// Deterministic simulation (issue 13): the simulation log, crashes at append boundaries, the
// engine's abort, seeded runs, activities on the engine's time.

use waymark_engine::log::sim::{CrashAt, SimLog};

/// Three echo steps `a`, `b`, `c` on a simulation log. Appends: #0 `RunStarted`, #1 a's start,
/// #2 a's result + b's start, #3 b's result + c's start, #4 c's result + `RunCompleted`.
fn sim_engine(log: Arc<SimLog>, calls: &Calls) -> Engine {
    let b = Engine::builder(log)
        .clock(paused_clock())
        .seed(7)
        .workflow_dyn(three_steps());
    let b = echo(b, "a", calls);
    let b = echo(b, "b", calls);
    echo(b, "c", calls).build()
}

/// A crash at append #3 (b's result with c's start): lost, b ran but its result is gone and is
/// re-attempted under its key; durable, b's result survives and c, whose start was durable but
/// never acknowledged, is called only by the restarted engine. Either way the run completes and
/// nothing journaled runs twice.
#[tokio::test(start_paused = true)]
async fn sim_log_crash_at_an_append_keeps_exactly_the_durable_prefix_and_a_new_engine_resumes() {
    for durable in [false, true] {
        let log = SimLog::new();
        log.set_crash(Some(CrashAt { append: 3, durable }));
        let calls = Calls::default();
        let engine1 = sim_engine(log.clone(), &calls);
        let run = engine1
            .start_named("three", Payload::null(), "t")
            .await
            .unwrap();
        wait_until(Duration::from_secs(10), "the crash at append #3", || {
            log.crashed()
        })
        .await;
        engine1.abort();
        let expected: &[&str] = if durable {
            &[
                "RunStarted",
                "StepScheduled",
                "AttemptStarted",
                "StepCompleted",
                "StepScheduled",
                "AttemptStarted",
                "StepCompleted",
                "StepScheduled",
                "AttemptStarted",
            ]
        } else {
            &[
                "RunStarted",
                "StepScheduled",
                "AttemptStarted",
                "StepCompleted",
                "StepScheduled",
                "AttemptStarted",
            ]
        };
        assert_eq!(kinds(log.as_ref(), run), expected, "durable: {durable}");
        assert_eq!(calls.count("c"), 0, "c's start was never acknowledged");

        let log2 = log.restart();
        assert_eq!(
            kinds(log2.as_ref(), run),
            expected,
            "the restart opens the durable records"
        );
        let engine2 = sim_engine(log2.clone(), &calls);
        assert_eq!(engine2.resume_all().unwrap().resumed, vec![run]);
        assert_eq!(
            engine2.wait(run).await.unwrap(),
            RunOutcome::Completed(Payload("3".into()))
        );
        assert_eq!(calls.count("a"), 1, "a journaled step is never re-run");
        let (b, c) = (calls.get("b"), calls.get("c"));
        if durable {
            assert_eq!(b.len(), 1, "b's result was durable");
            assert_eq!(
                c,
                vec![(format!("{run}/step-2"), 2)],
                "c: its attempt 1 was in flight"
            );
        } else {
            assert_eq!(
                b,
                vec![(format!("{run}/step-1"), 1), (format!("{run}/step-1"), 2)],
                "b re-attempted with its idempotency key"
            );
            assert_eq!(c.len(), 1);
        }
        assert_eq!(
            engine2.replay(run).await.unwrap().verdict,
            runtime::ReplayVerdict::Deterministic
        );
    }
}

/// Drops its flag when the activity's future is dropped.
struct DropGuard(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `abort` is the process's death: the activity in flight is dropped (not finished, not
/// cancelled), no task of the engine runs on, nothing is appended (no `AttemptInterrupted`,
/// unlike `shutdown`), and the engine takes no more work.
#[tokio::test(start_paused = true)]
async fn abort_drops_every_task_and_activity_in_flight_and_appends_nothing() {
    let log = SimLog::new();
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Arc::new(AtomicU32::new(0));
    let (d, s) = (dropped.clone(), started.clone());
    let engine = Engine::builder(log.clone())
        .clock(paused_clock())
        .workflow_dyn(wf("hangs", 1, |ctx| async move {
            let (x, y) = futures::join!(
                ctx.step::<_, u32>("forever", &1).into_future(),
                ctx.step::<_, u32>("forever", &2).into_future()
            );
            Ok(Payload::encode(&(x? + y?)).unwrap())
        }))
        .activity_fn("forever", move |_, _| {
            let guard = DropGuard(d.clone());
            s.fetch_add(1, Ordering::SeqCst);
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(Payload::null())
            }
        })
        .build();
    let run = engine
        .start_named("hangs", Payload::null(), "t")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "both activities running", || {
        started.load(Ordering::SeqCst) == 2
    })
    .await;
    assert!(engine.running_tasks() > 0);
    let (appends, records) = (log.appends(), log.encoded(run));
    engine.abort();
    wait_until(
        Duration::from_secs(10),
        "every task of the engine dropped",
        || engine.running_tasks() == 0,
    )
    .await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the activities' futures were dropped"
    );
    assert_eq!(log.appends(), appends, "abort appends nothing");
    assert_eq!(log.encoded(run), records);
    assert!(engine.active_runs().is_empty());
    assert!(matches!(
        engine.start_named("hangs", Payload::null(), "t").await,
        Err(runtime::Error::Aborted)
    ));
    assert!(matches!(engine.resume(run), Err(runtime::Error::Aborted)));
    assert!(matches!(
        engine.signal(run, "approve", Payload::null(), "op").await,
        Err(runtime::Error::Aborted)
    ));
    assert_eq!(
        log.appends(),
        appends,
        "refused work appends nothing either"
    );
}

/// A run with every source of randomness and time the engine has: `now()`, `uuid()`, a retried
/// failure (jittered delay), a timer.
fn seeded_run_body() -> Arc<dyn DynWorkflow> {
    wf("seeded", 1, |ctx| async move {
        let t = ctx.now().await?;
        let id = ctx.uuid().await?;
        let v: String = ctx.step("flaky", &id).retry(fast_retry()).await?;
        ctx.sleep(Duration::from_secs(90)).await?;
        let again = ctx.uuid().await?;
        Ok(Payload::encode(&format!("{t} {v} {again}")).unwrap())
    })
}

async fn seeded_run(seed: Option<u64>) -> (RunId, Vec<Vec<u8>>) {
    let log = SimLog::new();
    let tries = Arc::new(AtomicU32::new(0));
    let t = tries.clone();
    let mut b = Engine::builder(log.clone())
        .clock(paused_clock())
        .workflow_dyn(seeded_run_body())
        .activity_fn("flaky", move |_, input| {
            let n = t.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(activity::Error::retryable("503 from upstream"))
                } else {
                    Ok(input)
                }
            }
        });
    if let Some(seed) = seed {
        b = b.seed(seed);
    }
    let engine = b.build();
    let run = engine
        .start_named("seeded", Payload::null(), "t")
        .await
        .unwrap();
    assert!(matches!(
        engine.wait(run).await.unwrap(),
        RunOutcome::Completed(_)
    ));
    (run, log.encoded(run))
}

/// Same seed, clock and inputs: the same run id and the same history, byte for byte (records as
/// the codec stores them: timestamps, retry deadlines, uuids, hash chain). Another seed, or none,
/// draws other values.
#[tokio::test(start_paused = true)]
async fn same_seed_gives_a_byte_identical_history_on_paused_time() {
    let (run1, history1) = seeded_run(Some(42)).await;
    let (run2, history2) = seeded_run(Some(42)).await;
    assert_eq!(run1, run2, "the run id is drawn from the seed");
    assert_eq!(run1.0.get_version_num(), 7);
    assert!(history1.len() > 10, "{} records", history1.len());
    let first_difference = history1
        .iter()
        .zip(&history2)
        .position(|(a, b)| a != b)
        .or((history1.len() != history2.len()).then_some(history1.len().min(history2.len())));
    assert_eq!(
        first_difference, None,
        "the histories differ from record #{first_difference:?} on"
    );
    let (run3, history3) = seeded_run(Some(43)).await;
    assert_ne!(run3, run1);
    assert_ne!(history3, history1);
    let (run4, _) = seeded_run(None).await;
    let (run5, _) = seeded_run(None).await;
    assert_ne!(run4, run5, "without a seed, ids are random");
}

/// Activities wait on the engine's time: on paused time, a wait with a one-hour deadline (from
/// the step's scheduling) looks every 30 s and ends with its `Timeout` one hour of simulated time
/// later, journaled at exactly that time (no real hour passes).
#[tokio::test(start_paused = true)]
async fn an_activitys_one_hour_wait_times_out_after_one_hour_of_simulated_time() {
    use waymark_activities::wait::{Deadline, Poll, PollUntil, Transient, WaitError};

    #[derive(Debug)]
    struct Never;
    impl std::fmt::Display for Never {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("never")
        }
    }
    impl Transient for Never {
        fn is_transient(&self) -> bool {
            false
        }
    }
    let looks = Arc::new(AtomicU32::new(0));
    let l = looks.clone();
    let log = SimLog::new();
    let engine = Engine::builder(log.clone())
        .clock(paused_clock())
        .workflow_dyn(wf("waits", 1, |ctx| async move {
            ctx.step::<_, ()>("wait", &())
                .start_to_close(Duration::from_secs(2 * 3600))
                .await?;
            Ok(Payload::null())
        }))
        .activity_fn("wait", move |ctx, _| {
            let l = l.clone();
            async move {
                let deadline = Deadline::after_scheduling(&ctx, Duration::from_secs(3600));
                let got: Result<(), WaitError<Never>> = ctx
                    .poll_until(
                        "the node healthy",
                        deadline,
                        Duration::from_secs(30),
                        || {
                            l.fetch_add(1, Ordering::SeqCst);
                            async { Ok(Poll::Pending("still unhealthy".into())) }
                        },
                    )
                    .await;
                match got {
                    Err(WaitError::Timeout(t)) => Err(activity::Error::fatal(t.to_string())),
                    other => Err(activity::Error::fatal(format!("not a timeout: {other:?}"))),
                }
            }
        })
        .build();
    let run = engine
        .start_named("waits", Payload::null(), "t")
        .await
        .unwrap();
    let RunOutcome::Failed(why) = engine.wait(run).await.unwrap() else {
        panic!("the run fails on the wait's timeout")
    };
    assert!(
        why.contains("the node healthy not reached by its deadline 2026-01-05T03:00:00.000Z"),
        "{why}"
    );
    let records = log.records(run);
    let at = |kind: &str| records.iter().find(|r| r.event.kind() == kind).unwrap().at;
    assert_eq!(
        at("AttemptFailed") - at("StepScheduled"),
        chrono::Duration::hours(1),
        "one hour of simulated time"
    );
    assert_eq!(
        looks.load(Ordering::SeqCst),
        121,
        "a look every 30 s, the last at the deadline"
    );
}
