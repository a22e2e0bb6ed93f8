//! The deterministic core fed canned histories: `check(history, expected decision)`.

use std::time::Duration;

use waymark_engine::core::{
    ResumeAction, RunState, RunStatus, SignalDecision, StepDecision, TimerDecision,
};
use waymark_engine::event::{Event, Payload, StepRef, SuspendReason};
use waymark_engine::testing::{canned, HistoryBuilder};
use waymark_engine::RetryPolicy;

fn state(h: &HistoryBuilder) -> RunState {
    RunState::from_records(&h.build()).expect("valid history")
}

#[test]
fn completed_step_is_replayed_not_run() {
    let s = state(&canned::second_step_in_flight());
    assert_eq!(
        s.decide_step(0, "a", &Payload("1".into())),
        StepDecision::Replay(Ok(Payload("10".into())))
    );
}

#[test]
fn in_flight_step_is_retried_as_next_attempt_with_interruption_recorded() {
    let s = state(&canned::second_step_in_flight());
    assert_eq!(
        s.decide_step(1, "b", &Payload("2".into())),
        StepDecision::Run {
            schedule: false,
            attempt: 2,
            failures: 0,
            not_before: None,
            interrupted: Some(1),
        }
    );
    assert_eq!(s.resume_action(), ResumeAction::ReplayWorkflow);
}

#[test]
fn new_step_is_scheduled() {
    let s = state(&canned::second_step_in_flight());
    assert!(matches!(
        s.decide_step(2, "c", &Payload("3".into())),
        StepDecision::Run {
            schedule: true,
            attempt: 1,
            ..
        }
    ));
}

#[test]
fn different_step_at_same_position_is_nondeterminism_shown_side_by_side() {
    let s = state(&canned::second_step_in_flight());
    let StepDecision::Nondeterminism(SuspendReason::Nondeterminism {
        position,
        recorded,
        new,
    }) = s.decide_step(0, "a", &Payload("999".into()))
    else {
        panic!("expected non-determinism");
    };
    assert_eq!(position, 0);
    assert_eq!(recorded, "step a(1)");
    assert_eq!(new, "step a(999)");
}

#[test]
fn timer_where_a_step_was_is_nondeterminism() {
    let s = state(&canned::second_step_in_flight());
    assert!(matches!(
        s.decide_timer(1, Duration::from_secs(1), chrono::Utc::now()),
        TimerDecision::Nondeterminism(_)
    ));
}

#[test]
fn code_that_returns_early_is_nondeterminism() {
    let s = state(&canned::second_step_in_flight());
    let r = s.check_finished(1).unwrap_err();
    assert!(
        matches!(r, SuspendReason::Nondeterminism { position: 1, .. }),
        "{r:?}"
    );
    assert!(s.check_finished(2).is_ok());
}

#[test]
fn journaled_retry_deadline_survives_restart() {
    let h = canned::waiting_for_retry();
    let s = state(&h);
    assert_eq!(
        s.decide_step(0, "flaky", &Payload::null()),
        StepDecision::Run {
            schedule: false,
            attempt: 2,
            failures: 1,
            not_before: Some(h.time(3) + chrono::Duration::seconds(5)),
            interrupted: None,
        }
    );
}

#[test]
fn retry_decision_respects_policy() {
    let h = canned::waiting_for_retry();
    let s = state(&h);
    let p = RetryPolicy::default().max_attempts(2);
    let now = h.time(4);
    let next = s.decide_retry(
        StepRef::Workflow(0),
        &p,
        1,
        true,
        now,
        Duration::from_secs(3),
    );
    assert_eq!(next, Some(now + chrono::Duration::seconds(3)));
    assert_eq!(
        s.decide_retry(
            StepRef::Workflow(0),
            &p,
            2,
            true,
            now,
            Duration::from_secs(3)
        ),
        None
    );
    assert_eq!(
        s.decide_retry(
            StepRef::Workflow(0),
            &p,
            1,
            false,
            now,
            Duration::from_secs(3)
        ),
        None
    );
}

#[test]
fn compensation_resumes_after_the_last_completed_one_in_reverse_order() {
    let s = state(&canned::compensating_halfway());
    assert_eq!(s.resume_action(), ResumeAction::Compensate);
    let plan = s.compensation_plan();
    assert_eq!(
        plan.iter().map(|c| c.activity.as_str()).collect::<Vec<_>>(),
        vec!["scale.undo", "traffic.undo"],
        "newest registration first"
    );
    assert!(matches!(
        s.decide_compensation(0),
        StepDecision::Replay(Ok(_))
    ));
    assert!(matches!(
        s.decide_compensation(1),
        StepDecision::Run { schedule: true, .. }
    ));
}

#[test]
fn signals_queue_by_name_and_replay_in_order() {
    let mut h = HistoryBuilder::new("gate", 1, "null");
    h.push(Event::SignalReceived {
        name: "approve".into(),
        payload: Payload("\"first\"".into()),
        sent_by: "alice".into(),
    });
    h.push(Event::SignalConsumed {
        position: 0,
        name: "approve".into(),
    });
    h.push(Event::SignalReceived {
        name: "approve".into(),
        payload: Payload("\"second\"".into()),
        sent_by: "bob".into(),
    });
    let s = state(&h);
    assert_eq!(
        s.decide_signal(0, "approve"),
        SignalDecision::Replay(Payload("\"first\"".into()))
    );
    assert_eq!(
        s.decide_signal(1, "approve"),
        SignalDecision::Consume(Payload("\"second\"".into()))
    );
    h.push(Event::SignalConsumed {
        position: 1,
        name: "approve".into(),
    });
    assert_eq!(
        state(&h).decide_signal(2, "approve"),
        SignalDecision::Wait,
        "both consumed"
    );
}

#[test]
fn pause_resume_and_cancel_are_engine_signals() {
    let mut h = HistoryBuilder::new("w", 1, "null");
    let sig = |name: &str| Event::SignalReceived {
        name: name.into(),
        payload: Payload("\"maintenance window closed\"".into()),
        sent_by: "alice".into(),
    };
    h.push(sig("pause"));
    assert!(state(&h).paused);
    h.push(sig("resume"));
    assert!(!state(&h).paused);
    h.push(sig("cancel"));
    assert_eq!(
        state(&h).cancel_requested.as_deref(),
        Some("cancelled by alice: maintenance window closed")
    );
}

#[test]
fn terminal_events_set_status() {
    let mut h = HistoryBuilder::new("w", 1, "null");
    h.push(Event::RunCompleted {
        output: Payload("7".into()),
    });
    let s = state(&h);
    assert_eq!(s.status, RunStatus::Completed(Payload("7".into())));
    assert_eq!(s.resume_action(), ResumeAction::Finished);
}

#[test]
fn history_with_attempt_of_unknown_step_is_rejected() {
    let mut h = HistoryBuilder::new("w", 1, "null");
    h.push(Event::AttemptStarted {
        step: StepRef::Workflow(4),
        attempt: 1,
    });
    let err = RunState::from_records(&h.build()).unwrap_err();
    assert!(err.to_string().contains("event #1"), "{err}");
}
