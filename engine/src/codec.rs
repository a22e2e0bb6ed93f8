//! The on-disk form of one event record: framing, checksum, hash chain and format version.
//!
//! Every event log implementation stores records in this form (the in-memory one too), so that the
//! conformance suite exercises the same bytes that reach the disk. The layout is written down in
//! `ARCHITECTURE.md` ("Log format"); bincode is used only here, so that it could be swapped in one
//! file.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{Event, Record, RunId};

/// The encoding version written by this build. Readers accept every version listed in
/// [`decode`]; a new version adds a branch there and never changes an old one.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes before the body: version (1), body length (4), CRC-32 (4), previous hash (32).
pub const HEADER_LEN: usize = 1 + 4 + 4 + 32;

/// What can be wrong with a stored record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the header or the length field promise: a torn or cut record.
    #[error("record is truncated: {needed} bytes needed, {found} stored")]
    Truncated {
        /// Bytes the header says the record has.
        needed: usize,
        /// Bytes actually stored.
        found: usize,
    },
    /// The checksum does not match: the record was damaged or edited.
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x} (record damaged or edited)")]
    Checksum {
        /// Stored CRC-32.
        stored: u32,
        /// CRC-32 of the bytes found.
        computed: u32,
    },
    /// The record was written by a newer (or unknown) encoding.
    #[error("unknown record format version {0} (this build reads version {FORMAT_VERSION}); upgrade waymark")]
    UnknownVersion(u8),
    /// The bytes pass the checksum but do not decode as an event.
    #[error("record body does not decode: {0}")]
    Body(String),
    /// The event could not be encoded.
    #[error("event does not encode: {0}")]
    Encode(String),
}

#[derive(Serialize, Deserialize)]
struct BodyV1 {
    at_millis: i64,
    event: Event,
}

/// [`BodyV1`] borrowing its event, for encoding (serde writes a reference as the value itself,
/// so the bytes are the same).
#[derive(Serialize)]
struct BodyV1Ref<'a> {
    at_millis: i64,
    event: &'a Event,
}

/// Encodes an event as a stored record, returning the bytes and the record's hash.
pub fn encode(
    seq: u64,
    at: DateTime<Utc>,
    prev_hash: &[u8; 32],
    event: &Event,
) -> Result<(Vec<u8>, [u8; 32]), Error> {
    // The header, then the body encoded in place after it; length and CRC filled in after.
    let mut out = Vec::with_capacity(HEADER_LEN + 128);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(prev_hash);
    bincode::serde::encode_into_std_write(
        BodyV1Ref {
            at_millis: at.timestamp_millis(),
            event,
        },
        &mut out,
        bincode::config::standard(),
    )
    .map_err(|e| Error::Encode(e.to_string()))?;
    let body_len = u32::try_from(out.len() - HEADER_LEN)
        .map_err(|_| Error::Encode("the event encodes to more than 4 GiB".into()))?;
    out[1..5].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32fast::hash(&out[9..]);
    out[5..9].copy_from_slice(&crc.to_le_bytes());
    let hash = chain_hash(prev_hash, seq, &out[HEADER_LEN..]);
    Ok((out, hash))
}

/// The hash chain link: SHA-256 over the previous hash, the sequence number and the body.
pub fn chain_hash(prev_hash: &[u8; 32], seq: u64, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(seq.to_be_bytes());
    h.update(body);
    h.finalize().into()
}

/// Decodes a stored record. Checks framing and checksum; the caller checks the chain
/// (`record.prev_hash` against the previous record's `hash`).
pub fn decode(run: RunId, seq: u64, bytes: &[u8]) -> Result<Record, Error> {
    if bytes.is_empty() {
        return Err(Error::Truncated {
            needed: HEADER_LEN,
            found: 0,
        });
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(Error::UnknownVersion(bytes[0]));
    }
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated {
            needed: HEADER_LEN,
            found: bytes.len(),
        });
    }
    let len = u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize;
    if bytes.len() != HEADER_LEN + len {
        return Err(Error::Truncated {
            needed: HEADER_LEN + len,
            found: bytes.len(),
        });
    }
    let stored = u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&bytes[9..]);
    if stored != computed {
        return Err(Error::Checksum { stored, computed });
    }
    let prev_hash: [u8; 32] = bytes[9..HEADER_LEN].try_into().expect("32 bytes");
    let body = &bytes[HEADER_LEN..];
    let (decoded, _): (BodyV1, usize) =
        bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map_err(|e| Error::Body(e.to_string()))?;
    let at = Utc
        .timestamp_millis_opt(decoded.at_millis)
        .single()
        .ok_or_else(|| Error::Body(format!("bad timestamp {}", decoded.at_millis)))?;
    Ok(Record {
        run,
        seq,
        at,
        prev_hash,
        hash: chain_hash(&prev_hash, seq, body),
        event: decoded.event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;

    fn sample() -> Event {
        Event::StepCompleted {
            step: crate::event::StepRef::Workflow(3),
            output: Payload("{\"replicas\":2}".into()),
        }
    }

    #[test]
    fn round_trip_keeps_event_and_chain() {
        let run = RunId::new();
        let at = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
        let (bytes, hash) = encode(7, at, &[9; 32], &sample()).unwrap();
        let rec = decode(run, 7, &bytes).unwrap();
        assert_eq!(rec.event, sample());
        assert_eq!(rec.prev_hash, [9; 32]);
        assert_eq!(rec.hash, hash);
        assert_eq!(rec.at, at);
    }

    #[test]
    fn flipped_bit_is_a_checksum_error() {
        let (mut bytes, _) = encode(
            0,
            crate::clock::Clock::now(&crate::clock::SystemClock),
            &[0; 32],
            &sample(),
        )
        .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            decode(RunId::new(), 0, &bytes),
            Err(Error::Checksum { .. })
        ));
    }

    #[test]
    fn cut_record_is_truncated() {
        let (bytes, _) = encode(
            0,
            crate::clock::Clock::now(&crate::clock::SystemClock),
            &[0; 32],
            &sample(),
        )
        .unwrap();
        let err = decode(RunId::new(), 0, &bytes[..bytes.len() - 3]).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
    }

    #[test]
    fn unknown_version_is_named() {
        let (mut bytes, _) = encode(
            0,
            crate::clock::Clock::now(&crate::clock::SystemClock),
            &[0; 32],
            &sample(),
        )
        .unwrap();
        bytes[0] = 99;
        assert_eq!(
            decode(RunId::new(), 0, &bytes),
            Err(Error::UnknownVersion(99))
        );
    }

    #[test]
    fn the_body_is_bincode_of_the_owned_body() {
        // Written from a borrowed event; read back (and by older builds) as the owned one.
        let at = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
        let (bytes, _) = encode(0, at, &[0; 32], &sample()).unwrap();
        let owned = bincode::serde::encode_to_vec(
            BodyV1 {
                at_millis: at.timestamp_millis(),
                event: sample(),
            },
            bincode::config::standard(),
        )
        .unwrap();
        assert_eq!(&bytes[HEADER_LEN..], owned.as_slice());
        assert_eq!(
            u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize,
            owned.len()
        );
    }

    #[test]
    fn same_body_different_seq_hashes_differently() {
        let at = crate::clock::Clock::now(&crate::clock::SystemClock);
        let (b1, h1) = encode(1, at, &[0; 32], &sample()).unwrap();
        let (b2, h2) = encode(2, at, &[0; 32], &sample()).unwrap();
        assert_eq!(b1, b2, "the body does not carry the sequence number");
        assert_ne!(h1, h2, "the chain hash does");
    }
}
