//! Power-loss tests on powerfs (the `waymark-powerfs` crate: a FUSE filesystem that keeps what
//! was not fsync'd in a volatile layer and drops it on a power cut, the `LazyFS` model).
//!
//! First the filesystem itself (what was synced survives a cut, what was not does not; directory
//! entries need their directory synced; tearing modes; `sync_file_range`, which sled's `flush()`
//! uses, is not durable). Then the engine with its data directory on powerfs, power cut at random
//! instants, and the full yb-maintenance runbook the same way. After every cut: the log opens,
//! every append acknowledged before the cut is there, the chains verify; in the end every run
//! completes with every effect exactly once.
//!
//! Budgets: `WAYMARK_POWER_CUTS` (engine suite, default 300) and `WAYMARK_POWER_RUNBOOK_CUTS`
//! (runbook suite, default 12); `WAYMARK_POWER_SEED` replays a seed.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use waymark_engine::event::{Event, StepRef};
use waymark_engine::log::EventLog;
use waymark_engine::RunId;
use waymark_powerfs::{CutMode, CutReport, Options, PowerFs};
use waymark_tests::{crash_effects_per_run, CrashInput, EffectSink, SplitMix};

use crate::util::{temp_dir, waymark, SandboxProcess};

/// A temp dir with `backing/` (the durable image) and `mnt/` (where powerfs is mounted).
struct Disk {
    dir: tempfile::TempDir,
}

impl Disk {
    fn new() -> Disk {
        let dir = temp_dir();
        std::fs::create_dir(dir.path().join("backing")).unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        Disk { dir }
    }
    fn backing(&self) -> PathBuf {
        self.dir.path().join("backing")
    }
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    /// Somewhere outside powerfs.
    fn outside(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Mounts powerfs; a machine without /dev/fuse or fusermount3 fails here, with the reason.
    fn mount(&self) -> PowerFs {
        PowerFs::mount(&self.backing(), &self.mnt(), &Options::default())
            .unwrap_or_else(|e| panic!("the power-loss tests need powerfs: {e}"))
    }
}

fn fsync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync of directory {}: {e}", dir.display()));
}

fn write_file(path: &Path, data: &[u8]) -> File {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    f.write_all(data).unwrap();
    f
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

fn budget_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_does_not() {
    let disk = Disk::new();
    let fs = disk.mount();
    let path = disk.mnt().join("data");
    let mut f = write_file(&path, b"durable ");
    f.sync_data().unwrap();
    fsync_dir(&disk.mnt());
    f.write_all(b"volatile").unwrap();
    assert_eq!(
        read(&path).unwrap(),
        b"durable volatile",
        "the live process sees its own writes"
    );
    drop(f);
    let report = fs.cut(CutMode::DropAll).unwrap();
    assert_eq!(report.pages_dropped, 1, "{report:?}");
    assert_eq!(
        read(&disk.backing().join("data")).unwrap(),
        b"durable ",
        "the backing directory holds only the synced bytes"
    );
    let _fs = disk.mount();
    assert_eq!(read(&path).unwrap(), b"durable ", "and so does a remount");
}

#[test]
fn fsync_makes_size_and_data_durable_for_pwrite_append_truncate_and_fallocate() {
    let disk = Disk::new();
    let fs = disk.mount();
    let path = disk.mnt().join("f");
    let f = write_file(&path, b"");
    fsync_dir(&disk.mnt());
    // pwrite past the end leaves a hole of zeroes.
    f.write_all_at(b"tail", 10_000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10_004);
    let mut buf = vec![1u8; 10];
    f.read_exact_at(&mut buf, 5_000).unwrap();
    assert_eq!(buf, vec![0u8; 10], "a hole reads as zeroes");
    // O_APPEND writes at the end whatever the offset.
    let mut app = OpenOptions::new().append(true).open(&path).unwrap();
    app.write_all(b"+app").unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10_008);
    f.sync_data().unwrap();
    // Shrink, then grow again: the old bytes must not come back.
    f.set_len(10_002).unwrap();
    f.set_len(10_008).unwrap();
    let mut tail = vec![0u8; 8];
    f.read_exact_at(&mut tail, 10_000).unwrap();
    assert_eq!(&tail, b"ta\0\0\0\0\0\0", "truncated bytes read as zeroes");
    // fallocate grows the file (mode 0).
    #[allow(unsafe_code)]
    // SAFETY: fallocate(2) on an open fd with valid arguments.
    let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, 3 * 4096 + 100) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 3 * 4096 + 100);
    drop(app);
    drop(f);
    // Not synced since the append: the durable file is the 10,008 bytes synced above.
    let _ = fs.cut(CutMode::DropAll).unwrap();
    let durable = read(&disk.backing().join("f")).unwrap();
    assert_eq!(durable.len(), 10_008);
    assert_eq!(&durable[10_000..], b"tail+app");
    // Now the same changes, synced.
    let fs = disk.mount();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.set_len(10_002).unwrap();
    f.set_len(20_000).unwrap();
    f.sync_data().unwrap();
    drop(f);
    let _ = fs.cut(CutMode::DropAll).unwrap();
    let durable = read(&disk.backing().join("f")).unwrap();
    assert_eq!(durable.len(), 20_000, "the synced size is durable");
    assert_eq!(
        &durable[10_000..10_004],
        b"ta\0\0",
        "and so is the truncation"
    );
}

#[test]
fn a_created_file_needs_its_directory_synced_and_a_new_directory_its_parent() {
    let disk = Disk::new();
    let fs = disk.mount();
    let mut f = write_file(&disk.mnt().join("new"), b"data");
    f.sync_all().unwrap();
    std::fs::create_dir(disk.mnt().join("sub")).unwrap();
    let g = write_file(&disk.mnt().join("sub/inner"), b"inner");
    g.sync_all().unwrap();
    fsync_dir(&disk.mnt().join("sub"));
    f.flush().unwrap();
    drop((f, g));
    let _ = fs.cut(CutMode::DropAll).unwrap();
    assert!(
        read(&disk.backing().join("new")).is_none(),
        "a file whose directory was never synced vanishes, even with its data synced"
    );
    assert!(
        !disk.backing().join("sub").exists(),
        "a directory whose parent was never synced vanishes"
    );
    assert!(
        !disk.backing().join(waymark_powerfs::LIMBO).exists(),
        "nothing else is left in the backing directory"
    );

    let fs = disk.mount();
    let f = write_file(&disk.mnt().join("new"), b"data");
    f.sync_all().unwrap();
    std::fs::create_dir(disk.mnt().join("sub")).unwrap();
    let g = write_file(&disk.mnt().join("sub/inner"), b"inner");
    g.sync_all().unwrap();
    // Child synced before its parent: both entries end up durable.
    fsync_dir(&disk.mnt().join("sub"));
    fsync_dir(&disk.mnt());
    drop((f, g));
    let _ = fs.cut(CutMode::DropAll).unwrap();
    assert_eq!(read(&disk.backing().join("new")).unwrap(), b"data");
    assert_eq!(read(&disk.backing().join("sub/inner")).unwrap(), b"inner");
}

#[test]
fn rename_and_unlink_are_durable_only_after_the_directory_is_synced() {
    let disk = Disk::new();
    std::fs::write(disk.backing().join("conf"), b"old").unwrap();
    std::fs::write(disk.backing().join("gone"), b"still here").unwrap();
    let fs = disk.mount();
    // The atomic-replace idiom without the directory sync.
    let tmp = disk.mnt().join("conf.tmp");
    write_file(&tmp, b"new").sync_all().unwrap();
    std::fs::rename(&tmp, disk.mnt().join("conf")).unwrap();
    std::fs::remove_file(disk.mnt().join("gone")).unwrap();
    assert_eq!(read(&disk.mnt().join("conf")).unwrap(), b"new");
    assert!(read(&disk.mnt().join("gone")).is_none());
    let _ = fs.cut(CutMode::DropAll).unwrap();
    assert_eq!(
        read(&disk.backing().join("conf")).unwrap(),
        b"old",
        "an unsynced rename over a file is lost"
    );
    assert!(read(&disk.backing().join("conf.tmp")).is_none());
    assert_eq!(
        read(&disk.backing().join("gone")).unwrap(),
        b"still here",
        "an unsynced unlink is lost"
    );
    // With the directory sync.
    let fs = disk.mount();
    write_file(&tmp, b"new").sync_all().unwrap();
    std::fs::rename(&tmp, disk.mnt().join("conf")).unwrap();
    std::fs::remove_file(disk.mnt().join("gone")).unwrap();
    fsync_dir(&disk.mnt());
    let _ = fs.cut(CutMode::DropAll).unwrap();
    assert_eq!(read(&disk.backing().join("conf")).unwrap(), b"new");
    assert!(read(&disk.backing().join("conf.tmp")).is_none());
    assert!(read(&disk.backing().join("gone")).is_none());
    // A rename across directories, synced on the target side only, moves the file durably.
    std::fs::create_dir(disk.backing().join("a")).unwrap();
    std::fs::create_dir(disk.backing().join("b")).unwrap();
    std::fs::write(disk.backing().join("a/x"), b"x").unwrap();
    let fs = disk.mount();
    std::fs::rename(disk.mnt().join("a/x"), disk.mnt().join("b/x")).unwrap();
    fsync_dir(&disk.mnt().join("b"));
    let _ = fs.cut(CutMode::DropAll).unwrap();
    assert_eq!(read(&disk.backing().join("b/x")).unwrap(), b"x");
    assert!(read(&disk.backing().join("a/x")).is_none());
}

#[test]
fn tearing_persists_a_prefix_of_the_last_write_and_random_pages_a_subset() {
    let pattern: Vec<u8> = (0..8 * 4096u32).map(|i| (i % 251 + 1) as u8).collect();
    let mut torn_lengths = std::collections::BTreeSet::new();
    for seed in 0..12 {
        let disk = Disk::new();
        std::fs::write(disk.backing().join("log"), b"").unwrap();
        let fs = disk.mount();
        let f = OpenOptions::new()
            .write(true)
            .open(disk.mnt().join("log"))
            .unwrap();
        f.write_all_at(&pattern[..100], 0).unwrap();
        f.write_all_at(&pattern[100..], 100).unwrap();
        drop(f);
        let report = fs.cut(CutMode::TearLastWrite { seed }).unwrap();
        let (kept, len) = report.torn.expect("a torn write");
        assert_eq!(len, pattern.len() as u64 - 100);
        let durable = read(&disk.backing().join("log")).unwrap();
        assert_eq!(durable.len() as u64, if kept == 0 { 0 } else { 100 + kept });
        if kept > 0 {
            // The first write was lost, the torn one kept up to its tear point.
            assert_eq!(&durable[..100], &[0u8; 100][..], "seed {seed}");
            assert_eq!(
                &durable[100..],
                &pattern[100..100 + kept as usize],
                "seed {seed}"
            );
        }
        torn_lengths.insert(kept);
    }
    assert!(
        torn_lengths.len() >= 3,
        "tear points vary with the seed: {torn_lengths:?}"
    );

    let run = |seed: u64| -> (CutReport, Vec<u8>) {
        let disk = Disk::new();
        std::fs::write(disk.backing().join("log"), b"").unwrap();
        let fs = disk.mount();
        let f = OpenOptions::new()
            .write(true)
            .open(disk.mnt().join("log"))
            .unwrap();
        for page in 0..8u64 {
            let s = (page * 4096) as usize;
            f.write_all_at(&pattern[s..s + 4096], page * 4096).unwrap();
        }
        drop(f);
        let report = fs
            .cut(CutMode::RandomPages {
                seed,
                per_mille: 500,
            })
            .unwrap();
        (report, read(&disk.backing().join("log")).unwrap())
    };
    let (report, durable) = run(7);
    assert_eq!(report.pages_persisted + report.pages_dropped, 8);
    assert!(
        report.pages_persisted > 0 && report.pages_dropped > 0,
        "seed 7 keeps some pages and drops others: {report:?}"
    );
    let mut kept = 0;
    for (i, page) in durable.chunks(4096).enumerate() {
        if page.iter().any(|b| *b != 0) {
            kept += 1;
            assert_eq!(page, &pattern[i * 4096..(i + 1) * 4096], "page {i} intact");
        }
    }
    assert_eq!(kept, report.pages_persisted);
    assert_eq!(run(7).1, durable, "the same seed cuts the same way");
}

/// sled 0.34's `flush()` ends in `sync_file_range`, which writes pages back without making them
/// durable: on powerfs, as after a real power cut, it does not survive, while `sync_data` does.
#[test]
fn sync_file_range_and_sled_flush_do_not_survive_a_cut_but_sync_data_does() {
    let disk = Disk::new();
    let fs = disk.mount();
    let f = write_file(&disk.mnt().join("srf"), b"");
    f.sync_all().unwrap();
    fsync_dir(&disk.mnt());
    f.write_all_at(b"written back, not durable", 0).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: sync_file_range(2) on an open fd with valid flags.
    let rc = unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    assert_eq!(
        rc,
        0,
        "sync_file_range: {}",
        std::io::Error::last_os_error()
    );
    drop(f);
    // sled in a directory that exists durably.
    std::fs::create_dir(disk.mnt().join("sled")).unwrap();
    fsync_dir(&disk.mnt());
    let db = sled::open(disk.mnt().join("sled")).expect("sled opens on powerfs");
    db.insert(b"key", b"value").unwrap();
    db.flush().unwrap();
    assert_eq!(db.get(b"key").unwrap().as_deref(), Some(&b"value"[..]));
    let mut g = write_file(&disk.mnt().join("synced"), b"");
    fsync_dir(&disk.mnt());
    g.write_all(b"durable").unwrap();
    g.sync_data().unwrap();
    let _ = fs.cut(CutMode::DropAll).unwrap();
    // Never closed: its closing flush would meet the dead filesystem (and sled panics on that).
    std::mem::forget(db);
    assert_eq!(
        read(&disk.backing().join("srf")).unwrap(),
        b"",
        "sync_file_range made nothing durable"
    );
    assert_eq!(read(&disk.backing().join("synced")).unwrap(), b"durable");
    let reopened = sled::open(disk.backing().join("sled"));
    let value = reopened
        .as_ref()
        .ok()
        .and_then(|db| db.get(b"key").ok().flatten());
    assert!(
        value.is_none(),
        "sled's flush() did not make the insert durable (sled reopened: {:?})",
        reopened.as_ref().map(|_| "ok")
    );
}

/// A write made with `RWF_DSYNC` (as with `O_DSYNC`) is durable when it returns: FUSE passes the
/// flag to powerfs as `O_DSYNC`, and powerfs syncs that write's pages, so it survives a cut while
/// a plain write beside it, even to the same file, does not.
#[test]
fn a_write_with_rwf_dsync_survives_a_cut_and_a_plain_write_does_not() {
    let disk = Disk::new();
    let fs = disk.mount();
    let plain = write_file(&disk.mnt().join("plain"), b"");
    let dsync = write_file(&disk.mnt().join("dsync"), &[0; 3 * 4096]);
    plain.sync_all().unwrap();
    dsync.sync_all().unwrap();
    fsync_dir(&disk.mnt());
    plain.write_all_at(b"written, not durable", 0).unwrap();
    // A page of the same file written without the flag stays volatile: the flag makes its own
    // write durable, not the file (as a range sync on a real disk).
    dsync.write_all_at(b"volatile too", 2 * 4096).unwrap();
    let bytes = b"written with RWF_DSYNC";
    let iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    #[allow(unsafe_code)]
    // SAFETY: pwritev2(2) on an open fd, with one iovec over a live buffer of its length.
    let written = unsafe {
        libc::pwritev2(
            std::os::fd::AsRawFd::as_raw_fd(&dsync),
            &raw const iov,
            1,
            0,
            libc::RWF_DSYNC,
        )
    };
    assert_eq!(
        written,
        bytes.len() as isize,
        "pwritev2: {}",
        std::io::Error::last_os_error()
    );
    drop((plain, dsync));
    let report = fs.cut(CutMode::DropAll).unwrap();
    assert_eq!(
        report.pages_dropped, 2,
        "the two pages written without the flag: {report:?}"
    );
    assert_eq!(read(&disk.backing().join("plain")).unwrap(), b"");
    let mut expected = vec![0; 3 * 4096];
    expected[..bytes.len()].copy_from_slice(bytes);
    assert!(
        read(&disk.backing().join("dsync")).unwrap() == expected,
        "the RWF_DSYNC write survived, the plain write to the same file did not"
    );
}

#[test]
fn after_a_cut_the_old_mount_answers_eio_so_nothing_later_becomes_durable() {
    let disk = Disk::new();
    std::fs::write(disk.backing().join("f"), b"").unwrap();
    let fs = disk.mount();
    let mut f = OpenOptions::new()
        .write(true)
        .open(disk.mnt().join("f"))
        .unwrap();
    f.write_all(b"before").unwrap();
    let _ = fs.cut(CutMode::DropAll).unwrap();
    let after = f.write_all(b"after").and_then(|()| f.sync_data());
    assert!(after.is_err(), "a write or fsync after the cut must fail");
    drop(f);
    assert_eq!(read(&disk.backing().join("f")).unwrap(), b"");
}

/// A cut with a file still open leaves no live connection behind: it is aborted, so no thread of
/// this process can stay blocked in a request that nobody serves (which made a test binary hang
/// at exit, its serving thread gone and the device kept open by the blocked thread).
#[test]
fn a_cut_with_a_file_still_open_aborts_the_connection() {
    let disk = Disk::new();
    std::fs::write(disk.backing().join("f"), b"").unwrap();
    let fs = disk.mount();
    assert!(fs.connection().is_some(), "the mount's connection number");
    let mut f = OpenOptions::new()
        .write(true)
        .open(disk.mnt().join("f"))
        .unwrap();
    f.write_all(b"before").unwrap();
    let _ = fs.cut(CutMode::DropAll).unwrap();
    // Served, a call would get EIO from the cut filesystem; aborted, the kernel answers
    // ENOTCONN itself without asking the serving thread.
    let err = f
        .write_all(b"after")
        .and_then(|()| f.sync_data())
        .expect_err("nothing succeeds after a cut");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTCONN),
        "the connection was aborted: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The engine on powerfs.

const RUNS: usize = 2;
const INPUT: CrashInput = CrashInput {
    steps: 2,
    work_ms: 3,
    sleep_ms: 20,
};

fn power_child(data: &Path, sink: &Path, acks: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_waymark-power-child"));
    c.arg(data)
        .arg(sink)
        .arg(acks)
        .arg(RUNS.to_string())
        .arg(INPUT.steps.to_string())
        .arg(INPUT.work_ms.to_string())
        .arg(INPUT.sleep_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Acknowledged records from the ack file: (run, seq) → hash (hex).
fn acked(acks: &Path) -> BTreeMap<(RunId, u64), String> {
    let text = std::fs::read_to_string(acks).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            let run: RunId = w.next()?.parse().ok()?;
            let seq = w.next()?.parse().ok()?;
            let hash = w.next()?.to_owned();
            (hash.len() == 64).then_some(((run, seq), hash))
        })
        .collect()
}

/// Every file under `dir` with its size, for a failure's message.
fn describe_files(dir: &Path) -> String {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            out.push(format!("{} (unreadable)", dir.display()));
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(&path, out),
                Ok(m) => out.push(format!("{} ({} bytes)", path.display(), m.len())),
                Err(err) => out.push(format!("{} ({err})", path.display())),
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn random_mode(rng: &mut SplitMix) -> CutMode {
    match rng.below(3) {
        0 => CutMode::DropAll,
        1 => CutMode::TearLastWrite {
            seed: rng.next_u64(),
        },
        _ => CutMode::RandomPages {
            seed: rng.next_u64(),
            per_mille: rng.below(1001) as u32,
        },
    }
}

/// After a cut and a remount: the log opens, every acknowledged record is there with the same
/// hash, every run's chain verifies. Returns how many records were checked.
fn check_after_cut(data: &Path, acks: &Path, what: &str) -> usize {
    let log = waymark_engine::open_log(data)
        .unwrap_or_else(|e| panic!("{what}: the log does not open after the cut: {e}"));
    let acked = acked(acks);
    let runs = log
        .runs()
        .unwrap_or_else(|e| panic!("{what}: listing runs: {e}"));
    let mut histories = HashMap::new();
    for run in &runs {
        let h = log
            .read(*run)
            .unwrap_or_else(|e| panic!("{what}: run {run} does not verify after the cut: {e}"));
        histories.insert(*run, h);
    }
    for ((run, seq), hash) in &acked {
        let history = histories.get(run).unwrap_or_else(|| {
            let acked_runs: std::collections::HashSet<_> = acked.keys().map(|(r, _)| *r).collect();
            let missing = acked_runs.iter().filter(|r| !histories.contains_key(r)).count();
            panic!(
                "{what}: run {run} had acknowledged records (#{seq} among them) and is gone from the log; \
                 {missing} of {} acknowledged runs are gone, the log lists {} runs; files: {}",
                acked_runs.len(),
                runs.len(),
                describe_files(data)
            )
        });
        let record = history.get(*seq as usize).unwrap_or_else(|| {
            panic!(
                "{what}: run {run}: acknowledged record #{seq} is missing (the log has {} records)",
                history.len()
            )
        });
        assert_eq!(
            &hex(&record.hash),
            hash,
            "{what}: run {run}: record #{seq} differs from the one acknowledged"
        );
    }
    let open = log.open_runs().unwrap();
    for run in &open {
        assert!(runs.contains(run), "{what}: open run {run} not listed");
    }
    acked.len()
}

/// Every run completed once, every history verifies, every effect step's effect applied once.
fn check_engine_final_state(data: &Path, sink_dir: &Path) {
    let log = waymark_engine::open_log(data).expect("open log");
    let runs = log.runs().unwrap();
    assert_eq!(runs.len(), RUNS, "every run was started once");
    assert!(log.open_runs().unwrap().is_empty(), "no run left open");
    let sink = EffectSink::new(sink_dir).unwrap();
    let effects = sink.effect_counts();
    for run in runs {
        let history = log
            .read(run)
            .unwrap_or_else(|e| panic!("history of {run} does not verify: {e}"));
        assert!(
            matches!(
                history.last().map(|r| &r.event),
                Some(Event::RunCompleted { .. })
            ),
            "run {run} completed"
        );
        let mut completed = std::collections::BTreeSet::new();
        for r in &history {
            if let Event::StepCompleted {
                step: StepRef::Workflow(p),
                ..
            } = &r.event
            {
                assert!(completed.insert(*p), "run {run}: step {p} completed twice");
            }
        }
        for p in completed.iter().filter(|p| **p >= 2) {
            let key = format!("{run}/step-{p}");
            assert_eq!(
                effects.get(&key),
                Some(&1),
                "effect {key} applied exactly once"
            );
        }
    }
    assert_eq!(
        effects.len(),
        RUNS * crash_effects_per_run(&INPUT) as usize,
        "one effect per effect step of every run, none extra: {effects:?}"
    );
    assert!(
        effects.values().all(|n| *n == 1),
        "no effect twice: {effects:?}"
    );
}

/// Runs the child on the mount until it says `done`.
fn engine_to_completion(data: &Path, sink: &Path, acks: &Path) {
    let out = power_child(data, sink, acks).output().expect("spawn");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("done"),
        "child did not finish: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn engine_power_cut_at_random_instants_loses_no_acknowledged_append() {
    let target = budget_from_env("WAYMARK_POWER_CUTS", 300);
    let seed = seed_from_env("WAYMARK_POWER_SEED");
    eprintln!(
        "engine power cuts: seed {seed} (WAYMARK_POWER_SEED replays), target {target} cuts (WAYMARK_POWER_CUTS)"
    );
    let mut rng = SplitMix(seed);
    let started = Instant::now();
    let (mut cuts, mut checks, mut rounds, mut torn) = (0u64, 0usize, 0u64, 0u64);
    while cuts < target {
        assert!(
            started.elapsed() < Duration::from_secs(60 + target * 3),
            "only {cuts} cuts in {:?} (seed {seed})",
            started.elapsed()
        );
        rounds += 1;
        let disk = Disk::new();
        let (sink, acks) = (disk.outside("sink"), disk.outside("acks"));
        let data = disk.mnt();
        let mut fs = disk.mount();
        for _ in 0..10 {
            let mut child = power_child(&data, &sink, &acks).spawn().expect("spawn");
            // A random instant: most cuts land while appends and effects are in flight.
            std::thread::sleep(Duration::from_micros(rng.below(120_000)));
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "child failed (seed {seed}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                break;
            }
            let mode = random_mode(&mut rng);
            let report = fs.cut(mode).expect("cut");
            child.kill().expect("SIGKILL the child");
            child.wait().unwrap();
            cuts += 1;
            torn += u64::from(report.torn.is_some());
            fs = disk.mount();
            let what = format!("seed {seed}, cut {cuts} ({mode:?}, {report:?})");
            checks += check_after_cut(&data, &acks, &what);
            if cuts >= target {
                break;
            }
        }
        engine_to_completion(&data, &sink, &acks);
        check_engine_final_state(&data, &sink);
        fs.unmount().expect("clean unmount");
    }
    eprintln!(
        "engine power cuts: {cuts} cuts in {rounds} rounds ({torn} tore an unsynced write), {checks} acknowledged records checked present after cuts (seed {seed})"
    );
}

// ---------------------------------------------------------------------------------------------
// The yb-maintenance runbook on powerfs.

/// `waymark run` (first) or `waymark resume` with `--data-dir` on powerfs; a thread records
/// the highest event number the CLI printed (it prints an event once it is durable).
fn runbook_process(
    data: &Path,
    inventory: &Path,
    first: bool,
    newest: &Arc<AtomicI64>,
) -> (Child, std::thread::JoinHandle<()>) {
    let mut c = waymark(data);
    if first {
        c.args(["run", "yb-maintenance", "--inventory"])
            .arg(inventory);
    } else {
        c.arg("resume");
    }
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let newest = newest.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(seq) = line
                .split_once(" #")
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<i64>().ok())
            {
                newest.fetch_max(seq, Ordering::SeqCst);
            }
        }
    });
    (child, reader)
}

#[test]
fn runbook_power_cut_at_random_instants_resumes_with_every_effect_once() {
    let target = budget_from_env("WAYMARK_POWER_RUNBOOK_CUTS", 12);
    let seed = seed_from_env("WAYMARK_POWER_SEED");
    eprintln!("runbook power cuts: seed {seed}, target {target} cuts (WAYMARK_POWER_RUNBOOK_CUTS)");
    let mut rng = SplitMix(seed);
    let disk = Disk::new();
    let sb = SandboxProcess::start(&disk.outside("estate"), 10);
    let inventory = sb.dir.join("inventory.toml");
    let data = disk.mnt();
    let newest = Arc::new(AtomicI64::new(-1));
    let mut fs = disk.mount();
    let (mut cuts, mut checks) = (0u64, 0u64);
    let started = Instant::now();
    while cuts < target {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {cuts} cuts (seed {seed})"
        );
        let first = waymark_engine::open_log(&data)
            .and_then(|l| l.runs())
            .map_or_else(
                |e| panic!("seed {seed}: the log does not open: {e}"),
                |r| r.is_empty(),
            );
        let (mut child, reader) = runbook_process(&data, &inventory, first, &newest);
        let deadline = Instant::now() + Duration::from_millis(100 + rng.below(900));
        let mut exited = None;
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().unwrap() {
                exited = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(s) = exited {
            assert!(s.success(), "engine process failed: {s} (seed {seed})");
            break;
        }
        let mode = random_mode(&mut rng);
        let report = fs.cut(mode).expect("cut");
        child.kill().unwrap();
        child.wait().unwrap();
        // Every event line the CLI wrote before it died counts as acknowledged.
        reader.join().unwrap();
        let acked = newest.load(Ordering::SeqCst);
        cuts += 1;
        fs = disk.mount();
        let what = format!("seed {seed}, cut {cuts} ({mode:?}, {report:?})");
        let log = waymark_engine::open_log(&data)
            .unwrap_or_else(|e| panic!("{what}: the log does not open after the cut: {e}"));
        let runs = log.runs().unwrap();
        if acked >= 0 {
            assert_eq!(
                runs.len(),
                1,
                "{what}: the CLI had printed event #{acked} and the log holds {} runs",
                runs.len()
            );
            let history = log
                .read(runs[0])
                .unwrap_or_else(|e| panic!("{what}: run {} does not verify: {e}", runs[0]));
            assert!(
                history.len() as i64 > acked,
                "{what}: the CLI had printed event #{acked}; the log has {} events",
                history.len()
            );
            checks += 1;
        }
    }
    // Resume without cuts until the run has ended (the log says so, not the exit status).
    let mut finished = false;
    for _ in 0..20 {
        finished = {
            let log = waymark_engine::open_log(&data).unwrap();
            !log.runs().unwrap().is_empty() && log.open_runs().unwrap().is_empty()
        };
        if finished {
            break;
        }
        let (mut child, reader) = runbook_process(&data, &inventory, false, &newest);
        let status = child.wait().unwrap();
        reader.join().unwrap();
        assert!(status.success(), "resume failed: {status} (seed {seed})");
    }
    assert!(finished, "the run did not finish (seed {seed})");
    crate::maintenance::check_completed_estate(&sb.dir);
    let verify = waymark(&data).arg("verify").output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    fs.unmount().expect("clean unmount");
    eprintln!(
        "runbook power cuts: {cuts} cuts, {checks} checks of the printed events after a cut, every effect once (seed {seed})"
    );
}
