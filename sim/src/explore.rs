//! The explorer: runs the plain schedule once to learn the run's append boundaries and steps,
//! then every crash point (stacked up to the asked depth) and every fault of the sandbox's
//! catalogue at every step that touches its system (transient and persistent), checks each
//! execution, and shrinks each violating schedule to the fewest crashes and faults that still
//! violate. Then, as asked, schedules that stack a fault and a crash ([`Combined`]).
//! Deterministic: the same seed and options explore the same schedules with the same results;
//! executions run on several threads (each on its own current-thread runtime and estate
//! folder) and are recorded and reported in the order they were planned.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use waymark_sandbox::faults::catalogue;
use waymark_sandbox::FaultKind;

use waymark_engine::StepRef;

use crate::schedule::{Crash, EstateChange, FaultPlan, Reproduction, Schedule};
use crate::world::{execute, Error, Execution, ExecutionOptions, Subject};

/// Which crash points to explore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crashes {
    /// None.
    None,
    /// Every append boundary of the plain run, before and after its flush, one crash each
    /// (`--crashes all`).
    All,
    /// Every combination of up to this many crashes, each at an append boundary of the
    /// execution it extends or right after one of the effects of its last incarnation
    /// (`--crashes N`; 1 is [`Crashes::All`]).
    Stacked(u32),
}

impl Crashes {
    fn depth(self) -> u32 {
        match self {
            Crashes::None => 0,
            Crashes::All => 1,
            Crashes::Stacked(n) => n,
        }
    }
}

/// Which faults to explore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Faults {
    /// None.
    None,
    /// Every `(system, kind)` of the sandbox's catalogue.
    All,
    /// These `(system, kind name)` pairs (`ssh.timeout`), or every kind of a system (`ssh`).
    Only(Vec<String>),
}

impl Faults {
    fn selects(&self, system: &str, kind: &FaultKind) -> bool {
        match self {
            Faults::None => false,
            Faults::All => true,
            Faults::Only(list) => list
                .iter()
                .any(|item| item == system || *item == format!("{system}.{}", kind.name())),
        }
    }

    /// Parses `all`, `none` or a comma-separated list of `SYSTEM` / `SYSTEM.KIND` of the
    /// catalogue.
    pub fn parse(text: &str) -> Result<Faults, String> {
        match text.trim() {
            "all" => return Ok(Faults::All),
            "none" | "" => return Ok(Faults::None),
            _ => {}
        }
        let known: Vec<String> = catalogue()
            .iter()
            .map(|(s, k)| format!("{s}.{}", k.name()))
            .collect();
        let mut list = Vec::new();
        for item in text.split(',').map(str::trim) {
            let ok = known
                .iter()
                .any(|k| k == item || k.split('.').next() == Some(item));
            if !ok {
                return Err(format!(
                    "--faults: {item:?} is not a system or a fault of the sandbox's catalogue; \
                     use all, none, or a list of: {}",
                    known.join(", ")
                ));
            }
            list.push(item.to_owned());
        }
        Ok(Faults::Only(list))
    }
}

/// Which steps each fault is tried at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultSteps {
    /// Every step whose activity touches the fault's system.
    Every,
    /// The first step of each activity that touches the fault's system.
    FirstOfEachActivity,
}

/// Which schedules stacking a fault and a crash to explore, enumerated from the executions of
/// the single faults: every transient fault that fired × every crash point of its step's retry
/// (each append boundary from its `StepScheduled` to its end, lost and durable, and each effect
/// in between), and every persistent fault that led to compensation × every crash point of that
/// compensation (each append boundary from the first compensation's `StepScheduled` to the
/// end, and each effect from there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combined {
    /// None.
    None,
    /// All of them (`--combined all`).
    All,
    /// A deterministic subset of about this many: every k-th of the full list in its order,
    /// k = ceil(all / N) (`--combined N`).
    Sample(usize),
}

/// What to explore.
#[derive(Clone, Debug)]
pub struct ExploreOptions {
    /// The seed of every random choice.
    pub seed: u64,
    /// Crash points.
    pub crashes: Crashes,
    /// Faults.
    pub faults: Faults,
    /// At which steps.
    pub fault_steps: FaultSteps,
    /// The estate's scenarios too (a slow bootstrap, zone B unhealthy, weights changed by
    /// hand at three points of the run).
    pub estate: bool,
    /// Wall-clock budget: no new execution starts once it is spent (the report says so).
    pub budget: Option<Duration>,
    /// The estate's folder, reused by every execution (emptied first).
    pub work_dir: PathBuf,
    /// Simulated time after which a run that has not ended is stuck.
    pub run_limit: Duration,
    /// How many violating schedules are shrunk (the first ones found, one per distinct first
    /// violation).
    pub shrink: usize,
    /// Schedules stacking a fault and a crash.
    pub combined: Combined,
    /// Executions run at once, each on its own thread, runtime and estate folder.
    pub threads: usize,
}

impl ExploreOptions {
    /// Every single crash point, every fault, no budget, in `work_dir`.
    pub fn new(seed: u64, work_dir: PathBuf) -> ExploreOptions {
        ExploreOptions {
            seed,
            crashes: Crashes::All,
            faults: Faults::All,
            fault_steps: FaultSteps::Every,
            estate: true,
            budget: None,
            work_dir,
            run_limit: Duration::from_secs(6 * 3600),
            shrink: 3,
            combined: Combined::None,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    fn execution(&self) -> ExecutionOptions {
        self.worker(0)
    }

    /// Worker `k`'s estate folder (worker 0's is the one `--replay` uses).
    fn worker(&self, k: usize) -> ExecutionOptions {
        let name = if k == 0 {
            format!("seed-{}", self.seed)
        } else {
            format!("seed-{}-worker-{k}", self.seed)
        };
        ExecutionOptions {
            dir: self.work_dir.join(name),
            run_limit: self.run_limit,
        }
    }
}

/// A violating schedule and its shrunk reproduction.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The schedule as explored.
    pub found: Reproduction,
    /// Its violations.
    pub violations: Vec<String>,
    /// The smallest schedule found that still violates (`--seed` takes it).
    pub shrunk: Reproduction,
    /// The shrunk schedule's violations.
    pub shrunk_violations: Vec<String>,
    /// How the shrunk execution ended.
    pub shrunk_end: String,
}

/// How often one fault of the catalogue was tried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCoverage {
    /// Schedules with it.
    pub schedules: usize,
    /// ... in which it fired at least once.
    pub fired: usize,
}

/// The schedules stacking a fault and a crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CombinedCoverage {
    /// All enumerated ([`Combined::All`] explores them all).
    pub enumerated: usize,
    /// Of them, crashes during a transient fault's retry.
    pub enumerated_retry: usize,
    /// Of them, crashes during the compensation a persistent fault caused.
    pub enumerated_compensation: usize,
    /// Planned (all, or the sample).
    pub planned: usize,
    /// Explored.
    pub explored: usize,
}

/// What an exploration found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The workflow.
    pub workflow: String,
    /// The seed.
    pub seed: u64,
    /// Executions run (shrinking's not counted).
    pub explored: usize,
    /// Executions planned (more than `explored` when the budget ran out).
    pub planned: usize,
    /// Appends of the plain run (its crash points are twice that: before and after each flush).
    pub plain_appends: u64,
    /// Steps of the plain run.
    pub plain_steps: usize,
    /// How the plain run ended.
    pub plain_end: String,
    /// Simulated time of the plain run.
    pub plain_simulated: Duration,
    /// Schedules with crashes and no fault, by number of crashes.
    pub crash_schedules: BTreeMap<usize, usize>,
    /// Effects of the plain run (its crash points inside activities).
    pub plain_effects: usize,
    /// Of the crash schedules, those with a crash inside an activity (after an effect).
    pub effect_crash_schedules: usize,
    /// Per system: the plain run's steps that touch it (each tried with every kind of the
    /// system, transient and persistent).
    pub fault_steps: BTreeMap<String, usize>,
    /// Schedules stacking a fault and a crash: explored, of all enumerated, and of those the
    /// crashes during a transient fault's retry and during a persistent fault's compensation.
    pub combined: CombinedCoverage,
    /// Per `system.kind`: schedules with it, and how many saw it fire.
    pub faults: BTreeMap<String, FaultCoverage>,
    /// Schedules with a change of the estate, per change (`slow-bootstrap`, ...), and their ends.
    pub estate: BTreeMap<String, Vec<String>>,
    /// Executions per end (`completed`, `compensated`, ...).
    pub ends: BTreeMap<String, usize>,
    /// Violating schedules (each with its violations).
    pub violating: Vec<(Reproduction, Vec<String>)>,
    /// The shrunk findings.
    pub findings: Vec<Finding>,
    /// Whether the budget stopped the exploration early.
    pub budget_spent: bool,
    /// Wall time of the exploration.
    pub wall: Duration,
    /// Simulated time of every execution, summed.
    pub simulated: Duration,
}

impl Report {
    /// Violations found (violating schedules).
    pub fn violations(&self) -> usize {
        self.violating.len()
    }

    /// The report as text; its last line reads `explored N schedules, V violations`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "simulate {} --seed {}: plain run {} after {} simulated ({} appends, {} steps)",
            self.workflow,
            self.seed,
            self.plain_end,
            human(self.plain_simulated),
            self.plain_appends,
            self.plain_steps
        );
        let crashes: usize = self.crash_schedules.values().sum();
        let _ = writeln!(
            out,
            "coverage: {} crash schedules ({}), {} fault schedules over {} faults of the catalogue",
            crashes,
            if self.crash_schedules.is_empty() {
                "none".to_owned()
            } else {
                self.crash_schedules
                    .iter()
                    .map(|(n, c)| format!("{c} with {n} crash{}", if *n == 1 { "" } else { "es" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            self.faults.values().map(|c| c.schedules).sum::<usize>(),
            self.faults.len()
        );
        if crashes > 0 {
            let _ = writeln!(
                out,
                "  crash points of the plain run: {} append boundaries x {{lost, durable}} and {} \
                 inside activities (after each effect on the estate); {} schedules crash after an effect",
                self.plain_appends, self.plain_effects, self.effect_crash_schedules
            );
        }
        for (system, steps) in &self.fault_steps {
            // The kinds tried (all of the catalogue's for the system, or those `--faults` chose).
            let kinds = self
                .faults
                .keys()
                .filter(|k| k.split('.').next() == Some(system.as_str()))
                .count();
            let tried: usize = self
                .faults
                .iter()
                .filter(|(k, _)| k.split('.').next() == Some(system.as_str()))
                .map(|(_, c)| c.schedules)
                .sum();
            let _ = writeln!(
                out,
                "  faults of {system:<8} {steps:>3} steps x {kinds} kinds x {{transient, persistent}}: \
                 {tried} schedules"
            );
        }
        if self.combined.planned > 0 || self.combined.enumerated > 0 {
            let c = &self.combined;
            let _ = writeln!(
                out,
                "  fault + crash: {} explored of {} planned; enumerated {} ({} crash points during \
                 a transient fault's retry, {} during a persistent fault's compensation)",
                c.explored,
                c.planned,
                c.enumerated,
                c.enumerated_retry,
                c.enumerated_compensation
            );
        }
        for (fault, c) in &self.faults {
            let _ = writeln!(
                out,
                "  {fault:<22} {:>4} schedules, fired in {:>4}",
                c.schedules, c.fired
            );
        }
        for (change, ends) in &self.estate {
            let _ = writeln!(
                out,
                "  estate {change:<15} {:>4} schedules, ended {}",
                ends.len(),
                ends.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "ends: {}",
            self.ends
                .iter()
                .map(|(e, n)| format!("{n} {e}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "time: {} simulated in {:.1} s of wall time ({:.0}x, {:.1} schedules/s)",
            human(self.simulated),
            self.wall.as_secs_f64(),
            self.simulated.as_secs_f64() / self.wall.as_secs_f64().max(1e-9),
            self.explored as f64 / self.wall.as_secs_f64().max(1e-9)
        );
        if self.budget_spent {
            let _ = writeln!(
                out,
                "budget spent: {} of {} planned schedules explored (raise --budget to explore them all)",
                self.explored, self.planned
            );
        }
        for (repro, violations) in self.violating.iter().take(20) {
            let _ = writeln!(out, "VIOLATION --seed {repro}: {}", violations.join("; "));
        }
        if self.violating.len() > 20 {
            let _ = writeln!(out, "... and {} more", self.violating.len() - 20);
        }
        for f in &self.findings {
            let _ = writeln!(
                out,
                "shrunk {} to {} ({} crash(es), {} fault(s)), ends {}: {}",
                f.found.schedule,
                f.shrunk.schedule,
                f.shrunk.schedule.crashes.len(),
                f.shrunk.schedule.faults.len(),
                f.shrunk_end,
                f.shrunk_violations.join("; ")
            );
            let _ = writeln!(
                out,
                "  reproduce: waymark simulate {} --seed {} --replay",
                self.workflow, f.shrunk
            );
        }
        let _ = writeln!(
            out,
            "explored {} schedules, {} violations",
            self.explored,
            self.violations()
        );
        out
    }
}

/// `1h 02m 03s`-style.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// The systems an activity may touch (by its name), for placing faults.
pub fn systems_of(activity: &str) -> &'static [&'static str] {
    const ALL: &[&str] = &["ssh", "yb-admin", "yb", "k8s", "elb"];
    match activity {
        "preflight.check" => ALL,
        "yb.change_leader_blacklist"
        | "yb.wait_leader_blacklist_drained"
        | "yb.tools_check"
        | "yb.wait_load_balancer"
        | "yb.wait_server_ready" => &["ssh", "yb-admin"],
        "yb-maintenance.restore_traffic_if_safe" => &["yb", "k8s", "elb"],
        a if a.starts_with("k8s.") => &["k8s"],
        a if a.starts_with("elb.") => &["elb"],
        a if a.starts_with("ssh.") => &["ssh"],
        a if a.starts_with("yb.") => &["yb"],
        _ => ALL,
    }
}

/// The systems a step of the plain run touched: those that received a request while it was in
/// flight (a fault of any other system cannot change that step: the execution would be the
/// plain run's); by its activity's name ([`systems_of`]) when the step did not end.
fn touched<'a>(plain: &'a Execution, step: StepRef, activity: &str) -> &'a [&'static str] {
    plain
        .touched
        .iter()
        .find(|(s, _)| *s == step)
        .map_or_else(|| systems_of(activity), |(_, systems)| systems.as_slice())
}

/// The fault schedules over the plain run's steps.
fn fault_schedules(plain: &Execution, options: &ExploreOptions) -> Vec<Schedule> {
    let mut out = Vec::new();
    let mut seen_activity: Vec<(&str, &str)> = Vec::new();
    for (step, activity) in &plain.steps {
        for system in touched(plain, *step, activity) {
            if options.fault_steps == FaultSteps::FirstOfEachActivity {
                if seen_activity.contains(&(activity.as_str(), system)) {
                    continue;
                }
                seen_activity.push((activity.as_str(), system));
            }
            for (s, kind) in catalogue() {
                if s != *system || !options.faults.selects(&s, &kind) {
                    continue;
                }
                for transient in [Some(1), None] {
                    out.push(Schedule {
                        faults: vec![FaultPlan {
                            system: s.clone(),
                            kind: kind.clone(),
                            step: *step,
                            transient,
                        }],
                        ..Schedule::default()
                    });
                }
            }
        }
    }
    out
}

/// Per system, how many of the plain run's steps a fault of it is tried at.
fn fault_steps(plain: &Execution, options: &ExploreOptions) -> BTreeMap<&'static str, usize> {
    let mut out: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (step, activity) in &plain.steps {
        for system in touched(plain, *step, activity) {
            if !catalogue()
                .iter()
                .any(|(s, k)| s == system && options.faults.selects(s, k))
            {
                continue;
            }
            if options.fault_steps == FaultSteps::FirstOfEachActivity
                && !seen.insert((activity.as_str(), system))
            {
                continue;
            }
            *out.entry(system).or_default() += 1;
        }
    }
    out
}

/// The estate's scenarios: a slow bootstrap, zone B unhealthy, and the weights changed by hand
/// at a quarter, half and three quarters of the plain run's steps.
fn estate_schedules(plain: &Execution) -> Vec<Schedule> {
    let one = |change: EstateChange| Schedule {
        estate: vec![change],
        ..Schedule::default()
    };
    let mut out = vec![
        one(EstateChange::SlowBootstrap),
        one(EstateChange::ZoneBUnhealthy),
    ];
    let n = plain.steps.len();
    for at in [n / 4, n / 2, 3 * n / 4] {
        if let Some((step, _)) = plain.steps.get(at) {
            out.push(one(EstateChange::WeightsByHand(*step)));
        }
    }
    out
}

fn crash_extensions(base: &Schedule, appends: u64) -> Vec<Schedule> {
    let mut out = Vec::new();
    for append in 0..appends {
        for durable in [false, true] {
            let mut s = base.clone();
            s.crashes.push(Crash::append(append, durable));
            out.push(s);
        }
    }
    out
}

/// The crash points inside activities of an execution: right after each of its effects.
fn effect_crashes(base: &Schedule, effects: std::ops::Range<usize>) -> Vec<Schedule> {
    effects
        .map(|effect| {
            let mut s = base.clone();
            s.crashes.push(Crash::Effect {
                effect: effect as u64,
            });
            s
        })
        .collect()
}

/// The schedules stacking the fault of `e` (one fault, no crash) with one crash: during its
/// retry (a transient fault that fired: from its step's `StepScheduled` to its end) or during
/// the compensation it caused (a persistent fault). Returns them and which of the two it was
/// (`true`: compensation).
fn combined_of(e: &Execution) -> Vec<(Schedule, bool)> {
    let Some(plan) = e.schedule.faults.first() else {
        return Vec::new();
    };
    if e.schedule.faults.len() != 1 || !e.schedule.crashes.is_empty() {
        return Vec::new();
    }
    let base = Schedule {
        crashes: Vec::new(),
        ..e.schedule.clone()
    };
    let total = e.appends.first().copied().unwrap_or(0);
    let (from, until, compensation) = if plan.transient.is_some() {
        if !e.fired.first().copied().unwrap_or(false) {
            return Vec::new();
        }
        match (e.fault_from, e.fault_until) {
            (Some(f), Some(u)) => (f, u, false),
            (Some(f), None) => (
                f,
                crate::schedule::Mark {
                    append: total.saturating_sub(1),
                    effects: e.effects,
                },
                false,
            ),
            _ => return Vec::new(),
        }
    } else {
        let Some(c) = e.compensation_from else {
            return Vec::new();
        };
        (
            c,
            crate::schedule::Mark {
                append: total.saturating_sub(1),
                effects: e.effects,
            },
            true,
        )
    };
    let mut out: Vec<(Schedule, bool)> = Vec::new();
    for append in from.append..=until.append.min(total.saturating_sub(1)) {
        for durable in [false, true] {
            let mut s = base.clone();
            s.crashes.push(Crash::append(append, durable));
            out.push((s, compensation));
        }
    }
    let last_effect = if compensation {
        e.effects
    } else {
        until.effects
    };
    for s in effect_crashes(&base, from.effects..last_effect.max(from.effects)) {
        out.push((s, compensation));
    }
    out
}

/// Every k-th of `all` (k = ceil(len / n)), in order: a deterministic subset of about `n`.
fn sample<T: Clone>(all: &[T], n: usize) -> Vec<T> {
    if n == 0 || all.is_empty() {
        return Vec::new();
    }
    let k = all.len().div_ceil(n);
    all.iter().step_by(k).cloned().collect()
}

/// Runs `schedules` on `options.threads` threads (worker `k` in its own estate folder, each
/// execution on its own current-thread runtime) and hands each execution to `sink` on this
/// thread, in the order of `schedules`. No new execution starts once `stop` says so (the
/// budget); the first error stops the rest and is returned.
fn run_all(
    subject: &dyn Subject,
    seed: u64,
    options: &ExploreOptions,
    schedules: &[Schedule],
    stop: &(dyn Fn() -> bool + Sync),
    sink: &mut dyn FnMut(Execution),
) -> Result<(), Error> {
    let threads = options.threads.clamp(1, schedules.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, Result<Execution, Error>)>();
    std::thread::scope(|scope| {
        for k in 0..threads {
            let tx = tx.clone();
            let (next, failed) = (&next, &failed);
            let mut exec = options.worker(k);
            exec.run_limit = options.run_limit;
            scope.spawn(move || loop {
                if failed.load(Ordering::SeqCst) || stop() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(schedule) = schedules.get(i) else {
                    break;
                };
                let result = execute(subject, seed, schedule, &exec);
                if result.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                if tx.send((i, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut pending: BTreeMap<usize, Execution> = BTreeMap::new();
        let mut expected = 0;
        let mut error = None;
        for (i, result) in rx {
            match result {
                Ok(e) => {
                    pending.insert(i, e);
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
            while let Some(e) = pending.remove(&expected) {
                sink(e);
                expected += 1;
            }
        }
        // Executions after a gap (the budget ran out while an earlier one was never started).
        for (_, e) in std::mem::take(&mut pending) {
            sink(e);
        }
        error.map_or(Ok(()), Err)
    })
}

/// Greedy shrinking: leaves out one crash or fault at a time and keeps the smaller schedule
/// whenever it still violates, until no item can go. Returns the schedule, its violations and
/// how it ended.
fn shrink_schedule(
    run: &dyn Fn(&Schedule) -> Result<Execution, Error>,
    schedule: &Schedule,
    violations: Vec<String>,
    progress: &mut dyn FnMut(&Execution),
) -> Result<(Schedule, Vec<String>, String), Error> {
    let mut best = schedule.clone();
    let mut best_violations = violations;
    let mut best_end = String::new();
    'shrink: loop {
        for smaller in best.smaller() {
            let e = run(&smaller)?;
            progress(&e);
            if !e.violations.is_empty() {
                best = smaller;
                best_violations = e.violations;
                e.end.name().clone_into(&mut best_end);
                continue 'shrink;
            }
        }
        break;
    }
    if best_end.is_empty() {
        let e = run(&best)?;
        best_violations = e.violations;
        e.end.name().clone_into(&mut best_end);
    }
    Ok((best, best_violations, best_end))
}

/// Shrinks a violating reproduction to the fewest crashes and faults that still violate
/// (`None` when it does not violate at all).
pub fn shrink(
    subject: &dyn Subject,
    repro: &Reproduction,
    options: &ExploreOptions,
) -> Result<Option<Finding>, Error> {
    let mut o = options.clone();
    o.seed = repro.seed;
    let exec_options = o.execution();
    let run = |schedule: &Schedule| execute(subject, repro.seed, schedule, &exec_options);
    let first = run(&repro.schedule)?;
    if first.violations.is_empty() {
        return Ok(None);
    }
    let (best, shrunk_violations, shrunk_end) =
        shrink_schedule(&run, &repro.schedule, first.violations.clone(), &mut |_| {})?;
    Ok(Some(Finding {
        found: repro.clone(),
        violations: first.violations,
        shrunk: Reproduction {
            seed: repro.seed,
            schedule: best,
        },
        shrunk_violations,
        shrunk_end,
    }))
}

/// Runs one reproduction (`--seed SEED/SCHEDULE --replay`).
pub fn replay(
    subject: &dyn Subject,
    repro: &Reproduction,
    options: &ExploreOptions,
) -> Result<Execution, Error> {
    let mut o = options.clone();
    o.seed = repro.seed;
    execute(subject, repro.seed, &repro.schedule, &o.execution())
}

/// Explores as `options` say; `progress` hears of every execution (shrinking's included), in
/// the order they were planned.
pub fn explore(
    subject: &dyn Subject,
    options: &ExploreOptions,
    progress: &mut dyn FnMut(&Execution),
) -> Result<Report, Error> {
    let started = Instant::now();
    let exec_options = options.execution();
    let run = |schedule: &Schedule| execute(subject, options.seed, schedule, &exec_options);
    let mut report = Report {
        workflow: subject.workflow().to_owned(),
        seed: options.seed,
        ..Report::default()
    };
    let record = |report: &mut Report, e: &Execution| {
        report.explored += 1;
        report.simulated += e.simulated;
        *report.ends.entry(e.end.name().to_owned()).or_default() += 1;
        if !e.schedule.crashes.is_empty() && e.schedule.faults.is_empty() {
            *report
                .crash_schedules
                .entry(e.schedule.crashes.len())
                .or_default() += 1;
            if e.schedule
                .crashes
                .iter()
                .any(|c| c.after_effect().is_some())
            {
                report.effect_crash_schedules += 1;
            }
        }
        if !e.schedule.crashes.is_empty() && !e.schedule.faults.is_empty() {
            report.combined.explored += 1;
        }
        // The fault coverage counts the schedules of faults alone (the fault + crash ones are
        // counted in `combined`).
        let faults_alone = if e.schedule.crashes.is_empty() {
            e.schedule.faults.as_slice()
        } else {
            &[]
        };
        for (plan, fired) in faults_alone.iter().zip(&e.fired) {
            let c = report
                .faults
                .entry(format!("{}.{}", plan.system, plan.kind.name()))
                .or_default();
            c.schedules += 1;
            c.fired += usize::from(*fired);
        }
        for change in &e.schedule.estate {
            let name = change.to_string();
            let name = name.split('@').next().unwrap_or_default().to_owned();
            report
                .estate
                .entry(name)
                .or_default()
                .push(e.end.name().to_owned());
        }
        if !e.violations.is_empty() {
            report.violating.push((
                Reproduction {
                    seed: e.seed,
                    schedule: e.schedule.clone(),
                },
                e.violations.clone(),
            ));
        }
    };
    let over_budget = || options.budget.is_some_and(|b| started.elapsed() >= b);

    let plain = run(&Schedule::plain())?;
    progress(&plain);
    report.plain_appends = plain.appends.first().copied().unwrap_or(0);
    report.plain_steps = plain.steps.len();
    report.plain_effects = plain.effects;
    plain.end.name().clone_into(&mut report.plain_end);
    report.plain_simulated = plain.simulated;
    record(&mut report, &plain);

    let mut queue: Vec<Schedule> = Vec::new();
    if options.crashes.depth() > 0 {
        queue.extend(crash_extensions(&Schedule::plain(), report.plain_appends));
        queue.extend(effect_crashes(&Schedule::plain(), 0..plain.effects));
    }
    let faults = fault_schedules(&plain, options);
    for (system, steps) in fault_steps(&plain, options) {
        report.fault_steps.insert(system.to_owned(), steps);
    }
    queue.extend(faults);
    if options.estate {
        queue.extend(estate_schedules(&plain));
    }
    report.planned = 1 + queue.len();
    let mut combined: Vec<(Schedule, bool)> = Vec::new();
    let mut depth = 1;
    loop {
        let mut extensions: Vec<Schedule> = Vec::new();
        let mut sink = |e: Execution| {
            progress(&e);
            record(&mut report, &e);
            if options.combined != Combined::None {
                combined.extend(combined_of(&e));
            }
            if e.schedule.faults.is_empty()
                && !e.schedule.crashes.is_empty()
                && e.schedule.crashes.len() < options.crashes.depth() as usize
                && e.schedule.crashes.len() == depth
            {
                extensions.extend(crash_extensions(
                    &e.schedule,
                    e.appends.last().copied().unwrap_or(0),
                ));
                // And inside the activities of the last incarnation: after each of its effects.
                let from = e.effects_at_start.last().copied().unwrap_or(0);
                extensions.extend(effect_crashes(&e.schedule, from..e.effects.max(from)));
            }
        };
        run_all(
            subject,
            options.seed,
            options,
            &queue,
            &over_budget,
            &mut sink,
        )?;
        if over_budget() {
            break;
        }
        if extensions.is_empty() {
            break;
        }
        report.planned += extensions.len();
        queue = extensions;
        depth += 1;
    }
    if options.combined != Combined::None {
        report.combined.enumerated = combined.len();
        report.combined.enumerated_compensation = combined.iter().filter(|(_, c)| *c).count();
        report.combined.enumerated_retry =
            report.combined.enumerated - report.combined.enumerated_compensation;
        let all: Vec<Schedule> = combined.into_iter().map(|(s, _)| s).collect();
        let chosen = match options.combined {
            Combined::Sample(n) => sample(&all, n),
            _ => all,
        };
        report.combined.planned = chosen.len();
        report.planned += chosen.len();
        if !over_budget() {
            let mut sink = |e: Execution| {
                progress(&e);
                record(&mut report, &e);
            };
            run_all(
                subject,
                options.seed,
                options,
                &chosen,
                &over_budget,
                &mut sink,
            )?;
        }
    }
    report.budget_spent = report.explored < report.planned;

    // Shrink the first violating schedules, one per distinct first violation.
    let mut shrunk_kinds: Vec<String> = Vec::new();
    let violating = report.violating.clone();
    for (repro, violations) in violating {
        if report.findings.len() >= options.shrink {
            break;
        }
        let kind = violations
            .first()
            .map(|v| v.split(':').next().unwrap_or(v).to_owned())
            .unwrap_or_default();
        if shrunk_kinds.contains(&kind) {
            continue;
        }
        shrunk_kinds.push(kind);
        let (best, best_violations, best_end) =
            shrink_schedule(&run, &repro.schedule, violations.clone(), progress)?;
        report.findings.push(Finding {
            found: repro.clone(),
            violations,
            shrunk: Reproduction {
                seed: options.seed,
                schedule: best,
            },
            shrunk_violations: best_violations,
            shrunk_end: best_end,
        });
    }
    report.wall = started.elapsed();
    Ok(report)
}
