//! The runbook as a checklist (pure): a run's events and progress folded into its runbook
//! steps, each with its sub-steps (one per node, per source, per check), and rendered as text
//! lines. `waymark run|attach|demo` draw it live on a terminal (`commands/watch.rs`, with
//! indicatif); `waymark show` groups its steps the same way ([`group_of`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use waymark_engine::event::{Event, StepRef};

/// The group of the checks before any change (pre-flight, gates, reads, approval).
pub const CHECKS: usize = 0;

/// Titles of a workflow's checklist: index 0 the checks before any change, then its runbook
/// steps in order (`yb-maintenance`: the nine steps of the runbook), then the compensation.
pub fn titles(workflow: &str) -> Vec<String> {
    let mut t = vec!["checks before any change (read-only)".to_owned()];
    if workflow == "yb-maintenance" {
        t.extend(
            waymark_workflows::maintenance::steps::ALL
                .iter()
                .map(|s| format!("{}. {}", s.number, s.title)),
        );
    } else {
        t.push("steps".to_owned());
    }
    t.push("compensation (undoing what was done)".to_owned());
    t
}

/// The group a step label belongs to among `groups` titles: a label `N. ...` is runbook step N
/// (0 and unnumbered labels: the checks, or the steps of a workflow without a runbook), a step
/// scheduled while compensating is the compensation.
pub fn group_of(label: &str, compensating: bool, groups: usize) -> usize {
    let compensation = groups - 1;
    if compensating {
        return compensation;
    }
    let number: String = label.chars().take_while(char::is_ascii_digit).collect();
    let numbered = label[number.len()..].starts_with(". ");
    match number.parse::<usize>() {
        Ok(n) if numbered && n < compensation => n,
        // A workflow without runbook numbers: everything is its one group of steps.
        _ if groups == 3 && !label.is_empty() => 1,
        _ => CHECKS,
    }
}

/// Where a sub-step stands.
#[derive(Clone, Debug, PartialEq)]
pub enum SubStatus {
    /// Scheduled, no attempt yet (or waiting for a retry).
    Waiting,
    /// An attempt is running.
    Running,
    /// Completed.
    Done,
    /// Failed for good.
    Failed(String),
}

/// One step of the run (one activity call with its retries).
#[derive(Clone, Debug)]
pub struct SubStep {
    /// Its label.
    pub label: String,
    /// The runbook step it belongs to.
    pub group: usize,
    /// Where it stands.
    pub status: SubStatus,
    /// When it was scheduled.
    pub scheduled_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Attempts started.
    pub attempts: u32,
    /// The last failed attempt's error, and when the next attempt is due (retries in place).
    pub last_failure: Option<(String, Option<DateTime<Utc>>)>,
}

/// A wait's progress, read from an activity's heartbeat: a fraction when the message has one
/// (`40.0%`, `2 of 3`).
#[derive(Clone, Debug, PartialEq)]
pub struct WaitProgress {
    /// The step label.
    pub label: String,
    /// The message.
    pub message: String,
    /// Done so far, out of `len` (percent: of 100).
    pub pos: u64,
    /// The whole.
    pub len: u64,
}

/// Reads a fraction from a progress message: the first `P%`, else the first `A of B`.
pub fn fraction(message: &str) -> Option<(u64, u64)> {
    let words: Vec<&str> = message.split_whitespace().collect();
    for w in &words {
        if let Some(p) = w.trim_end_matches([',', ';', ')']).strip_suffix('%') {
            if let Ok(p) = p.trim_start_matches('(').parse::<f64>() {
                if (0.0..=100.0).contains(&p) {
                    return Some((p.round() as u64, 100));
                }
            }
        }
    }
    let number = |w: &str| {
        w.trim_matches(|c: char| !c.is_ascii_digit())
            .parse::<u64>()
            .ok()
    };
    for i in 1..words.len().saturating_sub(1) {
        if words[i] == "of" {
            if let (Some(a), Some(b)) = (number(words[i - 1]), number(words[i + 1])) {
                if b > 0 && a <= b {
                    return Some((a, b));
                }
            }
        }
    }
    None
}

/// The checklist of one run.
#[derive(Clone, Debug)]
pub struct Checklist {
    titles: Vec<String>,
    subs: BTreeMap<StepRef, SubStep>,
    order: Vec<StepRef>,
    compensating: bool,
    ended: Option<String>,
    waiting_for: Option<String>,
    progress: Option<(String, String)>,
}

/// What to draw: the lines above the current sub-step, the current sub-step (for the spinner),
/// the wait's progress, the lines below.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Board {
    /// Done and current runbook steps, the current one's finished sub-steps under it.
    pub above: Vec<String>,
    /// The current sub-step (attempt, retry, elapsed), if one runs.
    pub current: Option<String>,
    /// The current wait's progress, if it reports a fraction.
    pub wait: Option<WaitProgress>,
    /// The runbook steps still to come.
    pub below: Vec<String>,
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let s = (to - from).num_milliseconds().max(0) as f64 / 1000.0;
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

impl Checklist {
    /// An empty checklist for `workflow`.
    pub fn new(workflow: &str) -> Checklist {
        Checklist {
            titles: titles(workflow),
            subs: BTreeMap::new(),
            order: Vec::new(),
            compensating: false,
            ended: None,
            waiting_for: None,
            progress: None,
        }
    }

    /// Folds one event in.
    pub fn apply(&mut self, at: DateTime<Utc>, event: &Event) {
        match event {
            Event::RunStarted { workflow, .. } => {
                self.titles = titles(workflow);
            }
            Event::StepScheduled { step, label, .. } => {
                let group = group_of(label, self.compensating, self.titles.len());
                self.order.push(*step);
                self.subs.insert(
                    *step,
                    SubStep {
                        label: label.clone(),
                        group,
                        status: SubStatus::Waiting,
                        scheduled_at: at,
                        ended_at: None,
                        attempts: 0,
                        last_failure: None,
                    },
                );
                self.waiting_for = None;
            }
            Event::AttemptStarted { step, attempt } => {
                if let Some(s) = self.subs.get_mut(step) {
                    s.status = SubStatus::Running;
                    s.attempts = s.attempts.max(*attempt);
                }
            }
            Event::AttemptFailed {
                step,
                error,
                next_retry_at,
                ..
            } => {
                if let Some(s) = self.subs.get_mut(step) {
                    s.status = SubStatus::Waiting;
                    s.last_failure = Some((error.clone(), *next_retry_at));
                }
            }
            Event::AttemptInterrupted { step, .. } => {
                if let Some(s) = self.subs.get_mut(step) {
                    s.status = SubStatus::Waiting;
                }
            }
            Event::StepCompleted { step, .. } => {
                if let Some(s) = self.subs.get_mut(step) {
                    s.status = SubStatus::Done;
                    s.ended_at = Some(at);
                }
                if self
                    .progress
                    .as_ref()
                    .is_some_and(|(l, _)| self.subs.get(step).is_some_and(|s| s.label == *l))
                {
                    self.progress = None;
                }
            }
            Event::StepFailed { step, error } => {
                if let Some(s) = self.subs.get_mut(step) {
                    s.status = SubStatus::Failed(error.clone());
                    s.ended_at = Some(at);
                }
            }
            Event::TimerStarted { fire_at, .. } => {
                self.waiting_for = Some(format!("waiting until {}", fire_at.format("%H:%M:%S")));
            }
            Event::SignalWaitStarted { name, deadline, .. } => {
                self.waiting_for = Some(format!(
                    "waiting for signal {name:?} until {}",
                    deadline.format("%H:%M:%S")
                ));
            }
            Event::TimerFired { .. }
            | Event::SignalConsumed { .. }
            | Event::SignalWaitTimedOut { .. } => self.waiting_for = None,
            Event::CompensationStarted { reason, cancelled } => {
                self.compensating = true;
                self.progress = None;
                let _ = (reason, cancelled);
            }
            Event::RunCompleted { .. } => self.ended = Some("completed".to_owned()),
            Event::RunFailed { .. } => self.ended = Some("failed (compensated)".to_owned()),
            Event::RunCancelled { .. } => self.ended = Some("cancelled (compensated)".to_owned()),
            Event::RunRefused { .. } => self.ended = Some("refused (nothing changed)".to_owned()),
            Event::RunSuspended { .. } => self.ended = Some("suspended".to_owned()),
            _ => {}
        }
    }

    /// Takes an activity's progress report.
    pub fn progress(&mut self, label: &str, message: &str) {
        self.progress = Some((label.to_owned(), message.to_owned()));
    }

    /// The sub-step in flight (the last scheduled one not ended).
    fn current(&self) -> Option<&SubStep> {
        self.order
            .iter()
            .rev()
            .filter_map(|s| self.subs.get(s))
            .find(|s| matches!(s.status, SubStatus::Running | SubStatus::Waiting))
    }

    /// The group in flight: the current sub-step's, else the last one that has a sub-step.
    fn current_group(&self) -> Option<usize> {
        if self.ended.is_some() {
            return None;
        }
        self.current().map(|s| s.group).or_else(|| {
            self.order
                .last()
                .and_then(|s| self.subs.get(s))
                .map(|s| s.group)
        })
    }

    /// What to draw at `now`.
    pub fn board(&self, now: DateTime<Utc>) -> Board {
        let current_group = self.current_group();
        let current = self.current();
        let mut board = Board::default();
        for (g, title) in self.titles.iter().enumerate() {
            let subs: Vec<&SubStep> = self
                .order
                .iter()
                .filter_map(|s| self.subs.get(s))
                .filter(|s| s.group == g)
                .collect();
            let is_compensation = g == self.titles.len() - 1;
            if is_compensation && subs.is_empty() && !self.compensating {
                continue;
            }
            let failed = subs
                .iter()
                .filter(|s| matches!(s.status, SubStatus::Failed(_)))
                .count();
            let done = subs.iter().filter(|s| s.status == SubStatus::Done).count();
            let started = subs.first().map(|s| s.scheduled_at);
            let ended = subs.iter().filter_map(|s| s.ended_at).max();
            let is_current = current_group == Some(g);
            let later_started = self
                .order
                .iter()
                .filter_map(|s| self.subs.get(s))
                .any(|s| s.group > g);
            let (mark, tail) = if is_current {
                (
                    "▸",
                    format!(
                        "{done} done{}",
                        if failed > 0 {
                            format!(", {failed} failed")
                        } else {
                            String::new()
                        }
                    ),
                )
            } else if subs.is_empty() {
                if self.ended.is_some() || later_started {
                    ("-", "skipped".to_owned())
                } else {
                    ("·", String::new())
                }
            } else if failed > 0 {
                ("✖", format!("{failed} failed"))
            } else {
                let span = match (started, ended) {
                    (Some(a), Some(b)) => format!(", {}", secs(a, b)),
                    _ => String::new(),
                };
                (
                    "✔",
                    format!("{done} step{}{span}", if done == 1 { "" } else { "s" }),
                )
            };
            let line = if tail.is_empty() {
                format!("{mark} {title}")
            } else {
                format!("{mark} {title}  ({tail})")
            };
            let below = !is_current
                && subs.is_empty()
                && current_group.is_some_and(|c| g > c)
                && self.ended.is_none();
            if below {
                board.below.push(line);
                continue;
            }
            board.above.push(line);
            // Sub-steps: collapsed once their step is done; the current step's finished ones
            // and every failed one are shown.
            for s in &subs {
                let show = match &s.status {
                    SubStatus::Failed(_) => true,
                    SubStatus::Done => is_current,
                    _ => false,
                };
                if !show {
                    continue;
                }
                let what = match &s.status {
                    SubStatus::Failed(e) => format!("✖ {}: {e}", s.label),
                    _ => format!(
                        "✔ {}  {}",
                        s.label,
                        s.ended_at
                            .map_or(String::new(), |e| secs(s.scheduled_at, e))
                    ),
                };
                board.above.push(format!("    {what}"));
            }
        }
        if let Some(s) = current.filter(|_| self.ended.is_none()) {
            let mut text = format!("{}  {}", s.label, secs(s.scheduled_at, now));
            if s.attempts > 1 || s.last_failure.is_some() {
                text.push_str(&format!("  attempt {}", s.attempts.max(1)));
            }
            if let Some((error, next)) = &s.last_failure {
                let when = next.map_or(String::new(), |t| {
                    format!(", retry at {}", t.format("%H:%M:%S"))
                });
                text.push_str(&format!(" (last failed{when}: {error})"));
            }
            board.current = Some(text);
            board.wait = self
                .progress
                .as_ref()
                .filter(|(label, _)| *label == s.label)
                .map(|(label, message)| {
                    let (pos, len) = fraction(message).unwrap_or((0, 0));
                    WaitProgress {
                        label: label.clone(),
                        message: message.clone(),
                        pos,
                        len,
                    }
                });
        } else if let (Some(w), None) = (&self.waiting_for, &self.ended) {
            board.current = Some(w.clone());
        }
        if let Some(e) = &self.ended {
            board.above.push(format!("run {e}"));
        }
        board
    }
}
