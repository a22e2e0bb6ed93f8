//! The log the simulated engine writes to: the engine's [`SimLog`] with the explorer's hooks in
//! front of every append. Before an append reaches the log, the faults planned for a step are
//! put in the sandbox when its `StepScheduled` goes by and taken out when its `StepCompleted` or
//! `StepFailed` does (so a fault lasts exactly the step, across its retries and across a crash);
//! after it, a crash the log took is announced at once (no polling, no timer). The hooks also
//! trace the run: which step ran which activity, how many appends each incarnation made, whether
//! each planned fault fired.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::watch;
use waymark_engine::clock::SharedClock;
use waymark_engine::log::sim::SimLog;
use waymark_engine::log::{Error, EventLog};
use waymark_engine::{Event, Record, RunId, StepRef};
use waymark_sandbox::faults::SYSTEMS;
use waymark_sandbox::{Fault, Faults, Invariants, Shared};

use crate::schedule::{EstateChange, FaultPlan, Mark};

/// What the hooks saw, shared across the incarnations of the engine process.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    /// Each step the run scheduled (first time only), in order, with its activity.
    pub steps: Vec<(StepRef, String)>,
    /// Appends made by each incarnation of the process (the last one still counting).
    pub appends: Vec<u64>,
    /// The estate's effects when each incarnation began (its crash points inside activities
    /// are the effects from there on).
    pub effects_at_start: Vec<usize>,
    /// Per planned fault (in the schedule's order): whether it fired at least once.
    pub fired: Vec<bool>,
    /// Where the first planned fault's step began: the index of the append carrying its
    /// `StepScheduled` (in the incarnation that made it) and the estate's effects by then.
    pub fault_from: Option<Mark>,
    /// Where it ended: the append carrying its `StepCompleted`/`StepFailed`.
    pub fault_until: Option<Mark>,
    /// Where the first compensation began: the append carrying its `StepScheduled`.
    pub compensation_from: Option<Mark>,
    /// Per step, the systems that received a request while it was in flight (from its
    /// `StepScheduled` to its end; steps in flight at once share their requests).
    pub touched: Vec<(StepRef, Vec<&'static str>)>,
}

/// The faults of a schedule and which are in the sandbox now.
pub(crate) struct FaultState {
    plans: Vec<FaultPlan>,
    /// Indexes into `plans` of the rules installed, in the order of the sandbox's rules.
    installed: Vec<usize>,
}

impl FaultState {
    pub(crate) fn new(plans: Vec<FaultPlan>) -> FaultState {
        FaultState {
            plans,
            installed: Vec::new(),
        }
    }
}

/// Persistent faults are installed with this many firings left, so that the explorer can see
/// whether one fired (it lasts the whole step either way).
const PERSISTENT: u32 = u32::MAX;

/// The hooks, shared by every incarnation's [`HookedLog`].
pub(crate) struct Hooks {
    sandbox: Arc<Shared>,
    /// Steps at whose start an operator sets the traffic weights by hand (done once each).
    by_hand: Mutex<Vec<StepRef>>,
    /// The monitor's record just before the first change by hand: from then on, where traffic
    /// goes is the operator's doing, not the run's.
    pub(crate) before_by_hand: Mutex<Option<Invariants>>,
    faults: Mutex<FaultState>,
    pub(crate) trace: Mutex<Trace>,
    crashed: watch::Sender<bool>,
    /// The effect after which this incarnation dies (a crash inside an activity).
    effect_crash: Mutex<Option<u64>>,
    /// This incarnation died at an effect: its appends go nowhere and never resolve.
    dead: AtomicBool,
    /// Effects the estate recorded so far.
    effects: AtomicUsize,
    /// Steps in flight with each system's request count when they began.
    open: Mutex<Vec<(StepRef, Vec<u64>)>>,
}

impl Hooks {
    pub(crate) fn new(
        sandbox: Arc<Shared>,
        plans: Vec<FaultPlan>,
        estate: &[EstateChange],
    ) -> Arc<Hooks> {
        let fired = vec![false; plans.len()];
        let by_hand = estate
            .iter()
            .filter_map(|c| match c {
                EstateChange::WeightsByHand(step) => Some(*step),
                _ => None,
            })
            .collect();
        Arc::new(Hooks {
            sandbox,
            by_hand: Mutex::new(by_hand),
            before_by_hand: Mutex::new(None),
            faults: Mutex::new(FaultState::new(plans)),
            trace: Mutex::new(Trace {
                fired,
                ..Trace::default()
            }),
            crashed: watch::channel(false).0,
            effect_crash: Mutex::new(None),
            dead: AtomicBool::new(false),
            effects: AtomicUsize::new(0),
            open: Mutex::new(Vec::new()),
        })
    }

    /// The current incarnation dies right after the estate records effect `effect`.
    pub(crate) fn crash_after_effect(&self, effect: Option<u64>) {
        *self.effect_crash.lock().expect("effect crash lock") = effect;
    }

    /// Told by the sandbox of each effect as it lands (before the server answers): at the
    /// planned one, the process dies there (nothing more is appended) and the crash is
    /// announced.
    pub(crate) fn effect_landed(&self, index: usize) {
        self.effects.store(index + 1, Ordering::SeqCst);
        let mut armed = self.effect_crash.lock().expect("effect crash lock");
        if *armed == Some(index as u64) {
            *armed = None;
            self.dead.store(true, Ordering::SeqCst);
            self.crashed.send_replace(true);
        }
    }

    fn mark(&self, append: u64) -> Mark {
        Mark {
            append,
            effects: self.effects.load(Ordering::SeqCst),
        }
    }

    /// Resolves once the current incarnation's log took its crash.
    pub(crate) fn crash_announced(&self) -> watch::Receiver<bool> {
        self.crashed.subscribe()
    }

    /// A new incarnation: counts its appends from 0, announces nothing yet.
    pub(crate) fn new_incarnation(&self) {
        let mut trace = self.trace.lock().expect("trace lock");
        trace.appends.push(0);
        trace
            .effects_at_start
            .push(self.effects.load(Ordering::SeqCst));
        drop(trace);
        self.dead.store(false, Ordering::SeqCst);
        self.crashed.send_replace(false);
    }

    /// Records which installed faults fired, then takes out those of `step`.
    fn end_step(&self, step: StepRef) {
        let mut state = self.faults.lock().expect("faults lock");
        if !state.installed.iter().any(|&i| state.plans[i].step == step) {
            return;
        }
        let mut rules = self.sandbox.faults();
        self.note_fired(&state, &rules);
        let mut kept_rules = Vec::new();
        let mut kept = Vec::new();
        for (rule, &plan) in rules.rules.drain(..).zip(state.installed.iter()) {
            if state.plans[plan].step != step {
                kept_rules.push(rule);
                kept.push(plan);
            }
        }
        state.installed = kept;
        self.sandbox.set_faults(Faults { rules: kept_rules });
    }

    fn note_fired(&self, state: &FaultState, rules: &Faults) {
        let mut trace = self.trace.lock().expect("trace lock");
        for (rule, &plan) in rules.rules.iter().zip(state.installed.iter()) {
            let first = state.plans[plan].transient.unwrap_or(PERSISTENT);
            if rule.remaining != Some(first) {
                trace.fired[plan] = true;
            }
        }
    }

    /// Puts in the faults planned for `step` (unless they are in already: a step scheduled
    /// again after a crash lost its first `StepScheduled`).
    fn begin_step(&self, step: StepRef, activity: &str) {
        {
            let mut trace = self.trace.lock().expect("trace lock");
            if !trace.steps.iter().any(|(s, _)| *s == step) {
                trace.steps.push((step, activity.to_owned()));
            }
        }
        {
            let mut by_hand = self.by_hand.lock().expect("by-hand lock");
            if let Some(i) = by_hand.iter().position(|s| *s == step) {
                by_hand.remove(i);
                self.before_by_hand
                    .lock()
                    .expect("by-hand lock")
                    .get_or_insert_with(|| self.sandbox.invariants());
                self.sandbox.mutate(|st| {
                    let actions = st
                        .elb
                        .listeners
                        .iter_mut()
                        .flat_map(|l| l.default_actions.iter_mut())
                        .chain(st.elb.rules.iter_mut().flat_map(|r| r.actions.iter_mut()));
                    for action in actions {
                        for group in &mut action.target_groups {
                            group.weight = 50;
                        }
                    }
                });
            }
        }
        let mut state = self.faults.lock().expect("faults lock");
        let wanted: Vec<usize> = (0..state.plans.len())
            .filter(|&i| state.plans[i].step == step && !state.installed.contains(&i))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let mut rules = self.sandbox.faults();
        for i in wanted {
            let plan = &state.plans[i];
            rules.rules.push(Fault {
                system: plan.system.clone(),
                matching: String::new(),
                kind: plan.kind.clone(),
                remaining: Some(plan.transient.unwrap_or(PERSISTENT)),
            });
            state.installed.push(i);
        }
        self.sandbox.set_faults(rules);
    }

    /// Records which faults still installed fired (at the end of the execution).
    pub(crate) fn finish(&self) {
        let state = self.faults.lock().expect("faults lock");
        let rules = self.sandbox.faults();
        self.note_fired(&state, &rules);
    }

    fn before_append(&self, events: &[Event], index: u64) {
        for event in events {
            match event {
                Event::StepCompleted { step, .. } | Event::StepFailed { step, .. } => {
                    self.end_step(*step);
                    self.note_window(*step, index, false);
                }
                Event::StepScheduled { step, activity, .. } => {
                    self.begin_step(*step, activity);
                    self.note_window(*step, index, true);
                }
                _ => {}
            }
        }
    }

    /// Notes where the first planned fault's step and the first compensation begin and end.
    fn note_window(&self, step: StepRef, index: u64, begins: bool) {
        let faulty = {
            let state = self.faults.lock().expect("faults lock");
            state.plans.first().is_some_and(|p| p.step == step)
        };
        let counts: Vec<u64> = SYSTEMS.iter().map(|s| self.sandbox.requests(s)).collect();
        let touched = {
            let mut open = self.open.lock().expect("open steps lock");
            let at = open.iter().position(|(s, _)| *s == step);
            match (begins, at) {
                (true, None) => {
                    open.push((step, counts));
                    None
                }
                (false, Some(i)) => {
                    let (_, before) = open.remove(i);
                    Some(
                        SYSTEMS
                            .iter()
                            .zip(counts.iter().zip(before))
                            .filter(|(_, (now, then))| **now > *then)
                            .map(|(s, _)| *s)
                            .collect::<Vec<&'static str>>(),
                    )
                }
                _ => None,
            }
        };
        let mark = self.mark(index);
        let mut trace = self.trace.lock().expect("trace lock");
        if let Some(systems) = touched {
            match trace.touched.iter_mut().find(|(s, _)| *s == step) {
                Some((_, seen)) => {
                    for s in systems {
                        if !seen.contains(&s) {
                            seen.push(s);
                        }
                    }
                }
                None => trace.touched.push((step, systems)),
            }
        }
        if faulty {
            if begins {
                trace.fault_from.get_or_insert(mark);
            } else {
                trace.fault_until = Some(mark);
            }
        }
        if begins && matches!(step, StepRef::Compensation(_)) {
            trace.compensation_from.get_or_insert(mark);
        }
    }
}

/// One incarnation's log: the [`SimLog`] it opened, behind the hooks.
pub(crate) struct HookedLog {
    pub(crate) inner: Arc<SimLog>,
    hooks: Arc<Hooks>,
}

impl HookedLog {
    pub(crate) fn new(inner: Arc<SimLog>, hooks: Arc<Hooks>) -> Arc<HookedLog> {
        hooks.new_incarnation();
        Arc::new(HookedLog { inner, hooks })
    }
}

impl EventLog for HookedLog {
    fn append(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Vec<Record>, Error>> {
        if self.hooks.dead.load(Ordering::SeqCst) {
            // The process died at an effect: nothing it appends from now on reaches the log.
            return Box::pin(futures::future::pending());
        }
        if !self.inner.crashed() {
            self.hooks.before_append(&events, self.inner.appends());
        }
        let fut = self.inner.append(run, events);
        {
            let mut trace = self.hooks.trace.lock().expect("trace lock");
            if let Some(n) = trace.appends.last_mut() {
                *n = self.inner.appends();
            }
        }
        if self.inner.crashed() {
            self.hooks.crashed.send_replace(true);
        }
        fut
    }

    fn read(&self, run: RunId) -> Result<Vec<Record>, Error> {
        self.inner.read(run)
    }

    fn open_runs(&self) -> Result<Vec<RunId>, Error> {
        self.inner.open_runs()
    }

    fn runs(&self) -> Result<Vec<RunId>, Error> {
        self.inner.runs()
    }

    fn damage(&self) -> Vec<String> {
        self.inner.damage()
    }

    fn use_clock(&self, clock: SharedClock) {
        self.inner.use_clock(clock);
    }
}
