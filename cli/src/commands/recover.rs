//! `waymark recover`: salvages every intact record of a damaged event log into a fresh store.

use std::path::Path;

use anyhow::Context as _;
use waymark_cli::exit::ExitStatus;
use waymark_engine::log::segment::SegmentBackend;

/// `waymark recover`: needs the data directory to itself (no daemon, no foreground run).
pub fn recover(data_dir: &Path) -> anyhow::Result<ExitStatus> {
    let backend = SegmentBackend::open(data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    let findings = backend.report().findings.clone();
    if findings.is_empty() {
        println!(
            "the event log in {} has no damage: nothing to recover",
            data_dir.display()
        );
        return Ok(ExitStatus::Success);
    }
    for f in &findings {
        eprintln!("found: {f}");
    }
    let summary = backend
        .salvage()
        .with_context(|| format!("recovering the event log in {}", data_dir.display()))?;
    for (run, why) in &summary.shortened_runs {
        println!("SHORTENED run {run}: {why}");
    }
    for (run, why) in &summary.quarantined_runs {
        println!("QUARANTINED run {run}: {why}");
    }
    println!(
        "recovered {} records of {} runs into a fresh store ({} shortened, {} quarantined); the old store is kept in {}",
        summary.records,
        summary.runs,
        summary.shortened_runs.len(),
        summary.quarantined_runs.len(),
        summary.moved_aside.display()
    );
    Ok(ExitStatus::success_if(
        summary.shortened_runs.is_empty() && summary.quarantined_runs.is_empty(),
    ))
}
