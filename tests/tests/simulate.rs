//! Deterministic simulation (issue 13): the explorer over crash points and faults.
//!
//! `yb-maintenance` on the in-memory sandbox, in simulated time: every single crash point of a
//! full run (each append boundary, its records lost or durable, and right after each effect on
//! the estate, before the activity hears its answer) with no fault; every fault kind of the
//! sandbox's catalogue at every step that touches its system, transient and persistent, and a
//! stated deterministic sample of the schedules stacking a fault and a crash (during a
//! transient fault's retry, during a persistent fault's compensation); all invariants green; a
//! known-bad workflow (a restart that does not check before acting) in which the explorer finds
//! the double restart and shrinks it to one crash; the same seed twice gives the same history
//! byte for byte. The counts explored are printed. `WAYMARK_SIM_COMBINED=all` explores every
//! fault + crash schedule instead of the sample (README, "Simulation").

use std::time::Duration;

use waymark_activities::ssh::{RunCommand, RunInput};
use waymark_engine::runtime::EngineBuilder;
use waymark_engine::workflow::{self, Workflow};
use waymark_engine::{Payload, WorkflowContext};
use waymark_sim::subject::sandbox_inventory;
use waymark_sim::{
    execute, explore, replay, shrink, Combined, Crash, Crashes, End, ExecutionOptions,
    ExploreOptions, FaultSteps, Faults, Reproduction, Schedule, Subject, World, YbMaintenance,
};
use waymark_workflows::Inventory;

use crate::util::{temp_dir, waymark};

fn options(seed: u64, dir: &std::path::Path) -> ExploreOptions {
    waymark_sandbox::use_placeholder_aws_credentials();
    ExploreOptions::new(seed, dir.to_owned())
}

fn print_progress(e: &waymark_sim::Execution) {
    static DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let done = DONE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if done.is_multiple_of(50) {
        eprintln!(
            "{done} executions; last: {} ended {}",
            e.schedule,
            e.end.name()
        );
    }
    if !e.violations.is_empty() {
        eprintln!(
            "schedule {} ended {}: {}",
            e.schedule,
            e.end.name(),
            e.violations.join("; ")
        );
    }
}

#[test]
fn every_crash_point_of_a_full_run_keeps_every_invariant() {
    let dir = temp_dir();
    let mut o = options(1, dir.path());
    o.crashes = Crashes::All;
    o.faults = Faults::None;
    o.estate = false;
    let report = explore(&YbMaintenance, &o, &mut print_progress).unwrap();
    println!("{}", report.render());
    assert_eq!(report.plain_end, "completed", "{}", report.render());
    assert!(
        report.plain_simulated > Duration::from_secs(10 * 60),
        "a full run at real durations lasts tens of minutes of simulated time: {:?}",
        report.plain_simulated
    );
    assert!(report.plain_appends > 20, "{}", report.render());
    // Every append boundary, before and after its flush, and every effect of the run (restarts,
    // rollouts, scales, the register, the weights, the blacklist), plus the plain run.
    assert!(report.plain_effects > 20, "{}", report.render());
    let points = 2 * report.plain_appends as usize + report.plain_effects;
    assert_eq!(report.crash_schedules.get(&1).copied(), Some(points));
    assert_eq!(report.effect_crash_schedules, report.plain_effects);
    assert_eq!(report.explored, 1 + points);
    assert_eq!(report.violations(), 0, "{}", report.render());
    assert!(report.render().ends_with(&format!(
        "explored {} schedules, 0 violations\n",
        report.explored
    )));
}

/// How many schedules stacking a fault and a crash the suite explores (every k-th of all of
/// them, in their order); `WAYMARK_SIM_COMBINED=all` explores them all.
const COMBINED_SAMPLE: usize = 150;

#[test]
fn every_fault_kind_at_every_step_touching_its_system_keeps_every_invariant() {
    let dir = temp_dir();
    let mut o = options(2, dir.path());
    o.crashes = Crashes::None;
    o.faults = Faults::All;
    o.fault_steps = FaultSteps::Every;
    o.estate = false;
    o.combined = match std::env::var("WAYMARK_SIM_COMBINED").as_deref() {
        Ok("all") => Combined::All,
        _ => Combined::Sample(COMBINED_SAMPLE),
    };
    let report = explore(&YbMaintenance, &o, &mut print_progress).unwrap();
    println!("{}", report.render());
    assert_eq!(report.violations(), 0, "{}", report.render());
    // Every step touching a system x every kind of it x {transient, persistent}.
    let kinds = |system: &str| {
        waymark_sandbox::faults::catalogue()
            .iter()
            .filter(|(s, _)| s == system)
            .count()
    };
    let mut singles = 0;
    for system in waymark_sandbox::faults::SYSTEMS {
        let steps = report.fault_steps.get(system).copied().unwrap_or(0);
        assert!(steps > 0, "no step touches {system}: {}", report.render());
        let tried: usize = report
            .faults
            .iter()
            .filter(|(k, _)| k.split('.').next() == Some(system))
            .map(|(_, c)| c.schedules)
            .sum();
        assert_eq!(
            tried,
            steps * kinds(system) * 2,
            "{system}: {}",
            report.render()
        );
        singles += steps * kinds(system) * 2;
    }
    assert!(singles > 1000, "{singles}");
    // The fault + crash schedules: both families enumerated, the sample explored.
    let c = report.combined;
    assert!(
        c.enumerated_retry > 0 && c.enumerated_compensation > 0,
        "{c:?}"
    );
    assert!(c.planned >= COMBINED_SAMPLE.min(c.enumerated) / 2, "{c:?}");
    assert_eq!(c.explored, c.planned, "{c:?}");
    assert_eq!(
        report.explored,
        1 + singles + c.explored,
        "{}",
        report.render()
    );
    // Every kind of every system's catalogue was tried and fired somewhere.
    for (system, kind) in waymark_sandbox::faults::catalogue() {
        let key = format!("{system}.{}", kind.name());
        let c = report.faults.get(&key).copied().unwrap_or_default();
        assert!(
            c.schedules > 0 && c.fired > 0,
            "{key}: {c:?}\n{}",
            report.render()
        );
    }
}

#[test]
fn every_estate_scenario_ends_as_the_runbook_says() {
    let dir = temp_dir();
    let mut o = options(4, dir.path());
    o.crashes = Crashes::None;
    o.faults = Faults::None;
    o.estate = true;
    let report = explore(&YbMaintenance, &o, &mut print_progress).unwrap();
    let text = report.render();
    println!("{text}");
    assert_eq!(report.violations(), 0, "{text}");
    // Zone B unhealthy before the run: refused, nothing changed (the monitor's count of the
    // scenario's own unhealthy forward is not the run's).
    assert_eq!(report.estate["zone-b-unhealthy"], ["refused"], "{text}");
    // A tserver 5x slow to bootstrap: its readiness wait runs out, the run compensates.
    assert_eq!(report.estate["slow-bootstrap"], ["compensated"], "{text}");
    // Weights changed by hand at three points: each run ends, all checks green.
    assert_eq!(report.estate["weights-by-hand"].len(), 3, "{text}");
    assert_eq!(report.explored, 6, "{text}");
}

/// A known-bad variant: restarts one yb-tserver with a bare `ssh.run` (no check of the unit's
/// `InvocationID` first), so a crash between the restart and its journaled result restarts it
/// again when the run resumes.
struct BlindRestart;

const BLIND_NODE: &str = "yb-a-2";

impl Workflow for BlindRestart {
    const NAME: &'static str = "sim-mutant-blind-restart";
    const VERSION: u32 = 1;
    type Input = Inventory;
    type Output = String;

    async fn run(&self, ctx: WorkflowContext, inv: Inventory) -> Result<String, workflow::Error> {
        let node = inv
            .yugabyte
            .nodes
            .iter()
            .find(|n| n.name == BLIND_NODE)
            .ok_or_else(|| workflow::Error::Engine(format!("no node {BLIND_NODE}")))?;
        let out = ctx
            .activity::<RunCommand>(&RunInput {
                target: inv.ssh_target(node),
                command: "sudo systemctl restart yb-tserver".into(),
                retry_on_failure: false,
            })
            .await?;
        ctx.sleep(Duration::from_secs(60)).await?;
        Ok(format!("{out:?}"))
    }
}

struct Mutant;

impl Subject for Mutant {
    fn workflow(&self) -> &'static str {
        BlindRestart::NAME
    }

    fn register(&self, builder: EngineBuilder) -> EngineBuilder {
        waymark_workflows::register(builder).workflow(BlindRestart)
    }

    fn input(&self, world: &World<'_>) -> Result<Payload, String> {
        Payload::encode(&sandbox_inventory(world)?).map_err(|e| e.to_string())
    }

    fn check_end(
        &self,
        _world: &World<'_>,
        _end: &End,
        _before: &serde_json::Value,
    ) -> Vec<String> {
        Vec::new()
    }
}

#[test]
fn the_explorer_finds_a_restart_that_does_not_check_first_and_shrinks_it_to_one_crash() {
    let dir = temp_dir();
    let mut o = options(3, dir.path());
    o.crashes = Crashes::Stacked(2);
    o.faults = Faults::None;
    o.estate = false;
    let report = explore(&Mutant, &o, &mut |_| {}).unwrap();
    let text = report.render();
    println!("{text}");
    assert_eq!(report.plain_end, "completed", "{text}");
    assert!(
        report.violations() > 0,
        "the explorer found nothing:\n{text}"
    );
    assert!(
        text.ends_with(&format!(
            "explored {} schedules, {} violations\n",
            report.explored,
            report.violations()
        )),
        "{text}"
    );
    let finding = report.findings.first().expect("a shrunk finding");
    assert!(
        finding
            .shrunk_violations
            .iter()
            .any(|v| v.contains(&format!("{BLIND_NODE}/yb-tserver")) && v.contains("2 times")),
        "{finding:?}"
    );
    // Shrunk to the one crash that matters: after the restart, before its result is durable.
    assert_eq!(finding.shrunk.schedule.crashes.len(), 1, "{finding:?}");
    assert!(
        matches!(
            finding.shrunk.schedule.crashes[0],
            Crash::Append { durable: false, .. } | Crash::Effect { .. }
        ),
        "{finding:?}"
    );
    // The crash points inside activities: each effect of the run is one, and the one right
    // after the restart lands (effect 0, before its result is journaled) restarts it twice.
    assert!(report.effect_crash_schedules >= 1, "{text}");
    assert!(
        report
            .violating
            .iter()
            .any(|(r, _)| r.schedule.to_string() == "e0"),
        "{text}"
    );
    // Stacked crashes extend inside activities too: after a crash once `RunStarted` is durable,
    // the next incarnation's restart (its effect 0) is a crash point of the second depth.
    assert!(
        report
            .violating
            .iter()
            .any(|(r, _)| r.schedule.to_string() == "c0d,e0"),
        "{text}"
    );
    let at_effect = replay(&Mutant, &Reproduction::parse("3/e0").unwrap(), &o).unwrap();
    assert_eq!(
        at_effect.appends.len(),
        2,
        "one crash: {:?}",
        at_effect.appends
    );
    assert!(
        at_effect.violations.iter().any(|v| v.contains("2 times")),
        "{:?}",
        at_effect.violations
    );
    assert!(finding.shrunk.schedule.faults.is_empty(), "{finding:?}");
    assert!(
        text.contains(&format!(
            "reproduce: waymark simulate {} --seed {} --replay",
            BlindRestart::NAME,
            finding.shrunk
        )),
        "{text}"
    );
    // The reproduction reproduces.
    let again = replay(
        &Mutant,
        &Reproduction::parse(&finding.shrunk.to_string()).unwrap(),
        &o,
    )
    .unwrap();
    assert_eq!(again.violations, finding.shrunk_violations);
    // A stacked schedule (a crash before the restart, then one that loses its result, and a
    // fault that changes nothing) shrinks to the one crash that matters.
    let stacked = Reproduction::parse("3/c0d,c1,ssh.slow@w0x1").unwrap();
    let found = shrink(&Mutant, &stacked, &o).unwrap().expect("it violates");
    assert_eq!(found.shrunk.schedule.size(), 1, "{found:?}");
    assert_eq!(found.shrunk.schedule.crashes.len(), 1, "{found:?}");
    assert!(
        found
            .shrunk_violations
            .iter()
            .any(|v| v.contains("2 times")),
        "{found:?}"
    );
}

#[test]
fn the_same_seed_gives_the_same_history_byte_for_byte() {
    waymark_sandbox::use_placeholder_aws_credentials();
    let dir = temp_dir();
    let exec = ExecutionOptions {
        dir: dir.path().join("estate"),
        run_limit: Duration::from_secs(6 * 3600),
    };
    // A crash after a durable append and a transient fault: restarts and retries included.
    let schedule = Schedule::parse("c9d,elb.5xx@w3x1").unwrap();
    let first = execute(&YbMaintenance, 11, &schedule, &exec).unwrap();
    let second = execute(&YbMaintenance, 11, &schedule, &exec).unwrap();
    assert!(first.violations.is_empty(), "{:?}", first.violations);
    assert!(first.encoded.len() > 20, "{} records", first.encoded.len());
    assert_eq!(
        first.appends.len(),
        2,
        "one crash, one restart: {:?}",
        first.appends
    );
    assert_eq!(first.end, second.end);
    assert_eq!(first.simulated, second.simulated);
    for (i, (a, b)) in first.encoded.iter().zip(&second.encoded).enumerate() {
        assert!(
            a == b,
            "record #{i} differs: {:?}\nvs {:?}",
            first.records[i].event,
            second.records[i].event
        );
    }
    assert_eq!(first.encoded.len(), second.encoded.len());
    // Another seed: another run id, another history.
    let other = execute(&YbMaintenance, 12, &schedule, &exec).unwrap();
    assert_ne!(other.run, first.run);
    println!(
        "same seed, same {} records ({} bytes); simulated {:?}",
        first.encoded.len(),
        first.encoded.iter().map(Vec::len).sum::<usize>(),
        first.simulated
    );
}

/// An execution binds its folder's ports again (the same inventory, the same history); when
/// another process took one of them since the last execution (in CI, any test's bind to port 0
/// may get a port freed between two executions), the estate moves to new ports instead of
/// failing the exploration with "Address already in use".
#[test]
fn a_port_taken_between_two_executions_moves_the_estate_instead_of_failing() {
    waymark_sandbox::use_placeholder_aws_credentials();
    let dir = temp_dir();
    let exec = ExecutionOptions {
        dir: dir.path().join("estate"),
        run_limit: Duration::from_secs(6 * 3600),
    };
    let first = execute(&YbMaintenance, 5, &Schedule::plain(), &exec).unwrap();
    assert_eq!(first.end, End::Completed, "{:?}", first.violations);
    let endpoints: waymark_sandbox::Endpoints =
        serde_json::from_slice(&std::fs::read(exec.dir.join("endpoints.json")).unwrap()).unwrap();
    // Another process now holds the Kubernetes API's port.
    let squatter = std::net::TcpListener::bind(endpoints.k8s).unwrap();
    let second = execute(&YbMaintenance, 5, &Schedule::plain(), &exec).unwrap();
    assert_eq!(second.end, End::Completed, "{:?}", second.violations);
    assert!(second.violations.is_empty(), "{:?}", second.violations);
    let moved: waymark_sandbox::Endpoints =
        serde_json::from_slice(&std::fs::read(exec.dir.join("endpoints.json")).unwrap()).unwrap();
    assert_ne!(
        moved.k8s, endpoints.k8s,
        "the estate moved off the taken port"
    );
    drop(squatter);
}

/// The command: the report's last line and exit status, a reproduction replayed with its full
/// history, a usage error for a fault the catalogue lacks.
#[test]
fn the_command_reports_its_count_and_replays_a_reproduction_with_its_history() {
    let dir = temp_dir();
    let work = dir.path().join("work");
    let out = waymark(&dir.path().join("data"))
        .args([
            "simulate",
            "yb-maintenance",
            "--crashes",
            "0",
            "--faults",
            "none",
        ])
        .arg("--work-dir")
        .arg(&work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().last(),
        Some("explored 1 schedules, 0 violations"),
        "{stdout}"
    );
    let replay = waymark(&dir.path().join("data"))
        .args(["simulate", "yb-maintenance", "--seed", "0/c5d", "--replay"])
        .arg("--work-dir")
        .arg(&work)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(text.contains("#0    run started: yb-maintenance"), "{text}");
    assert!(text.contains("run completed"), "{text}");
    assert!(
        text.contains("schedule c5d (seed 0): the run ended completed"),
        "{text}"
    );
    assert_eq!(
        text.lines().last(),
        Some("explored 1 schedules, 0 violations")
    );
    let bad = waymark(&dir.path().join("data"))
        .args(["simulate", "yb-maintenance", "--faults", "ssh.bogus"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ssh.timeout"));
}
