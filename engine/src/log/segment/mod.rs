//! The durable backend: append-only, crc-framed segment files under `DATA_DIR/log/`, made durable
//! by one `fdatasync` per group commit. The index (every run, and where each of its records is)
//! lives in memory and is rebuilt from the segments at every open, so it can never disagree with
//! them.
//!
//! Recovery never refuses to open because some bytes are bad: a damaged stretch costs only the
//! records inside it (they are named in the [`RecoveryReport`]; their runs fail verification at
//! that position), and the unverified end of the last segment (the batch in flight at a crash) is
//! set aside in a `torn-*` file. The durability argument is in `ARCHITECTURE.md`.

pub mod format;
pub mod scan;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::{Backend, Error, WriteBatch};
use crate::clock::{SharedClock, SystemClock};
use crate::codec;
use crate::event::RunId;
use format::{FrameIn, FLAG_CLOSES_RUN, SEGMENT_HEADER_LEN};

/// A segment is closed and a new one started once it holds this much.
const SEGMENT_TARGET: u64 = 64 * 1024 * 1024;
/// The end of the active segment is kept zero-filled this far ahead of the writes, so that a
/// group commit's `fdatasync` rarely has to persist a new extent (a growing file costs about
/// 1.5x a preallocated one per sync on this machine class: engineering.md).
const PREALLOCATE: u64 = 1024 * 1024;
/// Frame flag: this frame deletes the record (written by [`Backend::raw_put`] with `None`).
const FLAG_DELETES: u8 = 2;

/// Where the segment files live, under the data directory.
pub const LOG_DIR: &str = "log";

/// Where a record's bytes are.
#[derive(Clone, Copy, Debug)]
struct Location {
    segment: u64,
    at: u64,
    len: u32,
}

#[derive(Default)]
struct RunEntry {
    records: BTreeMap<u64, Location>,
    closed: bool,
}

#[derive(Default)]
struct Index {
    segments: BTreeMap<u64, Arc<File>>,
    runs: BTreeMap<RunId, RunEntry>,
}

struct Writer {
    segment: u64,
    file: Arc<File>,
    offset: u64,
    allocated: u64,
    next_batch: u64,
}

struct Inner {
    log_dir: PathBuf,
    /// Runs that lost records in damaged bytes: first position lost, and where.
    lost: BTreeMap<RunId, (u64, String)>,
    index: RwLock<Index>,
    writer: Mutex<Writer>,
    report: RecoveryReport,
    /// A segment is closed once it holds this much ([`SEGMENT_TARGET`] unless a test says).
    segment_target: u64,
    /// The log's clock (the system clock unless [`Backend::use_clock`] says otherwise): names
    /// the store [`SegmentBackend::salvage`] moves aside.
    clock: RwLock<SharedClock>,
    _lock: File,
}

/// Segment-file storage for [`super::Log`].
#[derive(Clone)]
pub struct SegmentBackend {
    inner: Arc<Inner>,
}

/// Something recovery found that an operator should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Bytes in the middle of the log that no longer verify: acknowledged records were damaged.
    Damaged {
        /// Segment file number.
        segment: u64,
        /// Offset in it.
        offset: u64,
        /// Length of the stretch.
        len: u64,
        /// Records named by their (intact) frame header whose bytes are damaged.
        records: Vec<(RunId, u64)>,
        /// Records inside the stretch that still verified and were kept.
        salvaged: usize,
        /// Records recognised through the hash chain although their frame header was damaged.
        recognised: Vec<(RunId, u64)>,
        /// Bytes where a record may have been that could be attributed to no run.
        unattributed_bytes: u64,
    },
    /// The unverified end of the log: the write in flight when the process or the machine
    /// stopped, never acknowledged.
    Tail {
        /// Segment file number.
        segment: u64,
        /// Offset in it.
        offset: u64,
        /// Length.
        len: u64,
        /// Records of its verifying prefix, kept.
        kept: usize,
        /// Records named in the rest, not kept.
        dropped: Vec<(RunId, u64)>,
        /// Where its bytes were saved before the end of the log was cleared.
        saved_to: PathBuf,
    },
    /// Whole batches are missing between two that verify (a lost or truncated segment).
    MissingBatches {
        /// Segment where the gap was seen.
        segment: u64,
        /// Batch number expected.
        expected: u64,
        /// Batch number found.
        found: u64,
    },
    /// A segment header that does not verify (the records in the file are still read).
    BadSegmentHeader {
        /// Segment file number.
        segment: u64,
        /// What is wrong.
        detail: String,
    },
}

impl Finding {
    /// Whether acknowledged data may have been lost (a tail never is).
    pub fn is_damage(&self) -> bool {
        !matches!(self, Finding::Tail { .. })
    }
}

fn names(records: &[(RunId, u64)]) -> String {
    let shown: Vec<String> = records
        .iter()
        .take(6)
        .map(|(run, seq)| format!("run {run} event #{seq}"))
        .collect();
    let more = records.len().saturating_sub(6);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Damaged {
                segment,
                offset,
                len,
                records,
                salvaged,
                recognised,
                unattributed_bytes,
            } => {
                write!(
                    f,
                    "segment {segment} offset {offset}: {len} damaged bytes; {salvaged} records inside still verified"
                )?;
                if !recognised.is_empty() {
                    write!(f, "; recognised by the hash chain: {}", names(recognised))?;
                }
                if !records.is_empty() {
                    write!(f, "; lost: {}", names(records))?;
                }
                if *unattributed_bytes > 0 {
                    write!(
                        f,
                        "; {unattributed_bytes} bytes could not be attributed to any run"
                    )?;
                }
                Ok(())
            }
            Finding::Tail {
                segment,
                offset,
                len,
                kept,
                dropped,
                saved_to,
            } => {
                write!(
                    f,
                    "segment {segment} offset {offset}: an unfinished write of {len} bytes (in flight when the process stopped; never acknowledged): {kept} records kept"
                )?;
                if !dropped.is_empty() {
                    write!(f, ", not kept: {}", names(dropped))?;
                }
                write!(f, "; its bytes are saved in {}", saved_to.display())
            }
            Finding::MissingBatches {
                segment,
                expected,
                found,
            } => write!(
                f,
                "segment {segment}: batches {expected} to {} are missing (a segment file lost or cut)",
                found.saturating_sub(1)
            ),
            Finding::BadSegmentHeader { segment, detail } => {
                write!(f, "segment {segment}: {detail}")
            }
        }
    }
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// In the order found.
    pub findings: Vec<Finding>,
}

impl RecoveryReport {
    /// Whether anything acknowledged may have been lost.
    pub fn has_damage(&self) -> bool {
        self.findings.iter().any(Finding::is_damage)
    }
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

fn segment_path(log_dir: &Path, number: u64) -> PathBuf {
    log_dir.join(format!("{number:016}.wseg"))
}

fn segment_number(name: &str) -> Option<u64> {
    name.strip_suffix(".wseg")?.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync the directory", dir, &e))
}

/// Writes zeroes over `[from, to)` of `file`.
fn zero_fill(file: &File, from: u64, to: u64, path: &Path) -> Result<(), Error> {
    static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROES.len() as u64) as usize;
        file.write_all_at(&ZEROES[..n], at)
            .map_err(|e| io_error("cannot write", path, &e))?;
        at += n as u64;
    }
    Ok(())
}

/// Creates segment `number`: header, zero-filled ahead, synced, and its directory entry synced.
fn create_segment(log_dir: &Path, number: u64) -> Result<(Arc<File>, u64), Error> {
    let path = segment_path(log_dir, number);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io_error("cannot create the segment", &path, &e))?;
    file.write_all_at(&format::segment_header(number), 0)
        .map_err(|e| io_error("cannot write", &path, &e))?;
    let allocated = SEGMENT_HEADER_LEN as u64 + PREALLOCATE;
    zero_fill(&file, SEGMENT_HEADER_LEN as u64, allocated, &path)?;
    file.sync_all()
        .map_err(|e| io_error("cannot sync", &path, &e))?;
    sync_dir(log_dir)?;
    Ok((Arc::new(file), allocated))
}

impl SegmentBackend {
    /// Opens (or creates) the log under `dir`, recovering from whatever a crash or a damaged disk
    /// left. Fails only when the directory cannot be used at all (held by another process,
    /// unreadable, full); damage is reported by [`SegmentBackend::report`].
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_with_segment_target(dir, SEGMENT_TARGET)
    }

    /// [`SegmentBackend::open`] with segments closed at `bytes` instead of 64 MiB, so that tests
    /// can cross segment boundaries with a few records.
    pub fn open_with_segment_target(dir: &Path, bytes: u64) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, &e))?;
        let lock = super::sled::lock_dir(dir)?;
        let log_dir = dir.join(LOG_DIR);
        let recovered = dir.join("log.recovering");
        if !log_dir.exists() && recovered.exists() {
            // `waymark recover` stopped between moving the damaged store aside and putting the
            // finished new one in place (it is synced before either rename).
            std::fs::rename(&recovered, &log_dir)
                .map_err(|e| io_error("cannot rename", &recovered, &e))?;
            sync_dir(dir)?;
        }
        if !log_dir.exists() {
            import_or_create(dir, &log_dir)?;
        }
        let mut numbers: Vec<u64> = std::fs::read_dir(&log_dir)
            .map_err(|e| io_error("cannot list", &log_dir, &e))?
            .filter_map(Result::ok)
            .filter_map(|e| segment_number(&e.file_name().to_string_lossy()))
            .collect();
        numbers.sort_unstable();
        let mut report = RecoveryReport::default();
        let mut index = Index::default();
        let mut next_batch = None;
        let mut tail_to_clear = None;
        let mut unattributed = Vec::new();
        let mut last_end = SEGMENT_HEADER_LEN as u64;
        let mut recreated = None;
        for (i, &number) in numbers.iter().enumerate() {
            let path = segment_path(&log_dir, number);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_error("cannot open the segment", &path, &e))?;
            let bytes = std::fs::read(&path).map_err(|e| io_error("cannot read", &path, &e))?;
            let is_last = i + 1 == numbers.len();
            let scanned = scan::scan_segment(&bytes, is_last, &mut next_batch);
            if let Err(detail) = format::check_segment_header(&bytes, number) {
                let unfinished_creation = is_last
                    && scanned.records.is_empty()
                    && scanned.damaged.is_empty()
                    && scanned.tail.as_ref().is_none_or(|t| t.verified.is_empty());
                if unfinished_creation {
                    // The machine stopped while this segment was being created: nothing in it
                    // was ever acknowledged. Create it again.
                    drop(file);
                    let (file, allocated) = create_segment(&log_dir, number)?;
                    index.segments.insert(number, file.clone());
                    recreated = Some((number, file, allocated));
                    continue;
                }
                report.findings.push(Finding::BadSegmentHeader {
                    segment: number,
                    detail,
                });
            }
            for (expected, found) in &scanned.gaps {
                report.findings.push(Finding::MissingBatches {
                    segment: number,
                    expected: *expected,
                    found: *found,
                });
            }
            for found in &scanned.records {
                index.apply(number, found);
            }
            for d in &scanned.damaged {
                for &(at, len) in &d.unattributed {
                    unattributed.push((number, at, len, report.findings.len()));
                }
                report.findings.push(Finding::Damaged {
                    segment: number,
                    offset: d.offset,
                    len: d.len,
                    records: d.records.clone(),
                    salvaged: d.salvaged,
                    recognised: Vec::new(),
                    unattributed_bytes: d.unattributed.iter().map(|u| u.1).sum(),
                });
            }
            if is_last {
                last_end = scanned.valid_end;
                if let Some(tail) = scanned.tail {
                    tail_to_clear = Some((tail, bytes));
                }
            }
            index.segments.insert(number, Arc::new(file));
        }
        let ranges: Vec<(u64, u64, u64)> = unattributed.iter().map(|u| (u.0, u.1, u.2)).collect();
        for (i, run, seq) in recognise_by_chain(&mut index, &ranges) {
            if let Some(Finding::Damaged {
                recognised,
                unattributed_bytes,
                ..
            }) = report.findings.get_mut(unattributed[i].3)
            {
                recognised.push((run, seq));
                *unattributed_bytes = unattributed_bytes.saturating_sub(unattributed[i].2);
            }
        }

        let (segment, file, offset, allocated) = match (numbers.last(), recreated) {
            (_, Some((n, file, allocated))) => (n, file, SEGMENT_HEADER_LEN as u64, allocated),
            (None, None) => {
                let (file, allocated) = create_segment(&log_dir, 1)?;
                index.segments.insert(1, file.clone());
                (1, file, SEGMENT_HEADER_LEN as u64, allocated)
            }
            (Some(&n), None) => {
                let file = index.segments[&n].clone();
                let path = segment_path(&log_dir, n);
                let len = file
                    .metadata()
                    .map_err(|e| io_error("cannot stat", &path, &e))?
                    .len();
                (n, file, last_end, len)
            }
        };
        let writer = Writer {
            segment,
            file,
            offset,
            allocated,
            next_batch: next_batch.unwrap_or(1),
        };
        let mut kept_tail = Vec::new();
        if let Some((tail, bytes)) = tail_to_clear {
            // Keep each verifying record that continues its run, in file order; then records
            // that the hash chain recognises in what is left.
            let mut dropped = tail.dropped.clone();
            let mut kept = Vec::new();
            for f in &tail.verified {
                let next = index
                    .runs
                    .get(&f.run)
                    .and_then(|e| e.records.keys().next_back())
                    .map_or(0, |s| s + 1);
                if f.seq == next {
                    index.apply(segment, f);
                    kept.push((f.run, f.seq, f.payload_at, f.payload_len as usize));
                } else {
                    dropped.push((f.run, f.seq));
                }
            }
            let ranges: Vec<(u64, u64, u64)> = tail
                .unattributed
                .iter()
                .map(|&(at, len)| (segment, at, len))
                .collect();
            for (i, run, seq) in recognise_by_chain(&mut index, &ranges) {
                let loc = index.runs[&run].records[&seq];
                debug_assert!(loc.at >= ranges[i].1);
                kept.push((run, seq, loc.at, loc.len as usize));
            }
            for (run, seq, at, len) in &kept {
                let from = *at as usize;
                kept_tail.push((*run, *seq, bytes[from..from + len].to_vec()));
            }
            let saved_to = log_dir.join(format!("torn-{segment:016}-{}.bin", tail.offset));
            let end = (tail.offset + tail.len) as usize;
            let mut f =
                File::create(&saved_to).map_err(|e| io_error("cannot create", &saved_to, &e))?;
            f.write_all(&bytes[tail.offset as usize..end])
                .and_then(|()| f.sync_all())
                .map_err(|e| io_error("cannot write", &saved_to, &e))?;
            sync_dir(&log_dir)?;
            let path = segment_path(&log_dir, segment);
            zero_fill(&writer.file, tail.offset, end as u64, &path)?;
            writer
                .file
                .sync_data()
                .map_err(|e| io_error("cannot sync", &path, &e))?;
            report.findings.push(Finding::Tail {
                segment,
                offset: tail.offset,
                len: tail.len,
                kept: kept_tail.len(),
                dropped,
                saved_to,
            });
        }
        let lost = lost_records(&report);
        let backend = SegmentBackend {
            inner: Arc::new(Inner {
                log_dir: log_dir.clone(),
                lost,
                index: RwLock::new(index),
                writer: Mutex::new(writer),
                report,
                segment_target: bytes,
                clock: RwLock::new(Arc::new(SystemClock)),
                _lock: lock,
            }),
        };
        if !kept_tail.is_empty() {
            // What was kept of the unfinished write goes back in as a proper batch (the index
            // pointed into the bytes just cleared; writing re-points it).
            let frames: Vec<(RunId, u64, u8, &[u8])> = kept_tail
                .iter()
                .map(|(run, seq, p)| (*run, *seq, 0, p.as_slice()))
                .collect();
            backend.write_frames(&frames)?;
        }
        backend.compute_closed();
        Ok(backend)
    }

    /// What recovery found when this log was opened.
    pub fn report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The directory holding the segment files.
    pub fn log_dir(&self) -> &Path {
        &self.inner.log_dir
    }

    /// Marks runs whose last record is terminal as closed (recovery; the flag is only a hint).
    fn compute_closed(&self) {
        let mut index = self.inner.index.write().expect("index lock");
        let mut closed = Vec::new();
        for (run, entry) in &index.runs {
            if let Some((&seq, loc)) = entry.records.iter().next_back() {
                if let Some(bytes) = read_at(&index, loc) {
                    if matches!(codec::decode(*run, seq, &bytes), Ok(r) if r.event.is_terminal()) {
                        closed.push(*run);
                    }
                }
            }
        }
        for run in closed {
            if let Some(e) = index.runs.get_mut(&run) {
                e.closed = true;
            }
        }
    }

    /// Appends frames as one batch and makes it durable; then indexes them.
    fn write_frames(&self, frames: &[(RunId, u64, u8, &[u8])]) -> Result<(), Error> {
        let mut buf = Vec::with_capacity(
            format::BATCH_HEADER_LEN
                + frames
                    .iter()
                    .map(|f| format::FRAME_HEADER_LEN + f.3.len())
                    .sum::<usize>(),
        );
        let start = format::begin_batch(&mut buf);
        let mut placed = Vec::with_capacity(frames.len());
        for (run, seq, flags, payload) in frames {
            let at = format::put_frame(
                &mut buf,
                &FrameIn {
                    run: *run,
                    seq: *seq,
                    flags: *flags,
                    payload,
                },
            );
            placed.push((*run, *seq, *flags, at as u64, payload.len() as u32));
        }
        let mut w = self.inner.writer.lock().expect("writer lock");
        format::finish_batch(&mut buf, start, w.next_batch);
        let len = buf.len() as u64;
        if w.offset + len > self.inner.segment_target && w.offset > SEGMENT_HEADER_LEN as u64 {
            let number = w.segment + 1;
            let (file, allocated) = create_segment(&self.inner.log_dir, number)?;
            self.inner
                .index
                .write()
                .expect("index lock")
                .segments
                .insert(number, file.clone());
            w.segment = number;
            w.file = file;
            w.offset = SEGMENT_HEADER_LEN as u64;
            w.allocated = allocated;
        }
        // Named only when something fails: formatting it costs every commit.
        let segment = w.segment;
        let path = || segment_path(&self.inner.log_dir, segment);
        if w.offset + len > w.allocated {
            let to = w.offset + len + PREALLOCATE;
            zero_fill(&w.file, w.allocated, to, &path())?;
            w.allocated = to;
        }
        w.file
            .write_all_at(&buf, w.offset)
            .map_err(|e| io_error("cannot write", &path(), &e))?;
        // The durability point: nothing of this batch is acknowledged before it returns.
        w.file
            .sync_data()
            .map_err(|e| io_error("cannot sync (fdatasync)", &path(), &e))?;
        let base = w.offset;
        w.offset += len;
        w.next_batch += 1;
        let mut index = self.inner.index.write().expect("index lock");
        drop(w);
        for (run, seq, flags, at, len) in placed {
            index.apply(
                segment,
                &scan::Found {
                    run,
                    seq,
                    flags,
                    payload_at: base + at,
                    payload_len: len,
                },
            );
        }
        Ok(())
    }

    fn locations(&self, run: RunId) -> Vec<(u64, Location)> {
        let index = self.inner.index.read().expect("index lock");
        index
            .runs
            .get(&run)
            .map(|e| e.records.iter().map(|(s, l)| (*s, *l)).collect())
            .unwrap_or_default()
    }

    fn read_location(&self, loc: &Location) -> Result<Vec<u8>, Error> {
        let index = self.inner.index.read().expect("index lock");
        let file = index
            .segments
            .get(&loc.segment)
            .ok_or_else(|| Error::Storage(format!("segment {} is not open", loc.segment)))?
            .clone();
        drop(index);
        let mut bytes = vec![0; loc.len as usize];
        file.read_exact_at(&mut bytes, loc.at).map_err(|e| {
            Error::Storage(format!(
                "cannot read segment {} of the event log in {}: {e}",
                loc.segment,
                self.inner.log_dir.display()
            ))
        })?;
        Ok(bytes)
    }
}

/// The last event of the longest verifying prefix of a run's records, described.
fn verified_prefix(run: RunId, records: &[(u64, Vec<u8>)]) -> String {
    let mut last = None;
    let mut prev = [0u8; 32];
    for (i, (seq, bytes)) in records.iter().enumerate() {
        match codec::decode(run, *seq, bytes) {
            Ok(rec) if *seq == i as u64 && rec.prev_hash == prev => {
                prev = rec.hash;
                last = Some(format!("#{seq} {} at {}", rec.event.kind(), rec.at));
            }
            _ => break,
        }
    }
    last.unwrap_or_else(|| "none (its first event is lost)".into())
}

/// Runs named in damaged bytes, with the first position lost and where.
fn lost_records(report: &RecoveryReport) -> BTreeMap<RunId, (u64, String)> {
    let mut lost: BTreeMap<RunId, (u64, String)> = BTreeMap::new();
    for finding in &report.findings {
        if let Finding::Damaged {
            segment,
            offset,
            records,
            ..
        } = finding
        {
            for &(run, seq) in records {
                let detail = format!(
                    "lost in damaged bytes of the event log (segment {segment}, offset {offset}); \
                     run `waymark recover` to salvage every intact record into a fresh store"
                );
                let e = lost.entry(run).or_insert((seq, detail.clone()));
                if seq < e.0 {
                    *e = (seq, detail);
                }
            }
        }
    }
    lost
}

fn read_at(index: &Index, loc: &Location) -> Option<Vec<u8>> {
    let file = index.segments.get(&loc.segment)?;
    let mut bytes = vec![0; loc.len as usize];
    file.read_exact_at(&mut bytes, loc.at).ok()?;
    Some(bytes)
}

impl Index {
    fn apply(&mut self, segment: u64, f: &scan::Found) {
        let entry = self.runs.entry(f.run).or_default();
        if f.flags & FLAG_DELETES != 0 {
            entry.records.remove(&f.seq);
            return;
        }
        entry.records.insert(
            f.seq,
            Location {
                segment,
                at: f.payload_at,
                len: f.payload_len,
            },
        );
        if f.flags & FLAG_CLOSES_RUN != 0 {
            entry.closed = true;
        }
    }
}

/// Tries to recognise records in unattributed bytes through the hash chain: a record whose frame
/// header was damaged but whose own bytes (checked by their CRC) are intact names the hash of its
/// predecessor, which names the run and the position. Recognised records are indexed; returns,
/// for each recognised one, the index of its range in `ranges` and the record.
fn recognise_by_chain(index: &mut Index, ranges: &[(u64, u64, u64)]) -> Vec<(usize, RunId, u64)> {
    let mut out = Vec::new();
    if ranges.is_empty() {
        return out;
    }
    // Hash of every record, and the first record's link for runs missing #0.
    // (Two runs can share hashes: the chain does not include the run id, and two runs started
    // in the same millisecond with the same input have the same first record.)
    let mut by_hash: std::collections::HashMap<[u8; 32], Vec<(RunId, u64)>> =
        std::collections::HashMap::new();
    let mut first_links: Vec<(RunId, [u8; 32])> = Vec::new();
    for (run, entry) in &index.runs {
        for (&seq, loc) in &entry.records {
            if let Some(bytes) = read_at(index, loc) {
                if let Ok(rec) = codec::decode(*run, seq, &bytes) {
                    by_hash.entry(rec.hash).or_default().push((*run, seq));
                    if seq == 1 && !entry.records.contains_key(&0) {
                        first_links.push((*run, rec.prev_hash));
                    }
                }
            }
        }
    }
    for (i, &(segment, at, len)) in ranges.iter().enumerate() {
        let Some(file) = index.segments.get(&segment).cloned() else {
            continue;
        };
        let mut bytes = vec![0; len as usize];
        if file.read_exact_at(&mut bytes, at).is_err() {
            continue;
        }
        // The record's own bytes start after a frame header (and, for a batch's first frame,
        // after the batch header too).
        for skip in [
            format::FRAME_HEADER_LEN,
            format::BATCH_HEADER_LEN + format::FRAME_HEADER_LEN,
        ] {
            let Some(payload) = bytes.get(skip..) else {
                continue;
            };
            let Ok(rec) = codec::decode(RunId(uuid::Uuid::nil()), 0, payload) else {
                continue;
            };
            let candidates: Vec<(RunId, u64)> = if rec.prev_hash == [0; 32] {
                first_links
                    .iter()
                    .filter(|(_, link)| *link == rec.hash)
                    .map(|(run, _)| (*run, 0))
                    .collect()
            } else {
                by_hash
                    .get(&rec.prev_hash)
                    .into_iter()
                    .flatten()
                    .map(|(run, seq)| (*run, seq + 1))
                    .collect()
            };
            let free: Vec<(RunId, u64)> = candidates
                .into_iter()
                .filter(|(run, seq)| {
                    !index
                        .runs
                        .get(run)
                        .is_some_and(|e| e.records.contains_key(seq))
                })
                .collect();
            // Only an unambiguous match is taken.
            let [(run, seq)] = free[..] else { continue };
            index.apply(
                segment,
                &scan::Found {
                    run,
                    seq,
                    flags: 0,
                    payload_at: at + skip as u64,
                    payload_len: payload.len() as u32,
                },
            );
            out.push((i, run, seq));
            break;
        }
    }
    out
}

/// A store written from scratch (an import, a salvage): one batch per run, records byte for byte,
/// synced once at the end, before the directory is renamed into place.
struct FreshStore {
    dir: PathBuf,
    writer: Writer,
}

impl FreshStore {
    fn create(dir: &Path) -> Result<Self, Error> {
        let (file, allocated) = create_segment(dir, 1)?;
        Ok(FreshStore {
            dir: dir.to_owned(),
            writer: Writer {
                segment: 1,
                file,
                offset: SEGMENT_HEADER_LEN as u64,
                allocated,
                next_batch: 1,
            },
        })
    }

    fn put_run(&mut self, run: RunId, records: &[(u64, Vec<u8>)]) -> Result<(), Error> {
        let w = &mut self.writer;
        let mut buf = Vec::new();
        let start = format::begin_batch(&mut buf);
        for (seq, bytes) in records {
            format::put_frame(
                &mut buf,
                &FrameIn {
                    run,
                    seq: *seq,
                    flags: 0,
                    payload: bytes,
                },
            );
        }
        format::finish_batch(&mut buf, start, w.next_batch);
        w.file
            .write_all_at(&buf, w.offset)
            .map_err(|e| io_error("cannot write", &segment_path(&self.dir, 1), &e))?;
        w.offset += buf.len() as u64;
        w.allocated = w.allocated.max(w.offset);
        w.next_batch += 1;
        Ok(())
    }

    fn finish(self) -> Result<(), Error> {
        self.writer
            .file
            .sync_all()
            .map_err(|e| io_error("cannot sync", &segment_path(&self.dir, 1), &e))?;
        sync_dir(&self.dir)
    }
}

/// Creates `DATA_DIR/log`, importing the records of an older sled store (`events.sled`) when
/// there is one: written into `log.importing`, synced, renamed into place; the sled directory is
/// then renamed `events.sled.imported` (kept, never deleted).
fn import_or_create(dir: &Path, log_dir: &Path) -> Result<(), Error> {
    let importing = dir.join("log.importing");
    if importing.exists() {
        std::fs::remove_dir_all(&importing)
            .map_err(|e| io_error("cannot remove the unfinished import", &importing, &e))?;
    }
    std::fs::create_dir(&importing).map_err(|e| io_error("cannot create", &importing, &e))?;
    let sled_dir = dir.join("events.sled");
    if sled_dir.exists() {
        let old = super::sled::SledBackend::open_held(dir)?;
        let mut fresh = FreshStore::create(&importing)?;
        for run in old.all_runs()? {
            fresh.put_run(run, &old.scan_run(run)?)?;
        }
        fresh.finish()?;
        drop(old);
    }
    sync_dir(&importing)?;
    std::fs::rename(&importing, log_dir).map_err(|e| io_error("cannot rename", &importing, &e))?;
    sync_dir(dir)?;
    // The data directory itself may have just been created: make its own entry durable too.
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    if sled_dir.exists() {
        let aside = dir.join("events.sled.imported");
        std::fs::rename(&sled_dir, &aside).map_err(|e| io_error("cannot rename", &sled_dir, &e))?;
        sync_dir(dir)?;
    }
    Ok(())
}

impl SegmentBackend {
    fn refuse_lost(&self, run: RunId) -> Result<(), Error> {
        match self.inner.lost.get(&run) {
            Some((seq, detail)) => Err(Error::Lost {
                run,
                seq: *seq,
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl Backend for SegmentBackend {
    fn damage(&self) -> Vec<String> {
        self.inner
            .report
            .findings
            .iter()
            .filter(|f| f.is_damage())
            .map(|f| {
                format!(
                    "the event log in {}: {f}; run `waymark recover` to salvage every intact record into a fresh store",
                    self.inner.log_dir.display()
                )
            })
            .collect()
    }

    fn scan_run(&self, run: RunId) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        self.refuse_lost(run)?;
        self.locations(run)
            .into_iter()
            .map(|(seq, loc)| Ok((seq, self.read_location(&loc)?)))
            .collect()
    }

    fn last(&self, run: RunId) -> Result<Option<(u64, Vec<u8>)>, Error> {
        self.refuse_lost(run)?;
        let last = {
            let index = self.inner.index.read().expect("index lock");
            index
                .runs
                .get(&run)
                .and_then(|e| e.records.iter().next_back().map(|(s, l)| (*s, *l)))
        };
        match last {
            None => Ok(None),
            Some((seq, loc)) => Ok(Some((seq, self.read_location(&loc)?))),
        }
    }

    fn open_runs(&self) -> Result<Vec<RunId>, Error> {
        let index = self.inner.index.read().expect("index lock");
        Ok(index
            .runs
            .iter()
            .filter(|(_, e)| !e.closed && !e.records.is_empty())
            .map(|(r, _)| *r)
            .collect())
    }

    fn all_runs(&self) -> Result<Vec<RunId>, Error> {
        let index = self.inner.index.read().expect("index lock");
        Ok(index
            .runs
            .iter()
            .filter(|(_, e)| !e.records.is_empty())
            .map(|(r, _)| *r)
            .collect())
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), Error> {
        // The closing flag goes on the last record of each run that ends in this batch.
        let mut last_of_closed: BTreeMap<RunId, u64> = BTreeMap::new();
        for (run, seq, _) in &batch.records {
            if batch.closed.contains(run) {
                let e = last_of_closed.entry(*run).or_insert(*seq);
                *e = (*e).max(*seq);
            }
        }
        let frames: Vec<(RunId, u64, u8, &[u8])> = batch
            .records
            .iter()
            .map(|(run, seq, bytes)| {
                let flags = if last_of_closed.get(run) == Some(seq) {
                    FLAG_CLOSES_RUN
                } else {
                    0
                };
                (*run, *seq, flags, bytes.as_slice())
            })
            .collect();
        self.write_frames(&frames)
    }

    fn use_clock(&self, clock: SharedClock) {
        *self.inner.clock.write().expect("log clock lock") = clock;
    }

    fn raw_put(&self, run: RunId, seq: u64, bytes: Option<Vec<u8>>) -> Result<(), Error> {
        match bytes {
            Some(b) => self.write_frames(&[(run, seq, 0, b.as_slice())]),
            None => self.write_frames(&[(run, seq, FLAG_DELETES, &[])]),
        }
    }
}

/// What [`SegmentBackend::salvage`] did.
#[derive(Debug, Clone)]
pub struct Salvage {
    /// Where the old segment directory now is (kept, never deleted).
    pub moved_aside: PathBuf,
    /// Runs copied into the fresh store (each verifies there).
    pub runs: usize,
    /// Records copied.
    pub records: usize,
    /// Runs copied whose history is shorter than it was (they lost their last records): what
    /// was lost. They verify, and are open again if their end was lost: check the estate.
    pub shortened_runs: Vec<(RunId, String)>,
    /// Runs left out of the fresh store because their history does not verify (a record in the
    /// middle was lost), with the reason and their last verified event. Their records stay in the
    /// kept store.
    pub quarantined_runs: Vec<(RunId, String)>,
    /// What recovery had found in the old store.
    pub findings: Vec<Finding>,
}

impl SegmentBackend {
    /// Copies every run whose history verifies, byte for byte (each keeps its hash chain), into a
    /// fresh store, and puts it in place of this one, which is renamed `log.damaged-<unix
    /// seconds>` beside it (kept, never deleted). A run that lost a record in the middle of its
    /// history cannot be made whole: it is left out (quarantined) and named with its last
    /// verified event, rather than shortened, because a shortened history could repeat a step
    /// that its lost records show as done, and a run that can never load would block its cluster
    /// forever. A run that lost only its last records is copied and named.
    pub fn salvage(self) -> Result<Salvage, Error> {
        let dir = self
            .inner
            .log_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let fresh = dir.join("log.recovering");
        if fresh.exists() {
            std::fs::remove_dir_all(&fresh)
                .map_err(|e| io_error("cannot remove the unfinished recovery", &fresh, &e))?;
        }
        std::fs::create_dir(&fresh).map_err(|e| io_error("cannot create", &fresh, &e))?;
        let mut store = FreshStore::create(&fresh)?;
        let mut out = Salvage {
            moved_aside: PathBuf::new(),
            runs: 0,
            records: 0,
            shortened_runs: Vec::new(),
            quarantined_runs: Vec::new(),
            findings: self.inner.report.findings.clone(),
        };
        for run in self.all_runs()? {
            let mut kept = Vec::new();
            for (seq, loc) in self.locations(run) {
                let bytes = self.read_location(&loc)?;
                if codec::decode(run, seq, &bytes).is_ok() {
                    kept.push((seq, bytes));
                }
            }
            if kept.is_empty() {
                continue;
            }
            match (self.inner.lost.get(&run), super::decode_chain(run, &kept)) {
                (None, Ok(_)) => {}
                (Some((seq, _)), Ok(_)) => out.shortened_runs.push((
                    run,
                    format!(
                        "event #{seq} and any after it were lost; its history now ends at #{}: check the estate before resuming it",
                        kept.last().map_or(0, |k| k.0)
                    ),
                )),
                (_, Err(e)) => {
                    let verified = verified_prefix(run, &kept);
                    out.quarantined_runs.push((
                        run,
                        format!(
                            "{e}; left out of the fresh store (its records stay in the kept one); last verified event: {verified}; check the estate this run was changing"
                        ),
                    ));
                    continue;
                }
            }
            store.put_run(run, &kept)?;
            out.runs += 1;
            out.records += kept.len();
        }
        store.finish()?;
        let stamp = self
            .inner
            .clock
            .read()
            .expect("log clock lock")
            .now()
            .timestamp();
        let mut aside = dir.join(format!("log.damaged-{stamp}"));
        let mut n = 1;
        while aside.exists() {
            aside = dir.join(format!("log.damaged-{stamp}-{n}"));
            n += 1;
        }
        std::fs::rename(&self.inner.log_dir, &aside)
            .map_err(|e| io_error("cannot move aside", &self.inner.log_dir, &e))?;
        std::fs::rename(&fresh, &self.inner.log_dir)
            .map_err(|e| io_error("cannot rename", &fresh, &e))?;
        sync_dir(&dir)?;
        out.moved_aside = aside;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Payload, StepRef};

    /// A fixed time: what the records say is not what these tests look at.
    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time")
    }

    fn records(run_count: usize, per_run: u64) -> Vec<Vec<(RunId, u64, Vec<u8>)>> {
        let at = at();
        let mut out = Vec::new();
        for n in 0..run_count {
            let run = RunId::new();
            let mut prev = [0u8; 32];
            let mut recs = Vec::new();
            for seq in 0..per_run {
                let event = Event::StepCompleted {
                    step: StepRef::Workflow(seq as u32),
                    output: Payload(format!("{n}.{seq}")),
                };
                let (bytes, hash) = codec::encode(seq, at, &prev, &event).unwrap();
                prev = hash;
                recs.push((run, seq, bytes));
            }
            out.push(recs);
        }
        out
    }

    /// `waymark recover` names the store it moves aside by the log's clock, not the machine's:
    /// a log on simulated time (its engine's clock passed on by `Log::use_clock`) gets a name
    /// from that time.
    #[test]
    fn salvage_names_the_kept_store_by_the_logs_clock() {
        struct Fixed;
        impl crate::clock::Clock for Fixed {
            fn now(&self) -> chrono::DateTime<chrono::Utc> {
                at()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let runs = records(1, 2);
        let log = super::super::Log::new(SegmentBackend::open(dir.path()).unwrap());
        super::super::EventLog::use_clock(&log, Arc::new(Fixed));
        let backend = log.backend().clone();
        backend
            .commit(WriteBatch {
                records: runs[0].clone(),
                ..WriteBatch::default()
            })
            .unwrap();
        drop(log);
        let salvaged = backend.salvage().unwrap();
        assert_eq!(
            salvaged.moved_aside,
            dir.path().join(format!("log.damaged-{}", at().timestamp())),
            "{salvaged:?}"
        );
        assert_eq!((salvaged.runs, salvaged.records), (1, 2), "{salvaged:?}");
    }

    /// A record whose frame header is damaged is recognised through the hash chain and kept.
    #[test]
    fn a_damaged_frame_header_is_recognised_by_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let runs = records(2, 3);
        {
            let b = SegmentBackend::open(dir.path()).unwrap();
            for seq in 0..3 {
                let batch = WriteBatch {
                    records: runs.iter().map(|r| r[seq].clone()).collect(),
                    ..WriteBatch::default()
                };
                b.commit(batch).unwrap();
            }
        }
        let seg = segment_path(&dir.path().join(LOG_DIR), 1);
        let mut bytes = std::fs::read(&seg).unwrap();
        // Second batch, first frame (run 0, #1): flip a byte of its run id.
        let first_batch_len = format::BATCH_HEADER_LEN
            + runs
                .iter()
                .map(|r| format::FRAME_HEADER_LEN + r[0].2.len())
                .sum::<usize>();
        let at = SEGMENT_HEADER_LEN + first_batch_len + format::BATCH_HEADER_LEN + 9;
        bytes[at] ^= 1;
        std::fs::write(&seg, &bytes).unwrap();
        let b = SegmentBackend::open(dir.path()).unwrap();
        let report = b.report().clone();
        let Some(Finding::Damaged { recognised, .. }) = report.findings.first() else {
            panic!("{report:?}");
        };
        assert_eq!(recognised, &vec![(runs[0][1].0, 1)], "{report:?}");
        assert_eq!(b.scan_run(runs[0][0].0).unwrap().len(), 3);
    }

    /// Crossing segment boundaries: every record reads back after reopening, batch numbers run
    /// on across segments (no finding), and appends after a reopen go to the last segment.
    #[test]
    fn records_read_back_across_many_segments_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let runs = records(3, 40);
        {
            let b = SegmentBackend::open_with_segment_target(dir.path(), 1024).unwrap();
            for seq in 0..20 {
                let batch = WriteBatch {
                    records: runs.iter().map(|r| r[seq].clone()).collect(),
                    ..WriteBatch::default()
                };
                b.commit(batch).unwrap();
            }
        }
        let segments = || {
            std::fs::read_dir(dir.path().join(LOG_DIR))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".wseg")
                })
                .count()
        };
        let first = segments();
        assert!(first > 2, "{first} segments");
        {
            let b = SegmentBackend::open_with_segment_target(dir.path(), 1024).unwrap();
            assert!(b.report().findings.is_empty(), "{:?}", b.report());
            for seq in 20..40 {
                let batch = WriteBatch {
                    records: runs.iter().map(|r| r[seq].clone()).collect(),
                    ..WriteBatch::default()
                };
                b.commit(batch).unwrap();
            }
        }
        let b = SegmentBackend::open_with_segment_target(dir.path(), 1024).unwrap();
        assert!(b.report().findings.is_empty(), "{:?}", b.report());
        assert!(segments() > first);
        for recs in &runs {
            let stored = b.scan_run(recs[0].0).unwrap();
            assert_eq!(stored.len(), 40);
            let chain = super::super::decode_chain(recs[0].0, &stored).unwrap();
            assert_eq!(chain.len(), 40);
        }
    }
}
