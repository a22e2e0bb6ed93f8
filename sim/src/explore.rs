//! The explorer: runs the plain schedule once to learn the run's append boundaries and steps,
//! then every crash point (stacked up to the asked depth) and every fault of the sandbox's
//! catalogue at every step that touches its system (transient and persistent), checks each
//! execution, and shrinks each violating schedule to the fewest crashes and faults that still
//! violate. Sequential and deterministic: the same seed and options explore the same schedules
//! in the same order with the same results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use waymark_sandbox::faults::catalogue;
use waymark_sandbox::FaultKind;

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
    /// execution it extends (`--crashes N`; 1 is [`Crashes::All`]).
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
        }
    }

    fn execution(&self) -> ExecutionOptions {
        ExecutionOptions {
            dir: self.work_dir.join(format!("seed-{}", self.seed)),
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
    /// Schedules with crashes, by number of crashes.
    pub crash_schedules: BTreeMap<usize, usize>,
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

/// The fault schedules over the plain run's steps.
fn fault_schedules(plain: &Execution, options: &ExploreOptions) -> Vec<Schedule> {
    let mut out = Vec::new();
    let mut seen_activity: Vec<(&str, &str)> = Vec::new();
    for (step, activity) in &plain.steps {
        for system in systems_of(activity) {
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
            s.crashes.push(Crash { append, durable });
            out.push(s);
        }
    }
    out
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

/// Explores as `options` say; `progress` hears of every execution (shrinking's included).
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
        if !e.schedule.crashes.is_empty() {
            *report
                .crash_schedules
                .entry(e.schedule.crashes.len())
                .or_default() += 1;
        }
        for (plan, fired) in e.schedule.faults.iter().zip(&e.fired) {
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
    let over_budget = |report: &Report| {
        options
            .budget
            .is_some_and(|b| started.elapsed() >= b && report.explored > 0)
    };

    let plain = run(&Schedule::plain())?;
    progress(&plain);
    report.plain_appends = plain.appends.first().copied().unwrap_or(0);
    report.plain_steps = plain.steps.len();
    plain.end.name().clone_into(&mut report.plain_end);
    report.plain_simulated = plain.simulated;
    record(&mut report, &plain);

    let mut queue: Vec<Schedule> = Vec::new();
    if options.crashes.depth() > 0 {
        queue.extend(crash_extensions(&Schedule::plain(), report.plain_appends));
    }
    queue.extend(fault_schedules(&plain, options));
    if options.estate {
        queue.extend(estate_schedules(&plain));
    }
    report.planned = 1 + queue.len();
    let mut next = 0;
    while next < queue.len() {
        if over_budget(&report) {
            report.budget_spent = true;
            break;
        }
        let schedule = queue[next].clone();
        next += 1;
        let e = run(&schedule)?;
        progress(&e);
        record(&mut report, &e);
        if schedule.faults.is_empty() && (schedule.crashes.len() as u32) < options.crashes.depth() {
            let more = crash_extensions(&schedule, e.appends.last().copied().unwrap_or(0));
            report.planned += more.len();
            queue.extend(more);
        }
    }

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
