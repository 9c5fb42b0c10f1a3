//! Checksummed record files, shared by the push queue ([`crate::export::queue`])
//! and the history file ([`crate::history`]): an 8-byte file magic, then records
//! of
//!
//! | bytes | field |
//! |---|---|
//! | 4 | record magic `0x48585231` (little-endian, like every field) |
//! | 4 | payload length |
//! | 4 | a count (samples in a queue record, points in a history record) |
//! | 8 | a timestamp, Unix milliseconds |
//! | 4 | CRC-32 (IEEE) of the three fields above and the payload |
//! | n | payload |
//!
//! A reader finds every intact record and skips damage up to the next record that
//! checks out (the record magic lets it resynchronise).

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

const RECORD_MAGIC: u32 = 0x4858_5231;
pub const HEADER_LEN: usize = 24;
/// A record longer than this is damage, not data.
const MAX_RECORD: usize = 64 << 20;

pub fn encode_record(samples: u64, timestamp_ms: i64, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_LEN + payload.len());
    record.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&(samples.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    record.extend_from_slice(&timestamp_ms.to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    let crc = checksum(&record, payload);
    record[20..24].copy_from_slice(&crc.to_le_bytes());
    record.extend_from_slice(payload);
    record
}

pub struct Header {
    pub length: usize,
    pub samples: u64,
    pub crc: u32,
}

pub fn parse_header(header: &[u8]) -> Option<Header> {
    let field = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(header.get(at..at + 4)?.try_into().ok()?))
    };
    if field(0)? != RECORD_MAGIC {
        return None;
    }
    let length = field(4)? as usize;
    (length <= MAX_RECORD).then_some(Header {
        length,
        samples: u64::from(field(8)?),
        crc: field(20)?,
    })
}

/// CRC-32 of the header's length, samples and timestamp fields and the payload.
pub fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..20]);
    hasher.update(payload);
    hasher.finalize()
}

#[derive(Debug, Clone)]
pub struct RecordSpan {
    pub offset: u64,
    pub end: u64,
    pub samples: u64,
}

#[derive(Debug)]
pub struct Scan {
    pub records: Vec<RecordSpan>,
    /// Where the last intact record ends: bytes after it are a damaged tail.
    pub valid_end: usize,
    /// Damaged bytes: skipped between intact records, plus the tail.
    pub corrupt_bytes: u64,
}

/// Checks a whole file: every intact record, resynchronising on the record magic
/// after damage. A file without its 8-byte `file_magic` holds nothing.
pub fn scan(bytes: &[u8], file_magic: &[u8; 8]) -> Scan {
    let mut records = Vec::new();
    let start = file_magic.len();
    if bytes.get(..start) != Some(file_magic) {
        return Scan {
            records,
            valid_end: 0,
            corrupt_bytes: bytes.len() as u64,
        };
    }
    let mut at = start;
    let mut valid_end = start;
    let mut corrupt_bytes = 0;
    while at + HEADER_LEN <= bytes.len() {
        match record_at(bytes, at) {
            Some(end) => {
                corrupt_bytes += (at - valid_end) as u64;
                let samples = parse_header(&bytes[at..]).map_or(0, |header| header.samples);
                records.push(RecordSpan {
                    offset: at as u64,
                    end: end as u64,
                    samples,
                });
                at = end;
                valid_end = end;
            }
            None => at += 1,
        }
    }
    corrupt_bytes += (bytes.len() - valid_end) as u64;
    Scan {
        records,
        valid_end,
        corrupt_bytes,
    }
}

/// The end of the intact record at `at`, if there is one.
fn record_at(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at + HEADER_LEN)?;
    let parsed = parse_header(header)?;
    let end = at + HEADER_LEN + parsed.length;
    let payload = bytes.get(at + HEADER_LEN..end)?;
    (checksum(header, payload) == parsed.crc).then_some(end)
}

/// Replaces a file through a temporary one and a rename.
pub fn rewrite(path: &Path, bytes: &[u8], flush: Flush) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    if flush == Flush::Durable {
        file.sync_data()?;
    }
    fs::rename(temporary, path)
}

/// Whether a rewrite waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Synced before the rename: survives a power loss.
    Durable,
    /// Left to the page cache: survives a crash of the agent, not of the machine
    /// (for what is cheap to lose, such as the queue's cursor).
    Cached,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_never_panics_on_garbage() {
        let magic = b"HXTEST01";
        let mut bytes = magic.to_vec();
        bytes.extend(RECORD_MAGIC.to_le_bytes());
        bytes.extend(u32::MAX.to_le_bytes());
        bytes.extend([0xff; 40]);
        let checked = scan(&bytes, magic);
        assert!(checked.records.is_empty());
        assert_eq!(checked.valid_end, magic.len());
        assert!(scan(b"short", magic).records.is_empty());
    }

    #[test]
    fn records_round_trip_and_damage_is_skipped() {
        let magic = b"HXTEST01";
        let mut bytes = magic.to_vec();
        for index in 0..3u8 {
            bytes.extend(encode_record(u64::from(index), 7, &[index; 30]));
        }
        bytes[magic.len() + HEADER_LEN + 30 + 10] ^= 1; // the second record's header
        let scan = scan(&bytes, magic);
        assert_eq!(
            scan.records.iter().map(|r| r.samples).collect::<Vec<_>>(),
            [0, 2]
        );
        assert_eq!(scan.corrupt_bytes, (HEADER_LEN + 30) as u64);
    }
}
