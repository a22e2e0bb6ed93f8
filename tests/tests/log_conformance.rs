//! One conformance suite for the event log, run against every backend (segment files, sled,
//! memory, and Postgres on a private server: `fixtures/postgres.rs`).

use std::sync::Arc;

use waymark_engine::event::{Event, Payload, StepRef};
use waymark_engine::log::memory::MemoryBackend;
use waymark_engine::log::segment::SegmentBackend;
use waymark_engine::log::sled::SledBackend;
use waymark_engine::log::{Backend, Error, EventLog, Log};
use waymark_engine::RunId;

use crate::fixtures::postgres::PgFixture;
use crate::util::temp_dir;

/// A backend under test, and how to reopen it (for sled: close the database and open it again).
trait Fixture {
    type B: Backend;
    fn log(&self) -> Arc<Log<Self::B>>;
    fn reopen(&mut self);
}

struct SledFixture {
    dir: tempfile::TempDir,
    log: Option<Arc<Log<SledBackend>>>,
}

impl SledFixture {
    fn new() -> Self {
        let dir = temp_dir();
        let log = Arc::new(Log::new(SledBackend::open(dir.path()).unwrap()));
        SledFixture {
            dir,
            log: Some(log),
        }
    }
}

impl Fixture for SledFixture {
    type B = SledBackend;
    fn log(&self) -> Arc<Log<SledBackend>> {
        self.log.clone().unwrap()
    }
    fn reopen(&mut self) {
        drop(self.log.take());
        self.log = Some(Arc::new(Log::new(
            SledBackend::open(self.dir.path()).unwrap(),
        )));
    }
}

struct SegmentFixture {
    dir: tempfile::TempDir,
    log: Option<Arc<Log<SegmentBackend>>>,
}

impl SegmentFixture {
    fn new() -> Self {
        let dir = temp_dir();
        let log = Arc::new(Log::new(SegmentBackend::open(dir.path()).unwrap()));
        SegmentFixture {
            dir,
            log: Some(log),
        }
    }
}

impl Fixture for SegmentFixture {
    type B = SegmentBackend;
    fn log(&self) -> Arc<Log<SegmentBackend>> {
        self.log.clone().unwrap()
    }
    fn reopen(&mut self) {
        drop(self.log.take());
        self.log = Some(Arc::new(Log::new(
            SegmentBackend::open(self.dir.path()).unwrap(),
        )));
    }
}

struct MemoryFixture {
    backend: MemoryBackend,
    log: Arc<Log<MemoryBackend>>,
}

impl MemoryFixture {
    fn new() -> Self {
        let backend = MemoryBackend::new();
        MemoryFixture {
            log: Arc::new(Log::new(backend.clone())),
            backend,
        }
    }
}

impl Fixture for MemoryFixture {
    type B = MemoryBackend;
    fn log(&self) -> Arc<Log<MemoryBackend>> {
        self.log.clone()
    }
    fn reopen(&mut self) {
        self.log = Arc::new(Log::new(self.backend.clone()));
    }
}

/// Postgres: a schema of its own on the binary's private server; reopening opens a new backend
/// under the same daemon name, which takes over its own runs with a new epoch (a restarted
/// daemon).
impl Fixture for PgFixture {
    type B = waymark_store_pg::PgBackend;
    fn log(&self) -> Arc<Log<waymark_store_pg::PgBackend>> {
        PgFixture::log(self)
    }
    fn reopen(&mut self) {
        PgFixture::reopen(self);
    }
}

fn started() -> Event {
    Event::RunStarted {
        workflow: "w".into(),
        version: 1,
        input: Payload::null(),
        started_by: "test".into(),
    }
}

fn step(i: u32) -> Event {
    Event::StepCompleted {
        step: StepRef::Workflow(i),
        output: Payload(format!("{i}")),
    }
}

async fn appends_are_numbered_in_order_and_read_back<F: Fixture>(f: F) {
    let log = f.log();
    let run = RunId::new();
    let a = log.append(run, vec![started(), step(0)]).await.unwrap();
    let b = log.append(run, vec![step(1)]).await.unwrap();
    assert_eq!(a.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(b[0].seq, 2);
    assert_eq!(
        b[0].prev_hash, a[1].hash,
        "each record links to the one before"
    );
    let read = log.read(run).unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(read[2].event, step(1));
    assert_eq!(read, [a, b].concat());
}

async fn history_survives_reopen_and_chain_continues<F: Fixture>(mut f: F) {
    let run = RunId::new();
    f.log().append(run, vec![started(), step(0)]).await.unwrap();
    f.reopen();
    let more = f.log().append(run, vec![step(1)]).await.unwrap();
    assert_eq!(more[0].seq, 2);
    let read = f.log().read(run).unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(read[2].prev_hash, read[1].hash);
}

async fn concurrent_runs_keep_their_own_order<F: Fixture>(f: F) {
    let log = f.log();
    let runs: Vec<RunId> = (0..50).map(|_| RunId::new()).collect();
    let mut tasks = Vec::new();
    for run in runs.clone() {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(run, vec![started()]).await.unwrap();
            for i in 0..20 {
                log.append(run, vec![step(i)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for run in runs {
        let h = log.read(run).unwrap();
        assert_eq!(h.len(), 21);
        for (i, r) in h.iter().enumerate().skip(1) {
            assert_eq!(r.event, step(i as u32 - 1));
        }
    }
}

async fn open_runs_track_terminal_events<F: Fixture>(f: F) {
    let log = f.log();
    let (a, b) = (RunId::new(), RunId::new());
    log.append(a, vec![started()]).await.unwrap();
    log.append(b, vec![started()]).await.unwrap();
    assert_eq!(log.open_runs().unwrap(), vec![a, b]);
    log.append(
        a,
        vec![Event::RunCompleted {
            output: Payload::null(),
        }],
    )
    .await
    .unwrap();
    assert_eq!(log.open_runs().unwrap(), vec![b]);
    assert_eq!(log.runs().unwrap(), vec![a, b]);
}

async fn open_runs_and_listing_survive_reopen<F: Fixture>(mut f: F) {
    let (a, b, c) = (RunId::new(), RunId::new(), RunId::new());
    for run in [a, b, c] {
        f.log().append(run, vec![started(), step(0)]).await.unwrap();
    }
    f.log()
        .append(
            b,
            vec![Event::RunCompleted {
                output: Payload::null(),
            }],
        )
        .await
        .unwrap();
    f.reopen();
    assert_eq!(f.log().open_runs().unwrap(), vec![a, c]);
    assert_eq!(f.log().runs().unwrap(), vec![a, b, c]);
    assert_eq!(f.log().read(b).unwrap().len(), 3);
}

async fn unknown_run_is_named<F: Fixture>(f: F) {
    let run = RunId::new();
    let err = f.log().read(run).unwrap_err();
    assert!(matches!(err, Error::UnknownRun(r) if r == run));
    assert!(err.to_string().contains(&run.to_string()));
}

async fn damaged_record_names_run_and_position_and_others_still_load<F: Fixture>(f: F) {
    let log = f.log();
    let (bad, good) = (RunId::new(), RunId::new());
    log.append(bad, vec![started(), step(0), step(1)])
        .await
        .unwrap();
    log.append(good, vec![started(), step(0)]).await.unwrap();
    let raw = log.backend().scan_run(bad).unwrap();
    let mut bytes = raw[1].1.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    log.backend().raw_put(bad, 1, Some(bytes)).unwrap();
    let err = log.read(bad).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Corrupt { seq: 1, .. }), "{msg}");
    assert!(
        msg.contains(&bad.to_string()) && msg.contains("#1") && msg.contains("checksum"),
        "{msg}"
    );
    assert_eq!(
        log.read(good).unwrap().len(),
        2,
        "the other run still loads"
    );
}

async fn truncated_record_is_reported<F: Fixture>(f: F) {
    let log = f.log();
    let run = RunId::new();
    log.append(run, vec![started(), step(0)]).await.unwrap();
    let raw = log.backend().scan_run(run).unwrap();
    let cut = raw[1].1[..raw[1].1.len() - 5].to_vec();
    log.backend().raw_put(run, 1, Some(cut)).unwrap();
    let msg = log.read(run).unwrap_err().to_string();
    assert!(msg.contains("#1") && msg.contains("truncated"), "{msg}");
}

async fn missing_record_breaks_the_chain<F: Fixture>(f: F) {
    let log = f.log();
    let run = RunId::new();
    log.append(run, vec![started(), step(0), step(1)])
        .await
        .unwrap();
    log.backend().raw_put(run, 1, None).unwrap();
    let err = log.read(run).unwrap_err();
    assert!(matches!(err, Error::Chain { seq: 1, .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

async fn edited_record_with_valid_checksum_breaks_the_chain<F: Fixture>(f: F) {
    let log = f.log();
    let run = RunId::new();
    let recs = log
        .append(run, vec![started(), step(0), step(1)])
        .await
        .unwrap();
    // Re-encode record 1 with another event: its own checksum is valid, but record 2 no longer
    // links to it.
    let (forged, _) =
        waymark_engine::codec::encode(1, recs[1].at, &recs[1].prev_hash, &step(99)).unwrap();
    log.backend().raw_put(run, 1, Some(forged)).unwrap();
    let err = log.read(run).unwrap_err();
    assert!(matches!(err, Error::Chain { seq: 2, .. }), "{err}");
}

async fn append_to_damaged_tail_is_refused<F: Fixture>(mut f: F) {
    let run = RunId::new();
    f.log().append(run, vec![started(), step(0)]).await.unwrap();
    f.log()
        .backend()
        .raw_put(run, 1, Some(vec![1, 2, 3]))
        .unwrap();
    f.reopen();
    let err = f.log().append(run, vec![step(1)]).await.unwrap_err();
    assert!(err.to_string().contains(&run.to_string()), "{err}");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sled_backend {
            $(#[tokio::test] async fn $name() { super::$name(super::SledFixture::new()).await; })*
        }
        mod segment_backend {
            $(#[tokio::test] async fn $name() { super::$name(super::SegmentFixture::new()).await; })*
        }
        mod memory_backend {
            $(#[tokio::test] async fn $name() { super::$name(super::MemoryFixture::new()).await; })*
        }
        mod postgres_backend {
            $(#[tokio::test] async fn $name() { super::$name(super::PgFixture::new()).await; })*
        }
    };
}

conformance!(
    appends_are_numbered_in_order_and_read_back,
    history_survives_reopen_and_chain_continues,
    concurrent_runs_keep_their_own_order,
    open_runs_track_terminal_events,
    open_runs_and_listing_survive_reopen,
    unknown_run_is_named,
    damaged_record_names_run_and_position_and_others_still_load,
    truncated_record_is_reported,
    missing_record_breaks_the_chain,
    edited_record_with_valid_checksum_breaks_the_chain,
    append_to_damaged_tail_is_refused,
);
