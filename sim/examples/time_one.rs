//! Measures the explorer's cost per execution (BENCHMARKS.md, "Simulation"):
//!
//! - `cargo run -p waymark-sim --example time_one -- [N] [SCHEDULE]`: runs one schedule (default:
//!   the plain run) N times (default 5), one after the other on this thread, and prints each
//!   execution's wall time, simulated time, end and a fingerprint of its durable history.
//! - `... -- fingerprint DIR`: explores every crash point and every fault kind at the first step
//!   of each activity touching its system (seed 1, in `DIR`, which keeps its ports from one
//!   invocation to the next), on one thread, and prints a fingerprint per execution and one of every execution's schedule, end,
//!   violations and history bytes: two builds that print the same fingerprint explored the same
//!   histories with the same verdicts (how a speed-up is checked to change no behaviour).

use std::hash::{Hash, Hasher};
use std::time::Instant;

use waymark_sim::{
    execute, explore, Crashes, Execution, ExploreOptions, FaultSteps, Faults, Schedule,
    YbMaintenance,
};

fn fingerprint(e: &Execution, h: &mut impl Hasher) {
    e.schedule.to_string().hash(h);
    e.end.name().hash(h);
    e.violations.hash(h);
    e.encoded.hash(h);
    e.effects.hash(h);
    e.simulated.hash(h);
}

fn main() {
    waymark_sandbox::use_placeholder_aws_credentials();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("fingerprint") {
        let dir = std::path::PathBuf::from(args.get(1).expect("fingerprint DIR"));
        let mut o = ExploreOptions::new(1, dir);
        o.crashes = Crashes::All;
        o.faults = Faults::All;
        o.fault_steps = FaultSteps::FirstOfEachActivity;
        o.estate = true;
        // One worker: every execution in the same folder, so the same paths (and ports) in every
        // run's input, whichever build explores them.
        o.threads = 1;
        let mut per: Vec<u64> = Vec::new();
        let report = explore(&YbMaintenance, &o, &mut |e| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            fingerprint(e, &mut h);
            println!("{} {} {:016x}", e.schedule, e.end.name(), h.finish());
            per.push(h.finish());
        })
        .expect("exploration");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        per.hash(&mut h);
        print!("{}", report.render());
        println!(
            "fingerprint of {} executions: {:016x}",
            per.len(),
            h.finish()
        );
        return;
    }
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let schedule = match args.get(1) {
        Some(text) => Schedule::parse(text).expect("a schedule in its text form"),
        None => Schedule::plain(),
    };
    let dir = std::env::temp_dir().join("waymark-time-one");
    let options = ExploreOptions::new(1, dir.clone());
    let exec = waymark_sim::world::ExecutionOptions {
        dir: dir.join("seed-1"),
        run_limit: options.run_limit,
    };
    let mut total = 0.0;
    for i in 0..n {
        let t = Instant::now();
        let e = execute(&YbMaintenance, 1, &schedule, &exec).expect("execution");
        let wall = t.elapsed().as_secs_f64();
        total += wall;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        fingerprint(&e, &mut h);
        println!(
            "{i}: {wall:.3} s wall, {:.0} s simulated, ended {}, {} records, fingerprint {:016x}",
            e.simulated.as_secs_f64(),
            e.end.name(),
            e.records.len(),
            h.finish()
        );
    }
    println!("mean {:.3} s per execution", total / n as f64);
}
