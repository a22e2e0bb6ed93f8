//! What one explored execution does differently from a plain run: where the process dies
//! ([`Crash`], stacked in order) and which fault each external system shows during which step
//! ([`FaultPlan`]). A [`Schedule`] is plain data with a one-line text form (`c12d,ssh.timeout@w14x1`)
//! that, with the seed, reproduces the execution (`--seed SEED/SCHEDULE --replay`).

use std::fmt;

use waymark_engine::log::sim::CrashAt;
use waymark_engine::StepRef;
use waymark_sandbox::faults::{catalogue, FaultKind};

/// Errors of this module: a schedule text that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One item of the text is not a crash or a fault.
    #[error(
        "schedule item {item:?}: {problem}; items are `cN` (crash at append N, its records lost), \
         `cNd` (crash right after append N is durable), `eN` (crash right after the estate's effect \
         N lands, before the activity hears its answer) and `SYSTEM.KIND@STEP[xK]` (a fault of the \
         sandbox catalogue during step STEP, `wP` for the workflow's step at position P or `cN` for \
         the N-th compensation; `xK`: it clears after K requests, else it lasts the whole step), \
         `slow-bootstrap`, `zone-b-unhealthy` and `weights-by-hand@STEP` (changes of the estate), \
         separated by commas, or `none`"
    )]
    Item {
        /// The item.
        item: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// One death of the engine process: at an append boundary of the log, or inside an activity
/// right after its effect on the estate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Crash {
    /// At the `append`-th append of the log as this incarnation of the process opened it
    /// (counted from 0), its records lost (`durable: false`, the process died before the flush)
    /// or already durable (it died right after, before anyone heard).
    Append {
        /// Index of the append, counted from the (re)start of the process.
        append: u64,
        /// Whether the append's flush completed before the death.
        durable: bool,
    },
    /// Right after the sandbox recorded its `effect`-th effect (counted from 0 since the estate
    /// started, across restarts): the effect landed, the activity has not heard its answer, the
    /// log is as of its last completed append and nothing more is appended.
    Effect {
        /// Index of the effect in the sandbox's effects.
        effect: u64,
    },
}

impl Crash {
    /// A crash at an append boundary.
    pub fn append(append: u64, durable: bool) -> Crash {
        Crash::Append { append, durable }
    }

    /// The log's crash point, for an append boundary.
    pub fn at_append(self) -> Option<CrashAt> {
        match self {
            Crash::Append { append, durable } => Some(CrashAt { append, durable }),
            Crash::Effect { .. } => None,
        }
    }

    /// The effect's index, for a crash inside an activity.
    pub fn after_effect(self) -> Option<u64> {
        match self {
            Crash::Effect { effect } => Some(effect),
            Crash::Append { .. } => None,
        }
    }
}

/// A fault one system shows while one step of the run is in flight (from its `StepScheduled` to
/// its `StepCompleted`/`StepFailed`): every request of `system` during the step gets `kind`, for
/// `transient` requests (then it clears) or, with `None`, for the whole step (persistent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// One of the sandbox's systems (`ssh`, `yb-admin`, `yb`, `k8s`, `elb`).
    pub system: String,
    /// What the system does instead of answering.
    pub kind: FaultKind,
    /// The step during which it shows.
    pub step: StepRef,
    /// `Some(k)`: it clears after `k` requests; `None`: it lasts the whole step.
    pub transient: Option<u32>,
}

impl FaultPlan {
    /// `persistent` or `transient xK`.
    pub fn duration(&self) -> String {
        match self.transient {
            Some(k) => format!("transient x{k}"),
            None => "persistent".to_owned(),
        }
    }
}

/// A change of the estate no system's API makes (issue 13's estate scenarios): a tserver slow
/// to bootstrap and zone B's traffic targets failing their health checks, from the start; an
/// operator setting every traffic forward to 50/50 by hand when a step begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EstateChange {
    /// `yb-a-2`'s tserver bootstraps 5 times slower (`Scenario::SlowBootstrap`).
    SlowBootstrap,
    /// Every target of zone B's traffic group fails its health checks (`Scenario::ZoneBUnhealthy`).
    ZoneBUnhealthy,
    /// Every traffic forward set to 50/50 by hand when this step begins.
    WeightsByHand(StepRef),
}

/// Crashes (applied one after the other: the second one counts appends from the first restart)
/// and faults of one execution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Deaths of the process, in order.
    pub crashes: Vec<Crash>,
    /// Faults, each during its step.
    pub faults: Vec<FaultPlan>,
    /// Changes of the estate.
    pub estate: Vec<EstateChange>,
}

impl Schedule {
    /// The plain run: no crash, no fault.
    pub fn plain() -> Schedule {
        Schedule::default()
    }

    /// How many crashes and faults it has (what shrinking makes smaller).
    pub fn size(&self) -> usize {
        self.crashes.len() + self.faults.len() + self.estate.len()
    }

    /// Parses the text form ([`fmt::Display`]).
    pub fn parse(text: &str) -> Result<Schedule, Error> {
        let mut schedule = Schedule::default();
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return Ok(schedule);
        }
        for item in text.split(',').map(str::trim) {
            let bad = |problem: &str| Error::Item {
                item: item.to_owned(),
                problem: problem.to_owned(),
            };
            match item {
                "slow-bootstrap" => {
                    schedule.estate.push(EstateChange::SlowBootstrap);
                    continue;
                }
                "zone-b-unhealthy" => {
                    schedule.estate.push(EstateChange::ZoneBUnhealthy);
                    continue;
                }
                _ => {}
            }
            if let Some(step) = item.strip_prefix("weights-by-hand@") {
                let step = parse_step(step).ok_or_else(|| bad("the step is `wP` or `cN`"))?;
                schedule.estate.push(EstateChange::WeightsByHand(step));
                continue;
            }
            if let Some(digits) = item.strip_prefix('e') {
                if let Ok(effect) = digits.parse() {
                    schedule.crashes.push(Crash::Effect { effect });
                    continue;
                }
            }
            if let Some(rest) = item.strip_prefix('c') {
                let (digits, durable) = match rest.strip_suffix('d') {
                    Some(d) => (d, true),
                    None => (rest, false),
                };
                let append = digits
                    .parse()
                    .map_err(|_| bad("a crash needs an append number"))?;
                schedule.crashes.push(Crash::Append { append, durable });
                continue;
            }
            let (what, when) = item
                .split_once('@')
                .ok_or_else(|| bad("neither a crash (`cN`) nor a fault (`SYSTEM.KIND@STEP`)"))?;
            let (system, kind_name) = what
                .split_once('.')
                .ok_or_else(|| bad("a fault is SYSTEM.KIND"))?;
            let kind = catalogue()
                .into_iter()
                .find(|(s, k)| s == system && k.name() == kind_name)
                .map(|(_, k)| k)
                .ok_or_else(|| {
                    bad(&format!(
                        "no fault {kind_name:?} of system {system:?} in the sandbox's catalogue ({})",
                        catalogue()
                            .iter()
                            .map(|(s, k)| format!("{s}.{}", k.name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            let (step_text, transient) = match when.split_once('x') {
                Some((s, k)) => (s, Some(k.parse().map_err(|_| bad("`xK` needs a number"))?)),
                None => (when, None),
            };
            let step = parse_step(step_text).ok_or_else(|| bad("the step is `wP` or `cN`"))?;
            schedule.faults.push(FaultPlan {
                system: system.to_owned(),
                kind,
                step,
                transient,
            });
        }
        Ok(schedule)
    }

    /// The schedules one item smaller, for shrinking: each crash left out (and, since the next
    /// crash counts appends from the restart the left-out one caused, also with the next crash
    /// moved to about where it was in the run: its index plus the left-out crash's, plus 0 to
    /// 2 for the appends a restart redoes), then each fault left out.
    pub fn smaller(&self) -> Vec<Schedule> {
        let mut out: Vec<Schedule> = Vec::new();
        for i in 0..self.crashes.len() {
            let mut s = self.clone();
            let gone = s.crashes.remove(i);
            out.push(s.clone());
            if let (
                Some(Crash::Append {
                    append: next,
                    durable,
                }),
                Crash::Append { append: gone, .. },
            ) = (s.crashes.get(i).copied(), gone)
            {
                for extra in 0..=2 {
                    let mut merged = s.clone();
                    merged.crashes[i] = Crash::Append {
                        append: next + gone + extra,
                        durable,
                    };
                    if !out.contains(&merged) {
                        out.push(merged);
                    }
                }
            }
        }
        for i in 0..self.faults.len() {
            let mut s = self.clone();
            s.faults.remove(i);
            out.push(s);
        }
        for i in 0..self.estate.len() {
            let mut s = self.clone();
            s.estate.remove(i);
            out.push(s);
        }
        out
    }
}

fn parse_step(text: &str) -> Option<StepRef> {
    if let Some(p) = text.strip_prefix('w') {
        p.parse().ok().map(StepRef::Workflow)
    } else {
        text.strip_prefix('c')?
            .parse()
            .ok()
            .map(StepRef::Compensation)
    }
}

fn step_text(step: StepRef) -> String {
    match step {
        StepRef::Workflow(p) => format!("w{p}"),
        StepRef::Compensation(n) => format!("c{n}"),
    }
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Crash::Append { append, durable } => {
                write!(f, "c{append}{}", if *durable { "d" } else { "" })
            }
            Crash::Effect { effect } => write!(f, "e{effect}"),
        }
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}@{}",
            self.system,
            self.kind.name(),
            step_text(self.step)
        )?;
        if let Some(k) = self.transient {
            write!(f, "x{k}")?;
        }
        Ok(())
    }
}

impl fmt::Display for EstateChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EstateChange::SlowBootstrap => f.write_str("slow-bootstrap"),
            EstateChange::ZoneBUnhealthy => f.write_str("zone-b-unhealthy"),
            EstateChange::WeightsByHand(step) => write!(f, "weights-by-hand@{}", step_text(*step)),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.size() == 0 {
            return f.write_str("none");
        }
        let items: Vec<String> = self
            .crashes
            .iter()
            .map(ToString::to_string)
            .chain(self.faults.iter().map(ToString::to_string))
            .chain(self.estate.iter().map(ToString::to_string))
            .collect();
        f.write_str(&items.join(","))
    }
}

/// A point of an execution: an append (its index in the incarnation that made it) and how
/// many effects the estate had recorded by then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    /// Index of the append.
    pub append: u64,
    /// Effects recorded before it.
    pub effects: usize,
}

/// A seed and a schedule: what `--seed` takes and what a violation prints (`SEED` alone, or
/// `SEED/SCHEDULE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reproduction {
    /// The seed of every random choice (run ids, `uuid()`, the sandbox's ids).
    pub seed: u64,
    /// The schedule.
    pub schedule: Schedule,
}

impl Reproduction {
    /// Parses `SEED` or `SEED/SCHEDULE`.
    pub fn parse(text: &str) -> Result<Reproduction, Error> {
        let (seed_text, schedule) = match text.split_once('/') {
            Some((s, rest)) => (s, Schedule::parse(rest)?),
            None => (text, Schedule::plain()),
        };
        let seed = seed_text.trim().parse().map_err(|_| Error::Item {
            item: text.to_owned(),
            problem: "the seed is a number (`SEED` or `SEED/SCHEDULE`)".into(),
        })?;
        Ok(Reproduction { seed, schedule })
    }
}

impl fmt::Display for Reproduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.schedule.size() == 0 {
            write!(f, "{}", self.seed)
        } else {
            write!(f, "{}/{}", self.seed, self.schedule)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_reads_back_as_the_same_schedule() {
        let (system, kind) = catalogue().into_iter().nth(1).unwrap();
        let s = Schedule {
            crashes: vec![
                Crash::append(12, true),
                Crash::Effect { effect: 4 },
                Crash::append(3, false),
            ],
            faults: vec![FaultPlan {
                system,
                kind,
                step: StepRef::Workflow(14),
                transient: Some(1),
            }],
            estate: vec![
                EstateChange::SlowBootstrap,
                EstateChange::ZoneBUnhealthy,
                EstateChange::WeightsByHand(StepRef::Workflow(20)),
            ],
        };
        let text = s.to_string();
        assert_eq!(Schedule::parse(&text).unwrap(), s, "{text}");
        let r = Reproduction {
            seed: 7,
            schedule: s,
        };
        assert_eq!(Reproduction::parse(&r.to_string()).unwrap(), r);
        assert_eq!(
            Reproduction::parse("7").unwrap().schedule,
            Schedule::plain()
        );
        let e = Schedule::parse("ssh.bogus@w1").unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains("catalogue"), "{e}");
    }

    #[test]
    fn shrinking_steps_leave_out_one_item_each() {
        let s = Schedule::parse("c1,c2d").unwrap();
        let smaller: Vec<String> = s.smaller().iter().map(ToString::to_string).collect();
        assert_eq!(smaller, ["c2d", "c3d", "c4d", "c5d", "c1"]);
    }
}
