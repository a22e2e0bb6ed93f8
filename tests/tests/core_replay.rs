//! The deterministic core fed canned histories: history in, decision (events out and what
//! follows) out. Each rule of the engine (replay, retry, cancel, compensation, hold, refusal,
//! non-determinism) has its fast test here; `engine_behaviour` drives the same rules end to end.

use std::time::Duration;

use waymark_engine::core::{
    Action, Answer, AttemptResult, Decision, ResumeAction, Returned, RunState, RunStatus, StepSpec,
};
use waymark_engine::event::{Event, Payload, StepRef, SuspendReason};
use waymark_engine::testing::{canned, HistoryBuilder};
use waymark_engine::RetryPolicy;

fn state(h: &HistoryBuilder) -> RunState {
    RunState::from_records(&h.build()).expect("valid history")
}

fn spec(activity: &str, input: &str) -> StepSpec {
    StepSpec {
        activity: activity.into(),
        label: activity.into(),
        input: Payload(input.into()),
        compensation: None,
    }
}

fn w(position: u32) -> StepRef {
    StepRef::Workflow(position)
}

#[test]
fn completed_step_is_replayed_not_run() {
    let h = canned::second_step_in_flight();
    assert_eq!(
        state(&h).step_next(w(0), &spec("a", "1"), h.time(9), true),
        Decision::Replay(Answer::Step(Ok(Payload("10".into()))))
    );
}

#[test]
fn in_flight_step_is_retried_as_next_attempt_with_interruption_recorded() {
    let h = canned::second_step_in_flight();
    let s = state(&h);
    assert_eq!(
        s.step_next(w(1), &spec("b", "2"), h.time(9), true),
        Decision::Append {
            events: vec![
                Event::AttemptInterrupted {
                    step: w(1),
                    attempt: 1
                },
                Event::AttemptStarted {
                    step: w(1),
                    attempt: 2
                },
            ],
            then: Action::RunAttempt { attempt: 2 },
        }
    );
    assert_eq!(s.resume_action(), ResumeAction::ReplayWorkflow);
}

#[test]
fn new_step_is_scheduled_and_started_in_one_append() {
    let h = canned::second_step_in_flight();
    assert_eq!(
        state(&h).step_next(w(2), &spec("c", "3"), h.time(9), true),
        Decision::Append {
            events: vec![
                Event::StepScheduled {
                    step: w(2),
                    activity: "c".into(),
                    label: "c".into(),
                    input: Payload("3".into()),
                    compensation: None,
                },
                Event::AttemptStarted {
                    step: w(2),
                    attempt: 1
                },
            ],
            then: Action::RunAttempt { attempt: 1 },
        }
    );
}

#[test]
fn different_step_at_same_position_is_nondeterminism_shown_side_by_side() {
    let h = canned::second_step_in_flight();
    assert_eq!(
        state(&h).step_next(w(0), &spec("a", "999"), h.time(9), true),
        Decision::Suspend(SuspendReason::Nondeterminism {
            position: 0,
            recorded: "step a(1)".into(),
            new: "step a(999)".into(),
        })
    );
}

#[test]
fn timer_where_a_step_was_is_nondeterminism_in_the_same_words() {
    let h = canned::second_step_in_flight();
    assert_eq!(
        state(&h).decide_sleep(1, Duration::from_secs(1), h.time(9)),
        Decision::Suspend(SuspendReason::Nondeterminism {
            position: 1,
            recorded: "step b(2)".into(),
            new: "sleep (a durable timer)".into(),
        })
    );
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
    let due = h.time(3) + chrono::Duration::seconds(5);
    assert_eq!(
        s.step_next(w(0), &spec("flaky", "null"), h.time(4), true),
        Decision::Append {
            events: vec![],
            then: Action::WaitUntil(due)
        },
        "before the journaled deadline: wait for it"
    );
    assert_eq!(
        s.step_next(w(0), &spec("flaky", "null"), due, true),
        Decision::Append {
            events: vec![Event::AttemptStarted {
                step: w(0),
                attempt: 2
            }],
            then: Action::RunAttempt { attempt: 2 },
        },
        "at the deadline: the next attempt"
    );
}

#[test]
fn retry_decision_respects_policy() {
    let h = canned::waiting_for_retry();
    let s = state(&h);
    let p = RetryPolicy::default().max_attempts(2);
    let now = h.time(4);
    let three = Duration::from_secs(3);
    let next = s.decide_retry(w(0), &p, 1, true, now, three);
    assert_eq!(next, Some(now + chrono::Duration::seconds(3)));
    assert_eq!(s.decide_retry(w(0), &p, 2, true, now, three), None);
    assert_eq!(s.decide_retry(w(0), &p, 1, false, now, three), None);
}

#[test]
fn a_failed_attempt_with_retries_left_journals_its_retry_time_and_waits() {
    let h = canned::second_step_in_flight();
    let now = h.time(6);
    let d = state(&h).on_attempt_end(
        w(1),
        1,
        AttemptResult::Failed {
            message: "connection refused".into(),
            retryable: true,
        },
        &RetryPolicy::default().max_attempts(3),
        now,
        Duration::from_secs(2),
    );
    let at = now + chrono::Duration::seconds(2);
    assert_eq!(
        d,
        Decision::Append {
            events: vec![Event::AttemptFailed {
                step: w(1),
                attempt: 1,
                error: "connection refused".into(),
                retryable: true,
                next_retry_at: Some(at),
            }],
            then: Action::WaitUntil(at),
        }
    );
}

#[test]
fn a_final_failure_journals_attempt_and_step_failed_together() {
    let h = canned::second_step_in_flight();
    let d = state(&h).on_attempt_end(
        w(1),
        1,
        AttemptResult::Failed {
            message: "permission denied".into(),
            retryable: false,
        },
        &RetryPolicy::default(),
        h.time(6),
        Duration::from_secs(2),
    );
    assert_eq!(
        d,
        Decision::Append {
            events: vec![
                Event::AttemptFailed {
                    step: w(1),
                    attempt: 1,
                    error: "permission denied".into(),
                    retryable: false,
                    next_retry_at: None,
                },
                Event::StepFailed {
                    step: w(1),
                    error: "permission denied".into(),
                },
            ],
            then: Action::Answer(Answer::Step(Err("permission denied".into()))),
        }
    );
}

#[test]
fn a_completed_attempt_is_journaled_and_answered() {
    let h = canned::second_step_in_flight();
    assert_eq!(
        state(&h).on_attempt_end(
            w(1),
            1,
            AttemptResult::Completed(Payload("20".into())),
            &RetryPolicy::default(),
            h.time(6),
            Duration::ZERO,
        ),
        Decision::Append {
            events: vec![Event::StepCompleted {
                step: w(1),
                output: Payload("20".into())
            }],
            then: Action::Answer(Answer::Step(Ok(Payload("20".into())))),
        }
    );
}

#[test]
fn cancel_while_an_attempt_runs_abandons_it_and_fails_the_step_with_the_reason() {
    let mut h = canned::second_step_in_flight();
    h.push(signal("cancel", "\"window closed\"", "carol"));
    let why = "cancelled by carol: window closed".to_owned();
    assert_eq!(
        state(&h).on_attempt_end(
            w(1),
            1,
            AttemptResult::Cancelled,
            &RetryPolicy::default(),
            h.time(7),
            Duration::ZERO,
        ),
        Decision::Append {
            events: vec![
                Event::AttemptFailed {
                    step: w(1),
                    attempt: 1,
                    error: format!("attempt abandoned: {why}"),
                    retryable: false,
                    next_retry_at: None,
                },
                Event::StepFailed {
                    step: w(1),
                    error: why.clone(),
                },
            ],
            then: Action::Answer(Answer::Cancelled(why)),
        }
    );
}

#[test]
fn cancel_of_a_step_left_in_flight_by_a_crash_closes_it_without_calling_the_activity() {
    let mut h = canned::second_step_in_flight();
    h.push(signal("cancel", "null", "carol"));
    let s = state(&h);
    let why = "cancelled by carol".to_owned();
    assert_eq!(
        s.step_next(w(1), &spec("b", "2"), h.time(7), true),
        Decision::Append {
            events: vec![
                Event::AttemptInterrupted {
                    step: w(1),
                    attempt: 1
                },
                Event::StepFailed {
                    step: w(1),
                    error: why.clone()
                },
            ],
            then: Action::Answer(Answer::Cancelled(why.clone())),
        }
    );
    assert_eq!(
        s.step_next(w(2), &spec("c", "3"), h.time(7), true),
        Decision::Replay(Answer::Cancelled(why.clone())),
        "a step new to the history never reaches it"
    );
    assert!(
        matches!(
            s.step_next(w(1), &spec("b", "2"), h.time(7), false),
            Decision::Append {
                then: Action::RunAttempt { attempt: 2 },
                ..
            }
        ),
        "a compensation (not cancellable) goes on"
    );
    assert_eq!(
        s.on_workflow_returned(&Returned::Failed(why.clone())),
        Decision::Append {
            events: vec![
                Event::AttemptInterrupted {
                    step: w(1),
                    attempt: 1
                },
                Event::StepFailed {
                    step: w(1),
                    error: format!(
                        "{} (it returned without its result)",
                        waymark_engine::core::ABANDONED
                    ),
                },
                Event::CompensationStarted {
                    reason: why,
                    cancelled: true
                },
            ],
            then: Action::Compensate,
        },
        "a code that returns while a step is open closes it first, then compensates as cancelled"
    );
}

#[test]
fn a_step_replayed_after_its_cancel_gives_the_code_the_cancellation_again() {
    let mut h = canned::second_step_in_flight();
    h.push(signal("cancel", "null", "carol"));
    h.push(Event::AttemptInterrupted {
        step: w(1),
        attempt: 1,
    });
    h.push(Event::StepFailed {
        step: w(1),
        error: "cancelled by carol".into(),
    });
    assert_eq!(
        state(&h).step_next(w(1), &spec("b", "2"), h.time(9), true),
        Decision::Replay(Answer::Cancelled("cancelled by carol".into()))
    );
}

#[test]
fn cancel_without_code_closes_open_steps_then_compensates() {
    let mut h = canned::second_step_in_flight();
    h.push(signal("cancel", "null", "carol"));
    assert_eq!(
        state(&h).cancel_without_code_events(),
        Some(vec![
            Event::AttemptInterrupted {
                step: w(1),
                attempt: 1
            },
            Event::StepFailed {
                step: w(1),
                error: "cancelled by carol".into()
            },
            Event::CompensationStarted {
                reason: "cancelled by carol".into(),
                cancelled: true
            },
        ])
    );
}

#[test]
fn compensation_resumes_after_the_last_completed_one_in_reverse_order() {
    let h = canned::compensating_halfway();
    let s = state(&h);
    assert_eq!(s.resume_action(), ResumeAction::Compensate);
    let plan = s.compensation_plan();
    assert_eq!(
        plan.iter().map(|c| c.activity.as_str()).collect::<Vec<_>>(),
        vec!["scale.undo", "traffic.undo"],
        "newest registration first"
    );
    let first = s.compensation_step(0).unwrap();
    assert!(matches!(
        s.step_next(StepRef::Compensation(0), &first, h.time(20), false),
        Decision::Replay(Answer::Step(Ok(_)))
    ));
    let second = s.compensation_step(1).unwrap();
    assert_eq!(second.activity, "traffic.undo");
    assert!(matches!(
        s.step_next(StepRef::Compensation(1), &second, h.time(20), false),
        Decision::Append { ref events, then: Action::RunAttempt { attempt: 1 } }
            if matches!(events[0], Event::StepScheduled { step: StepRef::Compensation(1), .. })
    ));
    assert_eq!(
        s.compensation_step(2),
        None,
        "two compensations in the plan"
    );
}

fn compensation_ends(ok: bool) -> Decision {
    let mut h = canned::compensating_halfway();
    h.push(Event::StepScheduled {
        step: StepRef::Compensation(1),
        activity: "traffic.undo".into(),
        label: "undo traffic".into(),
        input: Payload("\"A\"".into()),
        compensation: None,
    });
    h.push(Event::AttemptStarted {
        step: StepRef::Compensation(1),
        attempt: 1,
    });
    h.push(if ok {
        Event::StepCompleted {
            step: StepRef::Compensation(1),
            output: Payload::null(),
        }
    } else {
        Event::StepFailed {
            step: StepRef::Compensation(1),
            error: "listener gone".into(),
        }
    });
    state(&h).on_compensations_done()
}

#[test]
fn compensations_done_end_the_run_failed_or_compensation_incomplete() {
    assert_eq!(
        compensation_ends(true),
        Decision::Append {
            events: vec![Event::RunFailed {
                error: "restart failed".into()
            }],
            then: Action::Finish,
        }
    );
    assert_eq!(
        compensation_ends(false),
        Decision::Append {
            events: vec![Event::RunFailed {
                error: "restart failed; COMPENSATION INCOMPLETE, operator action needed: \
                        undo traffic: listener gone"
                    .into()
            }],
            then: Action::Finish,
        }
    );
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
        Decision::Replay(Answer::Signal(Payload("\"first\"".into())))
    );
    assert_eq!(
        s.decide_signal(1, "approve"),
        Decision::Append {
            events: vec![Event::SignalConsumed {
                position: 1,
                name: "approve".into()
            }],
            then: Action::Answer(Answer::Signal(Payload("\"second\"".into()))),
        }
    );
    h.push(Event::SignalConsumed {
        position: 1,
        name: "approve".into(),
    });
    assert_eq!(
        state(&h).decide_signal(2, "approve"),
        Decision::Append {
            events: vec![],
            then: Action::WaitForSignal
        },
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
        Decision::Append {
            events: vec![],
            then: Action::WaitWhileHeld
        },
        "no CompensationStarted while held"
    );
    h.push(signal("resume", "null", "bob"));
    assert_eq!(
        state(&h).on_workflow_returned(&failed),
        Decision::Append {
            events: vec![Event::CompensationStarted {
                reason: "step \"a\" (a) failed: boom".into(),
                cancelled: false,
            }],
            then: Action::Compensate,
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
        Decision::Append {
            events: vec![Event::CompensationStarted {
                reason: "cancelled by carol: window closed".into(),
                cancelled: true,
            }],
            then: Action::Compensate,
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
    assert_eq!(
        s.on_workflow_returned(&done),
        Decision::Append {
            events: vec![],
            then: Action::WaitWhileHeld
        }
    );
    h.push(signal("resume", "null", "alice"));
    assert_eq!(
        state(&h).on_workflow_returned(&done),
        Decision::Append {
            events: vec![Event::RunCompleted {
                output: Payload("10".into())
            }],
            then: Action::Finish,
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
    let Decision::Append { events, then } = ending else {
        panic!("expected an ending, got {ending:?}");
    };
    assert_eq!(then, Action::Finish, "a refusal runs no compensation");
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
    let Decision::Append { events, then } = ending else {
        panic!("expected an ending, got {ending:?}");
    };
    assert_eq!(then, Action::Compensate, "registered compensations run");
    let [Event::CompensationStarted { reason, cancelled }] = events.as_slice() else {
        panic!("expected CompensationStarted alone, got {events:?}");
    };
    assert!(!cancelled);
    assert!(
        reason.contains("approval timed out") && reason.contains("bug in the workflow"),
        "{reason}"
    );
}

#[test]
fn no_new_attempt_starts_while_held_or_paused() {
    let mut h = canned::second_step_in_flight();
    h.push(signal("hold", "null", "alice"));
    let waits = Decision::Append {
        events: vec![],
        then: Action::WaitWhileHeld,
    };
    assert_eq!(
        state(&h).step_next(w(2), &spec("c", "3"), h.time(9), true),
        waits,
        "no new step"
    );
    assert_eq!(
        state(&h).step_next(w(1), &spec("b", "2"), h.time(9), true),
        waits,
        "no new attempt"
    );
    h.push(signal("resume", "null", "alice"));
    h.push(signal("pause", "null", "alice"));
    assert_eq!(
        state(&h).step_next(w(2), &spec("c", "3"), h.time(9), true),
        waits
    );
}

fn approve_from(by: &str, payload: &str) -> Event {
    Event::SignalReceived {
        name: "approve".into(),
        payload: Payload(payload.into()),
        sent_by: by.into(),
    }
}

#[test]
fn signal_wait_with_deadline_starts_journaled_then_waits_until_its_deadline() {
    let h = HistoryBuilder::new("gate", 1, "null");
    let deadline = h.time(60);
    assert_eq!(
        state(&h).decide_signal_until(0, "approve", deadline, h.time(1)),
        Decision::Append {
            events: vec![Event::SignalWaitStarted {
                position: 0,
                name: "approve".into(),
                deadline,
            }],
            then: Action::WaitUntil(deadline),
        }
    );
}

#[test]
fn signal_wait_with_deadline_takes_a_signal_with_its_sender_and_replays_it() {
    let mut h = HistoryBuilder::new("gate", 1, "null");
    let deadline = h.time(60);
    h.push(Event::SignalWaitStarted {
        position: 0,
        name: "approve".into(),
        deadline,
    });
    h.push(approve_from("bob", "\"ok\""));
    // The deadline has passed too (the engine was down): a signal that arrived wins.
    let later = h.time(120);
    let asked_deadline = h.time(999);
    assert_eq!(
        state(&h).decide_signal_until(0, "approve", asked_deadline, later),
        Decision::Append {
            events: vec![Event::SignalConsumed {
                position: 0,
                name: "approve".into()
            }],
            then: Action::Answer(Answer::SignalUntil(Some((
                Payload("\"ok\"".into()),
                "bob".into()
            )))),
        }
    );
    h.push(Event::SignalConsumed {
        position: 0,
        name: "approve".into(),
    });
    assert_eq!(
        state(&h).decide_signal_until(0, "approve", asked_deadline, later),
        Decision::Replay(Answer::SignalUntil(Some((
            Payload("\"ok\"".into()),
            "bob".into()
        )))),
        "replay gives the same signal and sender at the same position, nothing appended"
    );
}

#[test]
fn signal_wait_with_deadline_keeps_its_recorded_deadline_and_times_out_once_passed() {
    let mut h = HistoryBuilder::new("gate", 1, "null");
    let deadline = h.time(60);
    h.push(Event::SignalWaitStarted {
        position: 0,
        name: "approve".into(),
        deadline,
    });
    // Resumed before the deadline: waits for what is left of the recorded one, not a new one.
    assert_eq!(
        state(&h).decide_signal_until(0, "approve", h.time(500), h.time(30)),
        Decision::Append {
            events: vec![],
            then: Action::WaitUntil(deadline),
        }
    );
    // Resumed after it: times out at once.
    assert_eq!(
        state(&h).decide_signal_until(0, "approve", h.time(500), h.time(61)),
        Decision::Append {
            events: vec![Event::SignalWaitTimedOut { position: 0 }],
            then: Action::Answer(Answer::SignalUntil(None)),
        }
    );
    h.push(Event::SignalWaitTimedOut { position: 0 });
    // A signal that arrives after the timeout does not change the replayed outcome.
    h.push(approve_from("bob", "null"));
    let s = state(&h);
    assert_eq!(
        s.decide_signal_until(0, "approve", h.time(500), h.time(600)),
        Decision::Replay(Answer::SignalUntil(None))
    );
    assert_eq!(s.check_finished(1), Ok(()), "one command position");
    // The code asking for a plain wait (or a timer) there diverges.
    assert!(matches!(
        s.decide_signal(0, "approve"),
        Decision::Suspend(SuspendReason::Nondeterminism { position: 0, .. })
    ));
}

#[test]
fn signal_waits_with_deadline_consume_signals_in_order_with_their_senders() {
    let mut h = HistoryBuilder::new("gate", 1, "null");
    let deadline = h.time(60);
    h.push(Event::SignalWaitStarted {
        position: 0,
        name: "approve".into(),
        deadline,
    });
    h.push(approve_from("alice", "1"));
    h.push(approve_from("bob", "2"));
    h.push(Event::SignalConsumed {
        position: 0,
        name: "approve".into(),
    });
    assert_eq!(
        state(&h).decide_signal_until(1, "approve", deadline, h.time(10)),
        Decision::Append {
            events: vec![
                Event::SignalWaitStarted {
                    position: 1,
                    name: "approve".into(),
                    deadline,
                },
                Event::SignalConsumed {
                    position: 1,
                    name: "approve".into()
                },
            ],
            then: Action::Answer(Answer::SignalUntil(Some((
                Payload("2".into()),
                "bob".into()
            )))),
        }
    );
    assert_eq!(
        state(&h).decide_signal_until(0, "approve", deadline, h.time(10)),
        Decision::Replay(Answer::SignalUntil(Some((
            Payload("1".into()),
            "alice".into()
        ))))
    );
}

#[test]
fn signal_wait_with_deadline_ends_on_cancel() {
    let mut h = HistoryBuilder::new("gate", 1, "null");
    let deadline = h.time(60);
    h.push(Event::SignalWaitStarted {
        position: 0,
        name: "approve".into(),
        deadline,
    });
    h.push(Event::SignalReceived {
        name: "cancel".into(),
        payload: Payload("\"window closed\"".into()),
        sent_by: "carol".into(),
    });
    assert!(matches!(
        state(&h).decide_signal_until(0, "approve", deadline, h.time(10)),
        Decision::Replay(Answer::Cancelled(why)) if why.contains("carol")
    ));
}

#[test]
fn a_signal_wait_timing_out_where_none_started_is_an_invalid_history() {
    let mut h = HistoryBuilder::new("gate", 1, "null");
    h.push(Event::SignalWaitTimedOut { position: 0 });
    assert!(RunState::from_records(&h.build()).is_err());
}
