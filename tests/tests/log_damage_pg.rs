//! The Postgres store under damage and contention (issue 15; design section 6): a flipped byte
//! in any stored record costs only its run, named with the position; a deleted row is found,
//! the last one too (by `waymark_runs.last_seq`, which the hash chain alone cannot do); a daemon
//! whose run was taken over cannot append to it (the fence), while its other runs go on; a run
//! whose cluster or fire time another run claimed is refused with its first record; and
//! concurrent runs share transactions (group commit).

use std::collections::BTreeMap;
use std::sync::Arc;

use waymark_engine::event::{Event, Payload, StepRef};
use waymark_engine::log::{Error, EventLog, Log};
use waymark_engine::{Record, RunId};
use waymark_store_pg::{Claims, ClaimsHook, PgBackend};

use crate::fixtures::postgres::PgFixture;

/// Runs with distinct first records, as real runs have.
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

fn completed() -> Event {
    Event::RunCompleted {
        output: Payload::null(),
    }
}

/// Four runs appended concurrently (so that groups mix runs); two completed, two open.
async fn store_with_runs(log: &Arc<Log<PgBackend>>) -> BTreeMap<RunId, Vec<Record>> {
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
                log.append(run, vec![completed()]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    runs.iter().map(|r| (*r, log.read(*r).unwrap())).collect()
}

/// (a) Every byte of every stored record of four runs, flipped in SQL one at a time: the run
/// hit fails to read, naming itself and the record's position; the three others read back
/// identical; the flip undone, the hit run reads back identical too.
#[tokio::test]
async fn every_byte_flip_in_a_stored_record_costs_only_its_run_and_is_named() {
    let f = PgFixture::new();
    let log = f.log();
    let original = store_with_runs(&log).await;
    let sql = f.client().await;
    let flip = sql
        .prepare(
            "UPDATE waymark_records SET bytes = set_byte(bytes, $3, get_byte(bytes, $3) # 90) \
             WHERE run = $1 AND seq = $2",
        )
        .await
        .unwrap();
    let (mut flips, mut records) = (0, 0);
    for (run, history) in &original {
        for record in history {
            let seq = i64::try_from(record.seq).unwrap();
            let len: i32 = sql
                .query_one(
                    "SELECT length(bytes) FROM waymark_records WHERE run = $1 AND seq = $2",
                    &[&run.0, &seq],
                )
                .await
                .unwrap()
                .get(0);
            records += 1;
            for offset in 0..len {
                assert_eq!(
                    sql.execute(&flip, &[&run.0, &seq, &offset]).await.unwrap(),
                    1
                );
                flips += 1;
                let msg = match log.read(*run) {
                    Ok(_) => {
                        panic!("flip of byte {offset} of run {run}, event #{seq}: it read back")
                    }
                    Err(e) => e.to_string(),
                };
                assert!(
                    msg.contains(&format!("run {run}, event #{seq}")),
                    "flip of byte {offset} of run {run}, event #{seq}: the error must name the run and position: {msg}"
                );
                for (other, other_history) in &original {
                    if other != run {
                        assert_eq!(
                            &log.read(*other).unwrap_or_else(|e| panic!(
                                "flip of byte {offset} of run {run}, event #{seq}: run {other} was not hit but does not read: {e}"
                            )),
                            other_history
                        );
                    }
                }
                sql.execute(&flip, &[&run.0, &seq, &offset]).await.unwrap();
            }
            assert_eq!(&log.read(*run).unwrap(), history, "every flip undone");
        }
    }
    println!("byte flips: {flips} bytes of {records} stored records of 4 runs, each named");
    assert_eq!(records, 4 * 5 + 2);
}

/// (b) A row deleted from the middle of a history breaks the chain at that position.
#[tokio::test]
async fn a_deleted_middle_row_is_named_as_missing() {
    let f = PgFixture::new();
    let log = f.log();
    let run = RunId::new();
    log.append(run, vec![started_by("t"), step(0), step(1)])
        .await
        .unwrap();
    let sql = f.client().await;
    sql.execute(
        "DELETE FROM waymark_records WHERE run = $1 AND seq = 1",
        &[&run.0],
    )
    .await
    .unwrap();
    let err = log.read(run).unwrap_err();
    assert!(matches!(err, Error::Chain { seq: 1, .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

/// (c) The last row deleted: the hash chain of what is left is intact, but `last_seq` says the
/// history went further: reading, the damage check and the next append (after a restart) all
/// name the run and the first lost position.
#[tokio::test]
async fn a_deleted_last_row_is_found_by_last_seq() {
    let mut f = PgFixture::new();
    let (run, intact) = (RunId::new(), RunId::new());
    f.log()
        .append(run, vec![started_by("t"), step(0), step(1)])
        .await
        .unwrap();
    f.log()
        .append(intact, vec![started_by("u"), step(0)])
        .await
        .unwrap();
    assert!(f.log().damage().is_empty(), "{:?}", f.log().damage());
    let sql = f.client().await;
    sql.execute(
        "DELETE FROM waymark_records WHERE run = $1 AND seq = 2",
        &[&run.0],
    )
    .await
    .unwrap();
    let err = f.log().read(run).unwrap_err();
    assert!(matches!(err, Error::Lost { seq: 2, .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("run {run}, event #2")) && msg.contains("missing"),
        "{msg}"
    );
    let damage = f.log().damage();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert!(
        damage[0].contains(&run.to_string()) && damage[0].contains("#2"),
        "{damage:?}"
    );
    f.reopen();
    let err = f.log().append(run, vec![step(2)]).await.unwrap_err();
    assert!(matches!(err, Error::Lost { seq: 2, .. }), "{err}");
    assert_eq!(
        f.log().read(intact).unwrap().len(),
        2,
        "the other run goes on"
    );
    f.log().append(intact, vec![step(1)]).await.unwrap();
}

/// (e) The fence: daemon `a` appends; `b` takes the run over (a new epoch); `a`'s next append to
/// it is refused, naming `b`, while `a`'s other run still commits; `b` continues the chain;
/// there is exactly one history.
#[tokio::test]
async fn a_daemon_whose_run_was_taken_over_cannot_append_to_it() {
    let f = PgFixture::new();
    let log_a = Log::new(f.backend("a"));
    let (run, other) = (RunId::new(), RunId::new());
    log_a
        .append(run, vec![started_by("t"), step(0)])
        .await
        .unwrap();
    log_a.append(other, vec![started_by("u")]).await.unwrap();
    assert_eq!(log_a.backend().epoch(run), Some(1));

    let b = f.backend("b");
    assert_eq!(b.take_over(run).unwrap(), 2);
    let log_b = Log::new(b);

    let (fenced, still) = futures::join!(
        log_a.append(run, vec![step(1)]),
        log_a.append(other, vec![step(0)])
    );
    let err = fenced.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Fenced { run: r, .. } if r == run),
        "{msg}"
    );
    assert!(
        msg.contains(&run.to_string())
            && msg.contains("fenced")
            && msg.contains("owned by daemon b since epoch 2")
            && msg.contains("held epoch 1"),
        "{msg}"
    );
    assert!(!err.is_retryable());
    assert_eq!(still.unwrap()[0].seq, 1, "a's other run commits");
    assert_eq!(log_a.backend().epoch(run), None, "a let go of the run");
    // Still refused later: a holds no epoch, and the run is not its own.
    let again = log_a.append(run, vec![step(1)]).await.unwrap_err();
    assert!(again.to_string().contains("owned by daemon b"), "{again}");

    let more = log_b.append(run, vec![step(1)]).await.unwrap();
    assert_eq!(more[0].seq, 2);
    let history = log_a.read(run).unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[2].prev_hash, history[1].hash);
    assert_eq!(history[2].event, step(1));
    let sql = f.client().await;
    let row = sql
        .query_one(
            "SELECT owner, epoch, last_seq, (SELECT count(*) FROM waymark_records w WHERE w.run = r.run) \
             FROM waymark_runs r WHERE run = $1",
            &[&run.0],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("b"));
    assert_eq!(row.get::<_, i64>(1), 2);
    assert_eq!(row.get::<_, i64>(2), 2);
    assert_eq!(row.get::<_, i64>(3), 3);
}

/// (f) Claims: two daemons start runs on one cluster: the first record of the second is refused
/// (`Claimed`, naming the run that holds the cluster) and the run does not exist; once the
/// cluster is let go, a scheduled run starts, and a second run for the same fire time is refused
/// naming the fire time and the run it started.
#[tokio::test]
async fn a_run_whose_cluster_or_fire_time_is_taken_is_refused_as_claimed() {
    let f = PgFixture::new();
    let hook = ClaimsHook(Arc::new(|event: &Event| match event {
        Event::RunStarted { started_by, .. } => Claims {
            cluster: Some("yb-east".into()),
            fire_key: started_by.strip_prefix("schedule ").map(str::to_owned),
        },
        _ => Claims::default(),
    }));
    let open = |daemon: &str| {
        let mut options = PgFixture::options(daemon);
        options.claims = Some(hook.clone());
        Log::new(PgBackend::open(&f.url, options).unwrap())
    };
    let (log_a, log_b) = (open("a"), open("b"));
    let (first, second) = (RunId::new(), RunId::new());
    let (a, b) = futures::join!(
        log_a.append(first, vec![started_by("operator")]),
        log_b.append(second, vec![started_by("operator")])
    );
    let (winner, loser, err) = match (a, b) {
        (Ok(_), Err(e)) => (first, second, e),
        (Err(e), Ok(_)) => (second, first, e),
        other => panic!("exactly one run may hold the cluster: {other:?}"),
    };
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Claimed { run, .. } if run == loser),
        "{msg}"
    );
    assert!(
        msg.contains(&loser.to_string())
            && msg.contains(&format!("cluster yb-east is held by run {winner}")),
        "{msg}"
    );
    assert!(matches!(log_b.read(loser), Err(Error::UnknownRun(_))));
    assert_eq!(log_a.runs().unwrap(), vec![winner]);

    let sql = f.client().await;
    sql.execute(
        "UPDATE waymark_runs SET holds_cluster = false WHERE run = $1",
        &[&winner.0],
    )
    .await
    .unwrap();
    let (third, fourth) = (RunId::new(), RunId::new());
    log_a
        .append(
            third,
            vec![started_by("schedule nightly@2026-12-01T02:00Z")],
        )
        .await
        .unwrap();
    sql.execute(
        "UPDATE waymark_runs SET holds_cluster = false WHERE run = $1",
        &[&third.0],
    )
    .await
    .unwrap();
    let err = log_b
        .append(
            fourth,
            vec![started_by("schedule nightly@2026-12-01T02:00Z")],
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "fire time nightly@2026-12-01T02:00Z already started run {third}"
        )),
        "{err}"
    );
}

/// (g) Group commit: 100 runs of 10 appends each at once share transactions: fewer commits than
/// appends (groups of more than one request), every history whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runs_share_transactions() {
    let f = PgFixture::new();
    let log = f.log();
    let runs: Vec<RunId> = (0..100).map(|_| RunId::new()).collect();
    let mut tasks = Vec::new();
    for (i, run) in runs.iter().copied().enumerate() {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(run, vec![started_by(&format!("r{i}"))])
                .await
                .unwrap();
            for s in 0..9 {
                log.append(run, vec![step(s)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = log.backend().stats();
    println!(
        "group commit: 1000 appends in {} transactions (mean group {:.1})",
        stats.commits,
        stats.records as f64 / stats.commits as f64
    );
    assert_eq!(stats.records, 1000, "{stats:?}");
    assert!(
        stats.commits < 1000,
        "no group held more than one request: {stats:?}"
    );
    assert_eq!(stats.refused_runs, 0, "{stats:?}");
    for run in runs {
        let h = log.read(run).unwrap();
        assert_eq!(h.len(), 10);
        for (i, r) in h.iter().enumerate().skip(1) {
            assert_eq!(r.event, step(i as u32 - 1));
        }
    }
}

/// A run read while another daemon appends to it: every read is whole, never "records missing"
/// (each read statement is its own snapshot; reading the records before `last_seq` let a commit
/// between the two look like deleted records, as a CI run of
/// `store_failover::a_paused_owner_is_fenced_when_it_wakes_and_the_run_finishes_once` showed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_read_while_another_daemon_appends_is_always_whole() {
    use waymark_engine::log::Backend as _;
    let f = PgFixture::new();
    let log = f.log();
    let run = RunId::new();
    log.append(run, vec![started_by("writer")]).await.unwrap();
    let reader = f.backend("reader");
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reads = std::thread::spawn({
        let writing = writing.clone();
        move || {
            let (mut reads, mut seen) = (0u32, 0usize);
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                let records = reader
                    .scan_run(run)
                    .unwrap_or_else(|e| panic!("read {reads} failed while the run grew: {e}"));
                assert!(records.len() >= seen, "a read went backwards");
                seen = records.len();
                reads += 1;
            }
            reads
        }
    });
    for s in 0..400 {
        log.append(run, vec![step(s)]).await.unwrap();
    }
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    let reads = reads.join().expect("every read whole");
    println!("{reads} whole reads while 400 appends were committed");
    assert!(reads > 10, "the reads overlapped the appends ({reads})");
}
