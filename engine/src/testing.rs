//! Test support: a builder for event histories, and canned histories whose doc comments number
//! each event, so that tests of the core read as `check(history, expected)`.

use chrono::{DateTime, TimeZone, Utc};

use crate::codec;
use crate::event::{CompensationSpec, Event, Payload, Record, RunId, StepRef};

/// Builds a history record by record, with a valid hash chain and a clock that ticks 1 s per event.
pub struct HistoryBuilder {
    run: RunId,
    records: Vec<Record>,
    t0: DateTime<Utc>,
}

impl HistoryBuilder {
    /// A history that starts with `RunStarted` of `workflow` v`version` with input `input` (JSON).
    pub fn new(workflow: &str, version: u32, input: &str) -> Self {
        let mut b = HistoryBuilder {
            run: RunId(uuid::Uuid::from_u128(
                0x0190_0000_0000_7000_8000_0000_0000_0001,
            )),
            records: Vec::new(),
            t0: Utc
                .with_ymd_and_hms(2026, 11, 1, 3, 0, 0)
                .single()
                .expect("valid time"),
        };
        b.push(Event::RunStarted {
            workflow: workflow.into(),
            version,
            input: Payload(input.into()),
            started_by: "test".into(),
        });
        b
    }

    /// Appends any event.
    pub fn push(&mut self, event: Event) -> &mut Self {
        let seq = self.records.len() as u64;
        let prev_hash = self.records.last().map_or([0; 32], |r| r.hash);
        let at = self.time(seq);
        let (_, hash) = codec::encode(seq, at, &prev_hash, &event).expect("encodable event");
        self.records.push(Record {
            run: self.run,
            seq,
            at,
            prev_hash,
            hash,
            event,
        });
        self
    }

    /// The builder's clock at event `seq`.
    pub fn time(&self, seq: u64) -> DateTime<Utc> {
        self.t0 + chrono::Duration::seconds(seq as i64)
    }

    /// `StepScheduled` + `AttemptStarted(1)` for a workflow step at `position`.
    pub fn scheduled(&mut self, position: u32, activity: &str, input: &str) -> &mut Self {
        self.push(Event::StepScheduled {
            step: StepRef::Workflow(position),
            activity: activity.into(),
            label: activity.into(),
            input: Payload(input.into()),
            compensation: None,
        });
        self.push(Event::AttemptStarted {
            step: StepRef::Workflow(position),
            attempt: 1,
        })
    }

    /// Like [`Self::scheduled`], with a compensation registered.
    pub fn scheduled_with_compensation(
        &mut self,
        position: u32,
        activity: &str,
        input: &str,
        compensation: &str,
    ) -> &mut Self {
        self.push(Event::StepScheduled {
            step: StepRef::Workflow(position),
            activity: activity.into(),
            label: activity.into(),
            input: Payload(input.into()),
            compensation: Some(CompensationSpec {
                activity: compensation.into(),
                input: Payload(input.into()),
                label: format!("undo {activity}"),
            }),
        });
        self.push(Event::AttemptStarted {
            step: StepRef::Workflow(position),
            attempt: 1,
        })
    }

    /// `StepCompleted` for a workflow step.
    pub fn completed(&mut self, position: u32, output: &str) -> &mut Self {
        self.push(Event::StepCompleted {
            step: StepRef::Workflow(position),
            output: Payload(output.into()),
        })
    }

    /// The records.
    pub fn build(&self) -> Vec<Record> {
        self.records.clone()
    }
}

/// Canned histories.
pub mod canned {
    use super::HistoryBuilder;
    use crate::event::{Event, StepRef};

    /// Two steps, the first completed, the second in flight when the process died:
    /// 0 `RunStarted` · 1 `StepScheduled`(0, "a") · 2 `AttemptStarted`(0, 1) · 3 `StepCompleted`(0)
    /// · 4 `StepScheduled`(1, "b") · 5 `AttemptStarted`(1, 1).
    pub fn second_step_in_flight() -> HistoryBuilder {
        let mut h = HistoryBuilder::new("two-steps", 1, "null");
        h.scheduled(0, "a", "1")
            .completed(0, "10")
            .scheduled(1, "b", "2");
        h
    }

    /// One step that failed once and waits for its retry:
    /// 0 `RunStarted` · 1 `StepScheduled`(0, "flaky") · 2 `AttemptStarted`(0, 1)
    /// · 3 `AttemptFailed`(0, 1, retry at t3 + 5 s).
    pub fn waiting_for_retry() -> HistoryBuilder {
        let mut h = HistoryBuilder::new("flaky", 1, "null");
        h.scheduled(0, "flaky", "null");
        let at = h.time(3) + chrono::Duration::seconds(5);
        h.push(Event::AttemptFailed {
            step: StepRef::Workflow(0),
            attempt: 1,
            error: "connection refused".into(),
            retryable: true,
            next_retry_at: Some(at),
        });
        h
    }

    /// A step whose last attempt failed for good, with the `StepFailed` of the same batch lost in
    /// a crash:
    /// 0 `RunStarted` · 1 `StepScheduled`(0, "restart") · 2 `AttemptStarted`(0, 1)
    /// · 3 `AttemptFailed`(0, 1, not retryable, no next attempt).
    pub fn gave_up_without_step_failed() -> HistoryBuilder {
        let mut h = HistoryBuilder::new("gave-up", 1, "null");
        h.scheduled(0, "restart", "\"n1\"");
        h.push(Event::AttemptFailed {
            step: StepRef::Workflow(0),
            attempt: 1,
            error: "permission denied".into(),
            retryable: false,
            next_retry_at: None,
        });
        h
    }

    /// Two compensable steps done, the run failed at the third, first compensation done:
    /// 0 `RunStarted` · 1-3 step 0 "traffic" (undo "traffic.undo") completed · 4-6 step 1 "scale"
    /// (undo "scale.undo") completed · 7-8 step 2 "restart" scheduled, attempt 1 · 9 `AttemptFailed`
    /// · 10 `StepFailed` · 11 `CompensationStarted` · 12-13 compensation 0 ("scale.undo") scheduled,
    /// attempt 1 · 14 `StepCompleted`(compensation 0).
    pub fn compensating_halfway() -> HistoryBuilder {
        let mut h = HistoryBuilder::new("saga", 1, "null");
        h.scheduled_with_compensation(0, "traffic", "\"A\"", "traffic.undo")
            .completed(0, "null")
            .scheduled_with_compensation(1, "scale", "0", "scale.undo")
            .completed(1, "3")
            .scheduled(2, "restart", "\"n1\"");
        h.push(Event::AttemptFailed {
            step: StepRef::Workflow(2),
            attempt: 1,
            error: "exit 1".into(),
            retryable: false,
            next_retry_at: None,
        });
        h.push(Event::StepFailed {
            step: StepRef::Workflow(2),
            error: "exit 1".into(),
        });
        h.push(Event::CompensationStarted {
            reason: "restart failed".into(),
            cancelled: false,
        });
        h.push(Event::StepScheduled {
            step: StepRef::Compensation(0),
            activity: "scale.undo".into(),
            label: "undo scale".into(),
            input: crate::event::Payload("0".into()),
            compensation: None,
        });
        h.push(Event::AttemptStarted {
            step: StepRef::Compensation(0),
            attempt: 1,
        });
        h.push(Event::StepCompleted {
            step: StepRef::Compensation(0),
            output: crate::event::Payload("null".into()),
        });
        h
    }
}
