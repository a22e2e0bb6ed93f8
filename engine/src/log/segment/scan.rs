//! Recovery's reading of one segment: every record that verifies, and what did not.
//!
//! The writer makes one batch durable (`fdatasync`) before it writes the next, so after a crash
//! every batch but the last written one is durable, and at most that one is torn. Hence:
//! - bytes that do not verify *followed by* a valid batch were durable once: they are damage
//!   (a bad sector, a flipped bit); every frame inside them that still verifies is salvaged, and
//!   every frame whose header holds is named as damaged;
//! - bytes that do not verify at the end of the last segment are the batch in flight at the
//!   crash (never acknowledged): recovery keeps each of its frames that verifies and continues
//!   its run (a per-run prefix, as if the write had stopped there), names the rest, and sets the
//!   bytes aside.

use super::format::{
    find_batch, find_frame, parse_batch, parse_frame, FrameAt, BATCH_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::event::RunId;

/// A record found by the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Run of the record.
    pub run: RunId,
    /// Position in the run.
    pub seq: u64,
    /// Frame flags.
    pub flags: u8,
    /// Offset of the payload in the segment file.
    pub payload_at: u64,
    /// Payload length.
    pub payload_len: u32,
}

/// A stretch of a segment that did not verify although later data did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// Offset in the segment file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Records whose frame header still names them but whose bytes are damaged.
    pub records: Vec<(RunId, u64)>,
    /// Records salvaged from inside the stretch.
    pub salvaged: usize,
    /// Byte ranges (offset, length) that no verifying frame header covers: records there cannot
    /// be named from their frame (recovery then tries the hash chain).
    pub unattributed: Vec<(u64, u64)>,
}

/// Unverified bytes at the end of the last segment: the write in flight at a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// Offset in the segment file.
    pub offset: u64,
    /// Length in bytes (up to the last non-zero byte).
    pub len: u64,
    /// Its frames that verify, in file order.
    pub verified: Vec<Found>,
    /// Records named by a frame header whose bytes do not verify.
    pub dropped: Vec<(RunId, u64)>,
    /// Byte ranges of the rest that no verifying frame header covers.
    pub unattributed: Vec<(u64, u64)>,
}

/// What the scan of one segment found.
#[derive(Debug, Default)]
pub struct SegmentScan {
    /// Records in batches that verified, and salvaged ones, in file order.
    pub records: Vec<Found>,
    /// Damaged stretches.
    pub damaged: Vec<Damaged>,
    /// The unverified tail, for the last segment.
    pub tail: Option<Tail>,
    /// Where the next batch may be written (end of the last verified batch).
    pub valid_end: u64,
    /// Number of the last verified batch.
    pub last_batch: Option<u64>,
    /// Batches that are missing between two verified ones: (expected, found).
    pub gaps: Vec<(u64, u64)>,
}

/// Scans one segment's bytes. `is_last`: no later segment exists (its unverified end is a tail,
/// not damage). `next_batch`: the number the next batch should carry, carried across segments.
pub fn scan_segment(buf: &[u8], is_last: bool, next_batch: &mut Option<u64>) -> SegmentScan {
    let mut out = SegmentScan {
        valid_end: SEGMENT_HEADER_LEN as u64,
        ..SegmentScan::default()
    };
    let mut pos = SEGMENT_HEADER_LEN;
    while pos < buf.len() {
        if let Some(batch) = parse_batch(buf, pos) {
            if let Some(expected) = *next_batch {
                if batch.number != expected {
                    out.gaps.push((expected, batch.number));
                }
            }
            *next_batch = Some(batch.number + 1);
            out.last_batch = Some(batch.number);
            let mut at = batch.body_at;
            while at < batch.end() {
                if let FrameAt::Valid(f) = parse_frame(buf, at, batch.end()) {
                    out.records.push(found(&f));
                    at = f.end();
                } else {
                    // The batch checksum held, so its frames were written like this: a bug,
                    // not a disk error. Salvage what verifies and name the rest.
                    out.damaged
                        .push(salvage(buf, at, batch.end(), &mut out.records, false));
                    break;
                }
            }
            pos = batch.end();
            out.valid_end = pos as u64;
            continue;
        }
        let Some(end) = buf[pos..]
            .iter()
            .rposition(|&b| b != 0)
            .map(|i| pos + i + 1)
        else {
            break; // only zeroes left: the preallocated, never written end
        };
        if let Some((next, _)) = find_batch(buf, pos + 1) {
            out.damaged
                .push(salvage(buf, pos, next, &mut out.records, true));
            // Whole batches may be inside the damage: no gap check across it.
            *next_batch = None;
            pos = next;
            continue;
        }
        if is_last {
            out.tail = Some(tail(buf, pos, end));
        } else {
            out.damaged
                .push(salvage(buf, pos, end, &mut out.records, true));
        }
        break;
    }
    out
}

fn found(f: &super::format::Frame) -> Found {
    Found {
        run: f.run,
        seq: f.seq,
        flags: f.flags,
        payload_at: f.payload_at as u64,
        payload_len: f.payload_len as u32,
    }
}

/// Reads a damaged stretch `[from, to)` frame by frame.
fn salvage(
    buf: &[u8],
    from: usize,
    to: usize,
    records: &mut Vec<Found>,
    may_start_with_batch_header: bool,
) -> Damaged {
    let mut d = Damaged {
        offset: from as u64,
        len: (to - from) as u64,
        records: Vec::new(),
        salvaged: 0,
        unattributed: Vec::new(),
    };
    let mut at = from;
    let gap = |start: usize, end: usize, d: &mut Damaged| {
        // A damaged batch header in front of its first frame holds no record.
        let header_only =
            may_start_with_batch_header && start == from && end - start <= BATCH_HEADER_LEN;
        if end > start && !header_only && buf[start..end].iter().any(|&b| b != 0) {
            d.unattributed.push((start as u64, (end - start) as u64));
        }
    };
    while let Some(next) = find_frame(buf, at, to) {
        gap(at, next, &mut d);
        match parse_frame(buf, next, to) {
            FrameAt::Valid(f) => {
                records.push(found(&f));
                d.salvaged += 1;
                at = f.end();
            }
            FrameAt::DamagedPayload(f) => {
                d.records.push((f.run, f.seq));
                at = f.end();
            }
            FrameAt::Invalid => at = next + 1,
        }
    }
    gap(at, to, &mut d);
    d
}

/// Reads the unverified end `[from, to)` of the last segment: every frame in it that verifies
/// (recovery keeps those that continue their run), and what does not.
fn tail(buf: &[u8], from: usize, to: usize) -> Tail {
    let mut verified = Vec::new();
    let rest = salvage(buf, from, to, &mut verified, true);
    Tail {
        offset: from as u64,
        len: (to - from) as u64,
        verified,
        dropped: rest.records,
        unattributed: rest.unattributed,
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{begin_batch, finish_batch, put_frame, segment_header, FrameIn};
    use super::*;

    fn segment(batches: &[Vec<(RunId, u64, Vec<u8>)>]) -> Vec<u8> {
        let mut out = segment_header(1).to_vec();
        for (i, frames) in batches.iter().enumerate() {
            let start = begin_batch(&mut out);
            for (run, seq, payload) in frames {
                put_frame(
                    &mut out,
                    &FrameIn {
                        run: *run,
                        seq: *seq,
                        flags: 0,
                        payload,
                    },
                );
            }
            finish_batch(&mut out, start, i as u64 + 1);
        }
        out
    }

    fn three_batches() -> (RunId, RunId, Vec<u8>) {
        let (a, b) = (RunId::new(), RunId::new());
        let seg = segment(&[
            vec![(a, 0, vec![1; 50]), (b, 0, vec![2; 50])],
            vec![(a, 1, vec![3; 50]), (b, 1, vec![4; 50])],
            vec![(a, 2, vec![5; 50])],
        ]);
        (a, b, seg)
    }

    #[test]
    fn a_clean_segment_with_zero_fill_reads_whole() {
        let (_, _, mut seg) = three_batches();
        let end = seg.len() as u64;
        seg.extend_from_slice(&[0; 4096]);
        let s = scan_segment(&seg, true, &mut None);
        assert_eq!(s.records.len(), 5);
        assert_eq!(s.valid_end, end);
        assert!(s.damaged.is_empty() && s.tail.is_none() && s.gaps.is_empty());
        assert_eq!(s.last_batch, Some(3));
    }

    #[test]
    fn a_torn_last_batch_keeps_its_verifying_prefix() {
        let (a, b, seg) = three_batches();
        let full = segment(&[
            vec![(a, 0, vec![1; 50]), (b, 0, vec![2; 50])],
            vec![(a, 1, vec![3; 50]), (b, 1, vec![4; 50])],
            vec![(a, 2, vec![5; 50]), (b, 2, vec![6; 50])],
        ]);
        // The last batch is cut in the middle of its second frame.
        let cut = seg.len() + 10;
        let mut torn = full[..cut].to_vec();
        torn.extend_from_slice(&[0; 100]);
        let s = scan_segment(&torn, true, &mut None);
        assert_eq!(s.records.len(), 4, "two durable batches");
        let t = s.tail.expect("a tail");
        assert_eq!(t.verified.len(), 1);
        assert_eq!((t.verified[0].run, t.verified[0].seq), (a, 2));
        assert!(t.dropped.is_empty(), "the cut frame has no header left");
        assert_eq!(t.unattributed, vec![(cut as u64 - 10, 10)]);
    }

    #[test]
    fn damage_in_the_middle_loses_only_the_damaged_record() {
        let (a, b, seg) = three_batches();
        // Flip a payload byte of (b, 0): first batch, second frame.
        let mut bad = seg.clone();
        let at = SEGMENT_HEADER_LEN + BATCH_HEADER_LEN + 44 + 50 + 44 + 10;
        bad[at] ^= 0xFF;
        let s = scan_segment(&bad, true, &mut None);
        assert_eq!(s.records.len(), 4);
        assert_eq!(s.damaged.len(), 1);
        assert_eq!(s.damaged[0].records, vec![(b, 0)]);
        assert!(s.damaged[0].unattributed.is_empty());
        assert!(s.records.iter().any(|r| (r.run, r.seq) == (a, 0)));
        assert!(s.tail.is_none());
    }

    #[test]
    fn damage_in_a_frame_header_is_an_unattributed_range() {
        let (_, _, seg) = three_batches();
        let mut bad = seg.clone();
        bad[SEGMENT_HEADER_LEN + BATCH_HEADER_LEN + 44 + 50 + 8] ^= 1;
        let s = scan_segment(&bad, true, &mut None);
        assert_eq!(s.records.len(), 4);
        assert_eq!(s.damaged[0].unattributed.len(), 1);
        assert_eq!(s.damaged[0].unattributed[0].1, 94, "one frame's bytes");
    }

    #[test]
    fn every_single_byte_flip_leaves_every_other_record_readable() {
        let (_, _, seg) = three_batches();
        for i in SEGMENT_HEADER_LEN..seg.len() {
            let mut bad = seg.clone();
            bad[i] ^= 0x10;
            let s = scan_segment(&bad, true, &mut None);
            let named: usize = s
                .damaged
                .iter()
                .map(|d| d.records.len() + d.unattributed.len())
                .sum::<usize>()
                + s.tail
                    .as_ref()
                    .map_or(0, |t| t.dropped.len() + t.unattributed.len());
            let kept = s.records.len() + s.tail.as_ref().map_or(0, |t| t.verified.len());
            assert!(kept >= 4, "flip at {i}: only {kept} records kept");
            assert!(kept + named >= 5, "flip at {i}: a record vanished unnamed");
        }
    }
}
