//! The bytes of a segment file: the segment header, batches (one per group commit) and frames
//! (one per record). Pure functions over byte slices; the layout is written down in
//! `ARCHITECTURE.md` ("Segment format").
//!
//! ```text
//! segment : header(32) batch*  zero-fill
//! batch   : magic "WMKB" | batch no u64 | body length u32 | CRC-32(body) | CRC-32(bytes 0..20)   (24 bytes)
//!           body = frame*
//! frame   : magic "WMKF" | run id 16 | seq u64 | payload length u32 | flags u8 | 0 0 0
//!           | CRC-32(payload) | CRC-32(bytes 0..40)                                              (44 bytes)
//!           payload = the record as `codec` encodes it
//! ```
//!
//! Every integer is little-endian. A frame carries its own run and position, so a damaged batch
//! can still be read frame by frame, and a damaged frame still names its run.

use crate::event::RunId;

/// Bytes at the start of every segment file.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Magic and version of a segment file.
const SEGMENT_MAGIC: &[u8; 4] = b"WMKS";
/// Segment format version written by this build.
pub const SEGMENT_VERSION: u32 = 1;

/// Batch header length.
pub const BATCH_HEADER_LEN: usize = 24;
const BATCH_MAGIC: &[u8; 4] = b"WMKB";

/// Frame header length.
pub const FRAME_HEADER_LEN: usize = 44;
const FRAME_MAGIC: &[u8; 4] = b"WMKF";

/// Frame flag: this record ends its run (a terminal event).
pub const FLAG_CLOSES_RUN: u8 = 1;

/// Largest payload a frame may declare (a sanity bound for the parser, far above any record).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The header of segment number `number`.
pub fn segment_header(number: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..4].copy_from_slice(SEGMENT_MAGIC);
    h[4..8].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&number.to_le_bytes());
    let crc = crc32fast::hash(&h[0..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; `Err` says what is wrong (the scan goes on regardless).
pub fn check_segment_header(h: &[u8], number: u64) -> Result<(), String> {
    if h.len() < SEGMENT_HEADER_LEN {
        return Err("the file is shorter than a segment header".into());
    }
    if &h[0..4] != SEGMENT_MAGIC || u32_at(h, 16) != crc32fast::hash(&h[0..16]) {
        return Err("the segment header is damaged".into());
    }
    let version = u32_at(h, 4);
    if version != SEGMENT_VERSION {
        return Err(format!(
            "segment format version {version} is unknown to this build (it reads {SEGMENT_VERSION}); upgrade waymark"
        ));
    }
    if u64_at(h, 8) != number {
        return Err(format!(
            "the header says segment {} but the file name says {number}",
            u64_at(h, 8)
        ));
    }
    Ok(())
}

/// One record to frame.
pub struct FrameIn<'a> {
    /// Run of the record.
    pub run: RunId,
    /// Position in the run.
    pub seq: u64,
    /// Flags ([`FLAG_CLOSES_RUN`]).
    pub flags: u8,
    /// The encoded record.
    pub payload: &'a [u8],
}

/// Appends one frame to `out`; returns the payload's offset within `out`.
pub fn put_frame(out: &mut Vec<u8>, frame: &FrameIn<'_>) -> usize {
    let start = out.len();
    out.extend_from_slice(FRAME_MAGIC);
    out.extend_from_slice(frame.run.as_bytes());
    out.extend_from_slice(&frame.seq.to_le_bytes());
    out.extend_from_slice(&(frame.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[frame.flags, 0, 0, 0]);
    out.extend_from_slice(&crc32fast::hash(frame.payload).to_le_bytes());
    let hcrc = crc32fast::hash(&out[start..start + 40]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    let payload_at = out.len();
    out.extend_from_slice(frame.payload);
    payload_at
}

/// Starts a batch in `out` (header to be completed by [`finish_batch`]); returns its start.
pub fn begin_batch(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; BATCH_HEADER_LEN]);
    start
}

/// Writes the header of the batch that starts at `start` and runs to the end of `out`.
pub fn finish_batch(out: &mut [u8], start: usize, number: u64) {
    let body_len = out.len() - start - BATCH_HEADER_LEN;
    let body_crc = crc32fast::hash(&out[start + BATCH_HEADER_LEN..]);
    let h = &mut out[start..start + BATCH_HEADER_LEN];
    h[0..4].copy_from_slice(BATCH_MAGIC);
    h[4..12].copy_from_slice(&number.to_le_bytes());
    h[12..16].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[16..20].copy_from_slice(&body_crc.to_le_bytes());
    let hcrc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&hcrc.to_le_bytes());
}

/// A batch whose header and body checksums hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Its number (one more than the batch before it).
    pub number: u64,
    /// Offset of its body in the buffer that was parsed.
    pub body_at: usize,
    /// Length of its body.
    pub body_len: usize,
}

impl Batch {
    /// Offset just past it.
    pub fn end(&self) -> usize {
        self.body_at + self.body_len
    }
}

/// Parses a valid batch at `at`, or `None`.
pub fn parse_batch(buf: &[u8], at: usize) -> Option<Batch> {
    let h = buf.get(at..at + BATCH_HEADER_LEN)?;
    if &h[0..4] != BATCH_MAGIC || u32_at(h, 20) != crc32fast::hash(&h[0..20]) {
        return None;
    }
    let body_len = u32_at(h, 12) as usize;
    let body_at = at + BATCH_HEADER_LEN;
    let body = buf.get(body_at..body_at + body_len)?;
    if u32_at(h, 16) != crc32fast::hash(body) {
        return None;
    }
    Some(Batch {
        number: u64_at(h, 4),
        body_at,
        body_len,
    })
}

/// The next offset `>= from` where a valid batch starts.
pub fn find_batch(buf: &[u8], from: usize) -> Option<(usize, Batch)> {
    let mut at = from;
    while at + BATCH_HEADER_LEN <= buf.len() {
        let rel = find_magic(&buf[at..], *BATCH_MAGIC)?;
        if let Some(b) = parse_batch(buf, at + rel) {
            return Some((at + rel, b));
        }
        at += rel + 1;
    }
    None
}

/// A frame as parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Run of the record.
    pub run: RunId,
    /// Position in the run.
    pub seq: u64,
    /// Flags.
    pub flags: u8,
    /// Offset of the payload in the buffer that was parsed.
    pub payload_at: usize,
    /// Payload length.
    pub payload_len: usize,
}

impl Frame {
    /// Offset just past it.
    pub fn end(&self) -> usize {
        self.payload_at + self.payload_len
    }
}

/// What is at an offset where a frame should start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameAt {
    /// A whole, valid frame.
    Valid(Frame),
    /// The header holds, the payload does not: the record is damaged but its run and position
    /// are known.
    DamagedPayload(Frame),
    /// No valid frame header here.
    Invalid,
}

/// Parses the frame at `at`, within `buf[..limit]`.
pub fn parse_frame(buf: &[u8], at: usize, limit: usize) -> FrameAt {
    let Some(h) = buf.get(at..at + FRAME_HEADER_LEN) else {
        return FrameAt::Invalid;
    };
    if at + FRAME_HEADER_LEN > limit
        || &h[0..4] != FRAME_MAGIC
        || u32_at(h, 40) != crc32fast::hash(&h[0..40])
    {
        return FrameAt::Invalid;
    }
    let run = RunId(uuid::Uuid::from_bytes(
        h[4..20].try_into().expect("16 bytes"),
    ));
    let payload_len = u32_at(h, 28) as usize;
    let payload_at = at + FRAME_HEADER_LEN;
    let frame = Frame {
        run,
        seq: u64_at(h, 20),
        flags: h[32],
        payload_at,
        payload_len,
    };
    if payload_len > MAX_PAYLOAD || payload_at + payload_len > limit {
        return FrameAt::Invalid;
    }
    if u32_at(h, 36) == crc32fast::hash(&buf[payload_at..payload_at + payload_len]) {
        FrameAt::Valid(frame)
    } else {
        FrameAt::DamagedPayload(frame)
    }
}

/// The next offset in `from..limit` where a frame header with a valid checksum starts.
pub fn find_frame(buf: &[u8], from: usize, limit: usize) -> Option<usize> {
    let mut at = from;
    while at + FRAME_HEADER_LEN <= limit {
        let rel = find_magic(&buf[at..limit], *FRAME_MAGIC)?;
        if parse_frame(buf, at + rel, limit) != FrameAt::Invalid {
            return Some(at + rel);
        }
        at += rel + 1;
    }
    None
}

fn find_magic(hay: &[u8], magic: [u8; 4]) -> Option<usize> {
    hay.windows(4).position(|w| w == magic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(number: u64, frames: &[(RunId, u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
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
        finish_batch(&mut out, start, number);
        out
    }

    #[test]
    fn a_batch_round_trips_and_every_flipped_byte_is_caught() {
        let run = RunId::new();
        let bytes = batch(7, &[(run, 0, b"hello"), (run, 1, b"world!")]);
        let b = parse_batch(&bytes, 0).unwrap();
        assert_eq!(b.number, 7);
        assert_eq!(b.end(), bytes.len());
        let FrameAt::Valid(f) = parse_frame(&bytes, b.body_at, b.end()) else {
            panic!("first frame");
        };
        assert_eq!((f.run, f.seq), (run, 0));
        assert_eq!(&bytes[f.payload_at..f.end()], b"hello");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert_eq!(parse_batch(&bad, 0), None, "flip at {i} not caught");
        }
    }

    #[test]
    fn a_damaged_payload_still_names_its_run_and_position() {
        let run = RunId::new();
        let mut bytes = batch(1, &[(run, 4, b"payload")]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let FrameAt::DamagedPayload(f) = parse_frame(&bytes, BATCH_HEADER_LEN, bytes.len()) else {
            panic!("expected a damaged payload");
        };
        assert_eq!((f.run, f.seq), (run, 4));
    }

    #[test]
    fn the_scanner_resyncs_past_garbage() {
        let run = RunId::new();
        let mut buf = vec![0xAB; 37];
        let good = batch(3, &[(run, 0, b"x")]);
        buf.extend_from_slice(&good);
        let (at, b) = find_batch(&buf, 0).unwrap();
        assert_eq!((at, b.number), (37, 3));
        assert_eq!(find_frame(&buf, 0, buf.len()), Some(37 + BATCH_HEADER_LEN));
    }

    #[test]
    fn segment_headers_check_number_and_checksum() {
        let h = segment_header(5);
        assert!(check_segment_header(&h, 5).is_ok());
        assert!(check_segment_header(&h, 6).is_err());
        let mut bad = h;
        bad[9] ^= 1;
        assert!(check_segment_header(&bad, 5).is_err());
    }
}
