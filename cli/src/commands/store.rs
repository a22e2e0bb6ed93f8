//! `waymark store import|export`: histories moved between the data directory's own log and a
//! `PostgreSQL` store, byte for byte (the codec's frames: the hash chain moves with them), each
//! run verified before it is written and read back after.

use std::path::Path;

use waymark_cli::exit::{usage, ExitStatus};
use waymark_cli::store::{self, Opener, Store};
use waymark_engine::log::{decode_chain, Backend, WriteBatch};
use waymark_engine::RunId;
use waymark_store_pg::{Imported, PgBackend};

use crate::args::StoreCommand;

/// Runs `waymark store import|export`.
pub fn command(
    data_dir: &Path,
    store: &Store,
    command: &StoreCommand,
) -> anyhow::Result<ExitStatus> {
    if !store.is_shared() {
        return Err(usage(
            "waymark store import|export moves histories between the data directory and a \
             Postgres store: name it with --store postgres://... (or WAYMARK_STORE)",
        ));
    }
    let pg = store::open(data_dir, store, &Opener::Command)?
        .shared
        .expect("a shared store has its backend");
    let local = waymark_engine::open_log(data_dir)
        .map_err(|e| anyhow::anyhow!("data directory {}: {e}", data_dir.display()))?;
    let segment = local.backend();
    let report = match command {
        StoreCommand::Import => import(segment, &pg)?,
        StoreCommand::Export => export(&pg, segment)?,
    };
    let (from, to) = match command {
        StoreCommand::Import => (data_dir.display().to_string(), store.display()),
        StoreCommand::Export => (store.display(), data_dir.display().to_string()),
    };
    for (run, why) in &report.failed {
        eprintln!("waymark: run {run} not moved: {why}");
    }
    println!(
        "{} runs ({} events) copied from {from} to {to} and read back verified; {} already \
         there, left alone; {} not moved",
        report.copied,
        report.events,
        report.already,
        report.failed.len()
    );
    Ok(ExitStatus::success_if(report.failed.is_empty()))
}

#[derive(Default)]
struct Report {
    copied: usize,
    events: usize,
    already: usize,
    failed: Vec<(RunId, String)>,
}

/// A run's raw records, refused unless its whole history verifies (checksums, hash chain).
fn verified(from: &impl Backend, run: RunId) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let raw = from.scan_run(run).map_err(|e| e.to_string())?;
    decode_chain(run, &raw).map_err(|e| format!("{e}; repair it first (`waymark verify`)"))?;
    if raw.is_empty() {
        return Err("no records".into());
    }
    Ok(raw)
}

/// After a copy: the destination holds exactly the source's bytes and they verify.
fn read_back(to: &impl Backend, run: RunId, raw: &[(u64, Vec<u8>)]) -> Result<(), String> {
    let back = to.scan_run(run).map_err(|e| e.to_string())?;
    if back != raw {
        return Err(format!(
            "read back {} records differing from the {} written",
            back.len(),
            raw.len()
        ));
    }
    decode_chain(run, &back)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn import(from: &impl Backend, to: &PgBackend) -> anyhow::Result<Report> {
    let open: std::collections::BTreeSet<RunId> = from.open_runs()?.into_iter().collect();
    let mut report = Report::default();
    for run in from.all_runs()? {
        let raw = match verified(from, run) {
            Ok(raw) => raw,
            Err(why) => {
                report.failed.push((run, why));
                continue;
            }
        };
        match to.import_run(run, raw.clone(), open.contains(&run)) {
            Ok(Imported::AlreadyThere) => report.already += 1,
            Ok(Imported::Written) => match read_back(to, run, &raw) {
                Ok(()) => {
                    report.copied += 1;
                    report.events += raw.len();
                }
                Err(why) => report.failed.push((run, why)),
            },
            Err(e) => report.failed.push((run, e.to_string())),
        }
    }
    Ok(report)
}

fn export(from: &PgBackend, to: &impl Backend) -> anyhow::Result<Report> {
    let open: std::collections::BTreeSet<RunId> = from.open_runs()?.into_iter().collect();
    let there: std::collections::BTreeSet<RunId> = to.all_runs()?.into_iter().collect();
    let mut report = Report::default();
    for run in from.all_runs()? {
        if there.contains(&run) {
            report.already += 1;
            continue;
        }
        let raw = match verified(from, run) {
            Ok(raw) => raw,
            Err(why) => {
                report.failed.push((run, why));
                continue;
            }
        };
        let batch = WriteBatch {
            records: raw.iter().map(|(seq, b)| (run, *seq, b.clone())).collect(),
            opened: vec![run],
            closed: if open.contains(&run) {
                Vec::new()
            } else {
                vec![run]
            },
        };
        if let Err(e) = to.commit(batch) {
            report.failed.push((run, e.to_string()));
            continue;
        }
        match read_back(to, run, &raw) {
            Ok(()) => {
                report.copied += 1;
                report.events += raw.len();
            }
            Err(why) => report.failed.push((run, why)),
        }
    }
    Ok(report)
}
