//! The deterministic core fed canned histories: `check(history, expected decision)`.

use std::time::Duration;

use waymark_engine::core::{
    Ending, ResumeAction, Returned, RunState, RunStatus, SignalDecision, StepDecision,
    TimerDecision,
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

fn signal(name: &str, payload: &str, by: &str) -> Event {
    Event::SignalReceived {
        name: name.into(),
        payload: Payload(payload.into()),
        sent_by: by.into(),
    }
}

/// 0 `RunStarted` · 1 `StepScheduled`(0, "a", compensation "a.undo") · 2 `AttemptStarted`(0, 1)
/// · 3 `SignalReceived`(hold, by alice, "zone B alarms") · 4 `AttemptFailed`(0, 1, final)
/// · 5 `StepFailed`(0)
fn held_while_its_step_failed() -> HistoryBuilder {
    let mut h = HistoryBuilder::new("w", 1, "null");
    h.scheduled_with_compensation(0, "a", "1", "a.undo");
    h.push(signal("hold", "\"zone B alarms\"", "alice"));
    h.push(Event::AttemptFailed {
        step: StepRef::Workflow(0),
        attempt: 1,
        error: "boom".into(),
        retryable: false,
        next_retry_at: None,
    });
    h.push(Event::StepFailed {
        step: StepRef::Workflow(0),
        error: "boom".into(),
    });
    h
}

#[test]
fn hold_records_who_and_why_and_stops_new_attempts_until_resume() {
    let mut h = held_while_its_step_failed();
    let s = state(&h);
    assert_eq!(
        s.held,
        Some(("alice".to_owned(), "zone B alarms".to_owned()))
    );
    assert!(s.attempts_on_hold(), "no new attempt while held");
    assert!(!s.paused, "hold is not pause");
    assert!(!s.status.is_terminal(), "a held run has not ended");
    h.push(signal("resume", "null", "bob"));
    let s = state(&h);
    assert_eq!(s.held, None);
    assert!(!s.attempts_on_hold());
}

#[test]
fn a_step_failing_under_hold_is_journaled_but_compensation_waits_until_resume() {
    let mut h = held_while_its_step_failed();
    let failed = Returned::Failed("step \"a\" (a) failed: boom".into());
    assert_eq!(
        state(&h).on_workflow_returned(&failed),
        Ending::Held,
        "no CompensationStarted while held"
    );
    h.push(signal("resume", "null", "bob"));
    assert_eq!(
        state(&h).on_workflow_returned(&failed),
        Ending::Append {
            events: vec![Event::CompensationStarted {
                reason: "step \"a\" (a) failed: boom".into(),
                cancelled: false,
            }],
            compensate: true,
        },
        "resume begins the compensation the run was about to begin"
    );
}

#[test]
fn cancel_lifts_a_hold_and_compensates_as_cancelled() {
    let mut h = held_while_its_step_failed();
    h.push(signal("cancel", "\"window closed\"", "carol"));
    let s = state(&h);
    assert_eq!(s.held, None, "cancel lifts the hold");
    assert!(!s.attempts_on_hold());
    assert_eq!(
        s.on_workflow_returned(&Returned::Failed("cancelled".into())),
        Ending::Append {
            events: vec![Event::CompensationStarted {
                reason: "cancelled by carol: window closed".into(),
                cancelled: true,
            }],
            compensate: true,
        }
    );
}

#[test]
fn a_held_run_whose_code_completed_ends_only_after_resume() {
    let mut h = HistoryBuilder::new("w", 1, "null");
    h.scheduled(0, "a", "1").completed(0, "10");
    h.push(signal("hold", "null", "alice"));
    let done = Returned::Completed(Payload("10".into()));
    let s = state(&h);
    assert_eq!(s.held, Some(("alice".to_owned(), String::new())));
    assert_eq!(s.on_workflow_returned(&done), Ending::Held);
    h.push(signal("resume", "null", "alice"));
    assert_eq!(
        state(&h).on_workflow_returned(&done),
        Ending::Append {
            events: vec![Event::RunCompleted {
                output: Payload("10".into())
            }],
            compensate: false,
        }
    );
}

#[test]
fn a_refusal_before_any_change_ends_refused_without_compensation_and_frees_the_cluster() {
    let mut h = HistoryBuilder::new("w", 1, "null");
    h.scheduled(0, "preflight", "null").completed(0, "false");
    let reasons = vec![
        "zone A target group has no healthy target".to_owned(),
        "MirrorMaker2 has 0 replicas".to_owned(),
    ];
    let ending = state(&h).on_workflow_returned(&Returned::Refused(reasons.clone()));
    let Ending::Append { events, compensate } = ending else {
        panic!("expected an ending, got {ending:?}");
    };
    assert!(!compensate, "a refusal runs no compensation");
    assert_eq!(
        events,
        vec![Event::RunRefused {
            reasons: reasons.clone()
        }]
    );
    for e in events {
        assert!(e.is_terminal(), "RunRefused closes the run");
        h.push(e);
    }
    let s = state(&h);
    assert_eq!(s.status, RunStatus::Refused(reasons));
    assert_eq!(s.status.name(), "refused");
    assert_eq!(
        s.status.to_string(),
        "refused: zone A target group has no healthy target; MirrorMaker2 has 0 replicas"
    );
    assert!(s.status.is_terminal());
    assert_eq!(s.resume_action(), ResumeAction::Finished);
    assert!(
        !s.needs_operator(),
        "a refused run does not hold its cluster"
    );
}

#[test]
fn a_refusal_after_registering_a_compensation_is_a_workflow_bug_and_compensates() {
    let mut h = HistoryBuilder::new("w", 1, "null");
    h.scheduled_with_compensation(0, "traffic.to_a", "1", "traffic.to_b")
        .completed(0, "null");
    let ending =
        state(&h).on_workflow_returned(&Returned::Refused(vec!["approval timed out".into()]));
    let Ending::Append { events, compensate } = ending else {
        panic!("expected an ending, got {ending:?}");
    };
    assert!(compensate, "registered compensations run");
    let [Event::CompensationStarted { reason, cancelled }] = events.as_slice() else {
        panic!("expected CompensationStarted alone, got {events:?}");
    };
    assert!(!cancelled);
    assert!(
        reason.contains("approval timed out") && reason.contains("bug in the workflow"),
        "{reason}"
    );
}
