//! The segment store under damage (issue 9): a flipped byte anywhere costs at most the run whose
//! record it hit, that run is named with its position, the store always opens, and `salvage`
//! (`waymark recover`) brings back every intact run. Also the torn tail of a crash mid-write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use waymark_engine::event::{Event, Payload, StepRef};
use waymark_engine::log::segment::{format, Finding, SegmentBackend};
use waymark_engine::log::{EventLog, Log};
use waymark_engine::{Record, RunId};

use crate::util::temp_dir;

fn started() -> Event {
    started_by("test")
}

/// Runs with distinct first records (as real runs have: different inputs or start times); two
/// byte-identical histories cannot be told apart by the hash chain when a frame header is hit.
fn started_by(who: &str) -> Event {
    Event::RunStarted {
        workflow: "w".into(),
        version: 1,
        input: Payload::null(),
        started_by: who.into(),
    }
}

fn step(i: u32) -> Event {
    Event::StepCompleted {
        step: StepRef::Workflow(i),
        output: Payload(format!("{{\"n\":{i}}}")),
    }
}

fn segment_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wseg"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 1, "one segment expected: {files:?}");
    files.remove(0)
}

/// Four runs, appended concurrently so that batches mix runs; two completed, two open.
async fn store_with_runs(dir: &Path) -> BTreeMap<RunId, Vec<Record>> {
    let log = Arc::new(Log::new(SegmentBackend::open(dir).unwrap()));
    let runs: Vec<RunId> = (0..4).map(|_| RunId::new()).collect();
    let mut tasks = Vec::new();
    for (i, run) in runs.iter().copied().enumerate() {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(run, vec![started_by(&format!("operator-{i}"))])
                .await
                .unwrap();
            for s in 0..4 {
                log.append(run, vec![step(s)]).await.unwrap();
            }
            if i % 2 == 0 {
                log.append(
                    run,
                    vec![Event::RunCompleted {
                        output: Payload::null(),
                    }],
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let out = runs.iter().map(|r| (*r, log.read(*r).unwrap())).collect();
    drop(log);
    out
}

/// Byte ranges of each run's frames in the segment (frame header + record).
fn frame_owners(bytes: &[u8]) -> Vec<(usize, usize, RunId, u64)> {
    let mut out = Vec::new();
    let mut at = format::SEGMENT_HEADER_LEN;
    while let Some(b) = format::parse_batch(bytes, at) {
        let mut f_at = b.body_at;
        while f_at < b.end() {
            let format::FrameAt::Valid(f) = format::parse_frame(bytes, f_at, b.end()) else {
                panic!("the original store verifies");
            };
            out.push((f_at, f.end(), f.run, f.seq));
            f_at = f.end();
        }
        at = b.end();
    }
    out
}

fn named_in(findings: &[Finding], run: RunId) -> bool {
    findings.iter().any(|f| match f {
        Finding::Damaged {
            records,
            recognised,
            ..
        } => records.iter().chain(recognised).any(|(r, _)| *r == run),
        Finding::Tail { dropped, .. } => dropped.iter().any(|(r, _)| *r == run),
        _ => false,
    })
}

/// Issue 9, "a store that one bad record cannot erase": every byte of a store holding four runs
/// is flipped in turn (each in a fresh copy); the store opens every time, every run whose bytes
/// were not hit is listed and reads back identical, the hit run reads back identical, or is named
/// with its position (in the read error or in the recovery report), and salvage (checked on
/// every 8th flip) brings every run that verified back.
#[tokio::test]
async fn every_byte_flip_costs_at_most_the_run_it_hit() {
    let master = temp_dir();
    let original = store_with_runs(master.path()).await;
    let seg = segment_file(master.path());
    let full = std::fs::read(&seg).unwrap();
    let end = full.iter().rposition(|&b| b != 0).unwrap() + 1;
    let bytes = &full[..end];
    let owners = frame_owners(bytes);
    assert_eq!(owners.len(), 4 * 5 + 2, "every record framed");
    let (mut flips, mut hit_runs_named, mut hit_runs_intact, mut salvaged) = (0, 0, 0, 0);
    for offset in 0..bytes.len() {
        let work = temp_dir();
        std::fs::create_dir(work.path().join("log")).unwrap();
        let mut damaged = bytes.to_vec();
        damaged[offset] ^= 0x5A;
        std::fs::write(
            work.path().join("log").join(seg.file_name().unwrap()),
            &damaged,
        )
        .unwrap();
        flips += 1;
        let backend = SegmentBackend::open(work.path())
            .unwrap_or_else(|e| panic!("flip at {offset}: the store must open: {e}"));
        let findings = backend.report().findings.clone();
        let log = Log::new(backend.clone());
        let hit = owners
            .iter()
            .find(|(s, e, _, _)| (*s..*e).contains(&offset))
            .map(|o| o.2);
        let listed = log.runs().unwrap();
        for (run, records) in &original {
            let read = log.read(*run);
            if Some(*run) == hit {
                match read {
                    Ok(r) if r == *records => hit_runs_intact += 1,
                    Ok(r) => {
                        assert!(
                            named_in(&findings, *run),
                            "flip at {offset}: run {run} came back with {} of {} records and is not named: {findings:?}",
                            r.len(),
                            records.len()
                        );
                        hit_runs_named += 1;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        assert!(
                            msg.contains(&run.to_string()) && msg.contains('#'),
                            "flip at {offset}: the error must name the run and position: {msg}"
                        );
                        hit_runs_named += 1;
                    }
                }
            } else {
                assert!(
                    listed.contains(run),
                    "flip at {offset}: run {run} not listed"
                );
                let r = read.unwrap_or_else(|e| {
                    panic!("flip at {offset}: run {run} was not hit but does not read: {e}")
                });
                assert_eq!(&r, records, "flip at {offset}: run {run} changed");
            }
        }
        // Salvage (every 8th flip: it syncs a fresh store each time): every run that read back
        // intact still does in the fresh store.
        if offset % 8 != 0 {
            continue;
        }
        let intact: Vec<RunId> = original
            .keys()
            .copied()
            .filter(|r| log.read(*r).ok().as_ref() == original.get(r))
            .collect();
        drop(log);
        let summary = backend.salvage().expect("salvage");
        assert!(summary.moved_aside.exists(), "the damaged store is kept");
        let log = Log::new(SegmentBackend::open(work.path()).unwrap());
        for run in &intact {
            assert_eq!(log.read(*run).ok().as_ref(), original.get(run));
            salvaged += 1;
        }
        assert!(!log.backend().report().has_damage());
    }
    println!(
        "byte flips: {flips} offsets of a {}-byte store of 4 runs; hit run intact {hit_runs_intact}, hit run named {hit_runs_named}; {salvaged} intact runs salvaged",
        bytes.len()
    );
    assert!(hit_runs_named > 0 && hit_runs_intact > 0);
}

/// Issue 9: the unverified end of the log (a crash in the middle of a group commit) is set aside,
/// its verifying prefix kept, and appends go on after it with the chain intact.
#[tokio::test]
async fn a_torn_tail_is_set_aside_and_the_log_goes_on() {
    let dir = temp_dir();
    let run = RunId::new();
    {
        let log = Log::new(SegmentBackend::open(dir.path()).unwrap());
        log.append(run, vec![started(), step(0)]).await.unwrap();
        log.append(run, vec![step(1), step(2)]).await.unwrap();
    }
    let seg = segment_file(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let owners = frame_owners(&bytes);
    // Tear the last batch in the middle of its second frame, and leave garbage after it.
    let (second_start, _, _, seq) = owners[3];
    assert_eq!(seq, 3);
    for b in &mut bytes[second_start + 10..second_start + 60] {
        *b = 0xEE;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let backend = SegmentBackend::open(dir.path()).unwrap();
    let report = backend.report().clone();
    assert!(
        !report.has_damage(),
        "a torn tail is not damage: {report:?}"
    );
    let Some(Finding::Tail { kept, saved_to, .. }) = report.findings.first() else {
        panic!("a tail finding: {report:?}");
    };
    assert_eq!(*kept, 1, "step(1), event #2, verified and is kept");
    assert!(saved_to.exists());
    let log = Log::new(backend);
    assert_eq!(log.read(run).unwrap().len(), 3);
    let more = log.append(run, vec![step(3)]).await.unwrap();
    assert_eq!(more[0].seq, 3);
    drop(log);
    let log = Log::new(SegmentBackend::open(dir.path()).unwrap());
    assert!(
        log.backend().report().findings.is_empty(),
        "the tail was cleared"
    );
    let h = log.read(run).unwrap();
    assert_eq!(h.len(), 4);
    assert_eq!(h[3].prev_hash, h[2].hash);
}

/// Issue 9: a store written by the sled backend of earlier versions is imported on first open
/// (the sled directory is kept beside it).
#[tokio::test]
async fn an_older_sled_store_is_imported() {
    let dir = temp_dir();
    let run = RunId::new();
    let written = {
        let log = Log::new(waymark_engine::log::sled::SledBackend::open(dir.path()).unwrap());
        log.append(run, vec![started(), step(0)]).await.unwrap();
        log.read(run).unwrap()
    };
    let log = waymark_engine::open_log(dir.path()).unwrap();
    assert_eq!(log.read(run).unwrap(), written);
    assert_eq!(log.open_runs().unwrap(), vec![run]);
    assert!(dir.path().join("events.sled.imported").exists());
}

/// Issue 9, the operator's view: with one record damaged, `waymark ls` still lists every run and
/// marks the damaged one, `verify` names the run and the position and the command that salvages
/// the store (and exits 1), `recover` salvages the intact runs into a fresh store, quarantines the
/// damaged one with its last verified event, keeps the damaged store, and everything verifies
/// afterwards. No raw storage error reaches the operator alone.
#[tokio::test]
async fn ls_verify_and_recover_speak_to_the_operator() {
    let dir = temp_dir();
    let original = store_with_runs(dir.path()).await;
    let seg = segment_file(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let owners = frame_owners(&bytes);
    // Damage the payload of a record in the middle of the first run's history.
    let victim = *original.keys().next().unwrap();
    let (start, end, _, seq) = *owners
        .iter()
        .find(|o| o.2 == victim && o.3 == 2)
        .expect("the victim's third record");
    bytes[start.midpoint(end) + 10] ^= 0xFF;
    std::fs::write(&seg, &bytes).unwrap();
    let data = dir.path();

    let ls = crate::util::waymark(data).args(["ls"]).output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&ls.stdout),
        String::from_utf8_lossy(&ls.stderr),
    );
    for run in original.keys() {
        assert!(
            out.contains(&run.to_string()[..8]),
            "ls lists every run:\n{out}\n{err}"
        );
    }
    assert!(
        err.contains("waymark recover") && err.contains(&data.display().to_string()),
        "ls says where the damage is and what to do:\n{err}"
    );

    let verify = crate::util::waymark(data)
        .args(["verify"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(verify.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("run {victim}, event #{seq}")),
        "verify names the run and position:\n{text}"
    );
    assert!(!text.contains("\u{1b}["), "no escape codes:\n{text}");

    let recover = crate::util::waymark(data)
        .args(["recover"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&recover.stdout).to_string();
    assert_eq!(recover.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "QUARANTINED run {victim}: run {victim}, event #{seq}"
        )) && text.contains("last verified event: #1")
            && text.contains("old store is kept"),
        "recover says what was lost:\n{text}\n{}",
        String::from_utf8_lossy(&recover.stderr)
    );
    let aside: Vec<_> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("log.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged store is kept");

    let verify = crate::util::waymark(data)
        .args(["verify"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verify.stdout).to_string();
    assert_eq!(verify.status.code(), Some(0), "{text}");
    assert!(
        text.contains("3 runs") && text.contains("0 with faults"),
        "after recover, the three intact runs verify and the damaged one is quarantined:\n{text}"
    );
}

/// Issue 8, item 15, on the segment store: a crash that loses a run's first record but keeps a
/// later one of the same write (a torn group commit) must not leave a phantom run that `ls` and
/// `verify` report as damaged forever. The store has no separate run markers; a record that does
/// not continue its run is not kept from an unfinished write, so the run simply never started.
#[tokio::test]
async fn a_torn_write_never_leaves_a_run_without_its_first_record() {
    let dir = temp_dir();
    let (old, new) = (RunId::new(), RunId::new());
    {
        let log = Log::new(SegmentBackend::open(dir.path()).unwrap());
        log.append(old, vec![started()]).await.unwrap();
        // One group commit: the new run's first two records.
        log.append(new, vec![started_by("second"), step(0)])
            .await
            .unwrap();
    }
    let seg = segment_file(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let owners = frame_owners(&bytes);
    let (_, first_end, run, seq) = owners[1];
    assert_eq!((run, seq), (new, 0));
    // The write was torn: its first frame's record never fully landed, the second did.
    bytes[first_end - 3] ^= 0xFF;
    std::fs::write(&seg, &bytes).unwrap();
    let log = Log::new(SegmentBackend::open(dir.path()).unwrap());
    assert_eq!(log.runs().unwrap(), vec![old], "no phantom run");
    assert!(log.open_runs().unwrap() == vec![old]);
    assert!(log.read(old).is_ok());
    assert!(log.damage().is_empty(), "an unfinished write is not damage");
}
