//! Crash tests: a child process runs `crash-test` workflows on a sled log and is killed with
//! SIGKILL at every append boundary and at random instants; after each kill it is restarted, and
//! in the end every run has completed, every history verifies, and every effect happened once.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use waymark_engine::event::{Event, StepRef};
use waymark_engine::log::EventLog;
use waymark_tests::{crash_effects_per_run, CrashInput, EffectSink, SplitMix};

use crate::util::{crash_child, temp_dir};

const RUNS: usize = 2;
/// Six steps per run: since a step's result shares its append with the next step's start (one
/// flush per step), two steps made only 18 append boundaries and four 26; six make 30 and more.
const INPUT: CrashInput = CrashInput {
    steps: 6,
    work_ms: 3,
    sleep_ms: 20,
};

fn child(data: &Path, sink: &Path, input: &CrashInput, kill_after: Option<u64>) -> Command {
    let mut c = Command::new(crash_child());
    c.arg(data)
        .arg(sink)
        .arg(RUNS.to_string())
        .arg(input.steps.to_string())
        .arg(input.work_ms.to_string())
        .arg(input.sleep_ms.to_string());
    if let Some(n) = kill_after {
        c.arg(n.to_string());
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Runs the child to completion (no kill) and checks it said `done`.
fn run_to_completion(data: &Path, sink: &Path) {
    let out = child(data, sink, &INPUT, None)
        .output()
        .expect("spawn crash child");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("done"),
        "child did not finish: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything that must hold after recovery.
fn check_final_state(data: &Path, sink_dir: &Path) -> usize {
    let log = waymark_engine::open_log(data).expect("open log");
    let runs = log.runs().unwrap();
    assert_eq!(runs.len(), RUNS, "every run was started once");
    assert!(log.open_runs().unwrap().is_empty(), "no run left open");
    let sink = EffectSink::new(sink_dir).unwrap();
    let effects = sink.effect_counts();
    let mut calls: HashMap<String, Vec<u32>> = HashMap::new();
    for (k, a) in sink.calls() {
        calls.entry(k).or_default().push(a);
    }
    let mut events = 0;
    for run in runs {
        let history = log
            .read(run)
            .unwrap_or_else(|e| panic!("history of {run} does not verify: {e}"));
        events += history.len();
        assert!(
            matches!(
                history.last().map(|r| &r.event),
                Some(Event::RunCompleted { .. })
            ),
            "run {run} completed"
        );
        // For each step: the attempt that completed it, and every attempt started.
        let mut completing: BTreeMap<u32, u32> = BTreeMap::new();
        let mut started: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut last_attempt: BTreeMap<u32, u32> = BTreeMap::new();
        for r in &history {
            match &r.event {
                Event::AttemptStarted {
                    step: StepRef::Workflow(p),
                    attempt,
                } => {
                    started.entry(*p).or_default().push(*attempt);
                    last_attempt.insert(*p, *attempt);
                }
                Event::StepCompleted {
                    step: StepRef::Workflow(p),
                    ..
                } => {
                    let prev = completing.insert(*p, last_attempt[p]);
                    assert!(prev.is_none(), "run {run}: step {p} completed twice");
                }
                _ => {}
            }
        }
        let effect_steps: Vec<u32> = completing.keys().copied().filter(|p| *p >= 2).collect();
        assert_eq!(
            effect_steps.len() as u32,
            crash_effects_per_run(&INPUT),
            "run {run}: all steps completed"
        );
        for p in effect_steps {
            let key = format!("{run}/step-{p}");
            assert!(
                calls.contains_key(&key),
                "{key} completed without being called"
            );
            assert_eq!(
                effects.get(&key),
                Some(&1),
                "effect {key} applied exactly once"
            );
            for a in &calls[&key] {
                assert!(
                    started[&p].contains(a),
                    "{key}: attempt {a} called but never journaled"
                );
                assert!(
                    *a <= completing[&p],
                    "{key}: attempt {a} ran after attempt {} was journaled as complete",
                    completing[&p]
                );
            }
        }
    }
    assert_eq!(
        effects.len(),
        RUNS * crash_effects_per_run(&INPUT) as usize,
        "one effect per effect step of every run, none extra: {effects:?}"
    );
    events
}

#[test]
fn sigkill_at_every_append_boundary_then_resume() {
    // Learn how many appends a clean pass makes, then kill after each of them in turn.
    let probe = temp_dir();
    run_to_completion(&probe.path().join("data"), &probe.path().join("sink"));
    let events = check_final_state(&probe.path().join("data"), &probe.path().join("sink"));
    // Each append carries one to three events; the clean pass made at most `events` appends.
    let mut kills = 0;
    for boundary in 1..=events as u64 {
        let dir = temp_dir();
        let (data, sink) = (dir.path().join("data"), dir.path().join("sink"));
        let out = child(&data, &sink, &INPUT, Some(boundary))
            .output()
            .expect("spawn");
        if out.status.success() {
            // Fewer appends than `boundary` in this pass: the boundary lies past the end.
            check_final_state(&data, &sink);
            continue;
        }
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "child died of something else: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        kills += 1;
        run_to_completion(&data, &sink);
        check_final_state(&data, &sink);
    }
    assert!(kills >= 30, "only {kills} boundary kills happened");
    eprintln!("boundary kills: {kills}");
}

#[test]
fn sigkill_at_random_instants_then_resume() {
    let seed = std::env::var("WAYMARK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("random kill seed: {seed} (set WAYMARK_CRASH_SEED to replay)");
    let mut rng = SplitMix(seed);
    let budget = Duration::from_secs(120);
    let started = Instant::now();
    let mut kills = 0;
    let mut rounds = 0;
    // Rounds on fresh logs until enough kills have landed (bounded in time as a safety net).
    while kills < 200 && started.elapsed() < budget {
        rounds += 1;
        let dir = temp_dir();
        let (data, sink) = (dir.path().join("data"), dir.path().join("sink"));
        let mut finished = false;
        for _ in 0..30 {
            let mut c = child(&data, &sink, &INPUT, None).spawn().expect("spawn");
            std::thread::sleep(Duration::from_micros(rng.below(80_000)));
            if c.try_wait().unwrap().is_some() {
                let out = c.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                finished = true;
                break;
            }
            c.kill().expect("SIGKILL the child");
            c.wait().unwrap();
            kills += 1;
        }
        if !finished {
            run_to_completion(&data, &sink);
        }
        check_final_state(&data, &sink);
    }
    assert!(
        kills >= 200,
        "only {kills} random kills landed in {rounds} rounds (seed {seed})"
    );
    eprintln!("random kills: {kills} in {rounds} rounds");
}
