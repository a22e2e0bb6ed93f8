//! `waymark simulate WORKFLOW`: the deterministic simulation explorer (`waymark-sim`) on the
//! sandbox estate, in this process, on simulated time. Progress goes to stderr, the report to
//! stdout; its last line reads `explored N schedules, V violations` and the exit status is 0
//! only when V is 0. `--seed SEED/SCHEDULE --replay` re-runs one schedule and prints its full
//! history.

use std::path::PathBuf;
use std::time::Duration;

use waymark_cli::exit::{usage, ExitStatus};
use waymark_cli::view::{line, Labels};
use waymark_sim::{
    Combined, Crashes, Execution, ExploreOptions, Faults, Reproduction, YbMaintenance,
};

/// What `waymark simulate` was asked.
pub struct Request {
    /// Workflow name.
    pub workflow: String,
    /// `all` or a number of crashes.
    pub crashes: String,
    /// Fault + crash schedules: `none`, `all` or about N of them.
    pub combined: String,
    /// `all`, `none` or a list.
    pub faults: String,
    /// `SEED` or `SEED/SCHEDULE`.
    pub seed: String,
    /// Wall-clock budget (`90s`, `10m`, `1h`).
    pub budget: Option<String>,
    /// Re-run the seed's schedule and print its history.
    pub replay: bool,
    /// The estate's folder.
    pub work_dir: Option<PathBuf>,
}

/// `90s`, `10m`, `2h`, `1500ms` or plain seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| t.split_at(i));
    let n: u64 = number.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

fn parse_crashes(text: &str) -> Option<Crashes> {
    match text.trim() {
        "all" => Some(Crashes::All),
        "0" | "none" => Some(Crashes::None),
        n => n.parse().ok().map(Crashes::Stacked),
    }
}

fn parse_combined(text: &str) -> Option<Combined> {
    match text.trim() {
        "all" => Some(Combined::All),
        "none" | "0" => Some(Combined::None),
        n => n.parse().ok().map(Combined::Sample),
    }
}

fn print_history(e: &Execution) {
    let mut labels = Labels::default();
    for r in &e.records {
        println!("{}", line(r.seq, r.at, &r.event, &mut labels));
    }
}

/// `waymark simulate`.
pub async fn simulate(request: &Request) -> anyhow::Result<ExitStatus> {
    if request.workflow != "yb-maintenance" {
        return Err(usage(format!(
            "waymark simulate: no simulated estate for workflow {:?}; this binary simulates \
             yb-maintenance (other workflows: call waymark_sim::explore from their test suite \
             with their own Subject)",
            request.workflow
        )));
    }
    let crashes = parse_crashes(&request.crashes).ok_or_else(|| {
        usage(format!(
            "--crashes takes all, 0 or a number of stacked crashes, not {:?}",
            request.crashes
        ))
    })?;
    let combined = parse_combined(&request.combined).ok_or_else(|| {
        usage(format!(
            "--combined takes all, none or a number of schedules, not {:?}",
            request.combined
        ))
    })?;
    let faults = Faults::parse(&request.faults).map_err(usage)?;
    let repro = Reproduction::parse(&request.seed).map_err(|e| usage(format!("--seed: {e}")))?;
    if !request.replay && repro.schedule.size() > 0 {
        return Err(usage(format!(
            "--seed {}: a seed with a schedule is a reproduction; add --replay to run it",
            request.seed
        )));
    }
    let budget = match &request.budget {
        None => None,
        Some(b) => Some(parse_duration(b).ok_or_else(|| {
            usage(format!(
                "--budget takes a duration such as 90s, 10m or 1h, not {b:?}"
            ))
        })?),
    };
    let work_dir = request.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("waymark-simulate-{}", std::process::id()))
    });
    let mut options = ExploreOptions::new(repro.seed, work_dir.clone());
    options.crashes = crashes;
    options.combined = combined;
    // The estate's scenarios go with the faults (`--faults none`: crashes only).
    options.estate = faults != Faults::None;
    options.faults = faults;
    options.budget = budget;
    let replay = request.replay;
    let outcome = tokio::task::spawn_blocking(move || {
        let subject = YbMaintenance;
        if replay {
            waymark_sim::replay(&subject, &repro, &options).map(|e| (Some(e), None))
        } else {
            let mut n = 0usize;
            let mut progress = |e: &Execution| {
                n += 1;
                if n.is_multiple_of(25) || !e.violations.is_empty() {
                    eprintln!(
                        "simulate: {n} executions; schedule {} ended {}{}",
                        e.schedule,
                        e.end.name(),
                        if e.violations.is_empty() {
                            String::new()
                        } else {
                            format!(", VIOLATION: {}", e.violations.join("; "))
                        }
                    );
                }
            };
            waymark_sim::explore(&subject, &options, &mut progress).map(|r| (None, Some(r)))
        }
    })
    .await?;
    if request.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    match outcome? {
        (Some(e), _) => {
            print_history(&e);
            println!(
                "schedule {} (seed {}): the run ended {} after {} simulated",
                e.schedule,
                e.seed,
                e.end.name(),
                waymark_sim::explore::human(e.simulated)
            );
            for v in &e.violations {
                println!("VIOLATION: {v}");
            }
            println!(
                "explored 1 schedules, {} violations",
                usize::from(!e.violations.is_empty())
            );
            Ok(ExitStatus::success_if(e.violations.is_empty()))
        }
        (None, Some(report)) => {
            print!("{}", report.render());
            Ok(ExitStatus::success_if(report.violations() == 0))
        }
        (None, None) => unreachable!("one of the two is always set"),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_combined, parse_crashes, parse_duration};
    use std::time::Duration;

    #[test]
    fn budgets_and_crash_depths_parse() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_crashes("all"), Some(waymark_sim::Crashes::All));
        assert_eq!(parse_crashes("2"), Some(waymark_sim::Crashes::Stacked(2)));
        assert_eq!(parse_crashes("x"), None);
        assert_eq!(parse_combined("all"), Some(waymark_sim::Combined::All));
        assert_eq!(parse_combined("none"), Some(waymark_sim::Combined::None));
        assert_eq!(
            parse_combined("200"),
            Some(waymark_sim::Combined::Sample(200))
        );
        assert_eq!(parse_combined("some"), None);
    }
}
