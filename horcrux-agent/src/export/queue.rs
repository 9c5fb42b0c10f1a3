//! The disk-backed queue of one push target: records (one per published
//! snapshot) are appended before they are sent, synced to disk once per push
//! interval, and deleted once the receiver has acknowledged them, so a receiver
//! outage or an agent restart loses nothing within the disk budget (a power cut,
//! at most the last push interval).
//!
//! Layout (documented in `docs/export.md`): a directory of segment files
//! `<sequence:020>.seg`, each the 8-byte magic `HXQUEUE1` then checksummed records
//! ([`crate::records`]; the count field holds the record's samples),
//! and a file `cursor` (`<sequence> <offset> <samples consumed in that segment>`)
//! naming the first record not yet acknowledged, replaced atomically. At start-up
//! every segment is checked: a damaged record is skipped up to the next record
//! that checks out (the record magic lets the scan find it), a torn or damaged
//! tail is truncated, and both are counted, never fatal.

use crate::records::{
    self, Flush, HEADER_LEN, Scan, checksum, encode_record, parse_header, rewrite,
};
use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

const SEGMENT_MAGIC: &[u8; 8] = b"HXQUEUE1";
const CURSOR_FILE: &str = "cursor";

/// Where a record starts: a segment's sequence number and a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Records read from the cursor on, to be sent as one request.
#[derive(Debug)]
pub struct Batch {
    pub payloads: Vec<Vec<u8>>,
    pub samples: u64,
    /// Where the queue resumes once this batch is acknowledged.
    pub end: Position,
}

/// What start-up found and what the budget cost, for status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Intact records found in the segments at start-up.
    pub records: u64,
    /// Samples among them not yet acknowledged.
    pub unsent_samples: u64,
    /// Bytes skipped or truncated because they did not check out.
    pub corrupt_bytes: u64,
    /// The cursor file was missing or pointed nowhere: sending restarts at the
    /// oldest segment (a receiver may see some samples twice).
    pub cursor_reset: bool,
}

struct Segment {
    sequence: u64,
    bytes: u64,
    samples: u64,
}

pub struct Queue {
    dir: PathBuf,
    budget: u64,
    segment_limit: u64,
    /// Oldest first; the last one is appended to.
    segments: VecDeque<Segment>,
    writer: File,
    cursor: Position,
    /// Samples before the cursor in the cursor's segment.
    consumed: u64,
    queued_samples: u64,
    queued_bytes: u64,
    /// Appended since the last [`Queue::sync`].
    unsynced: bool,
}

impl Queue {
    /// Opens (or creates, mode 0700) the queue in `dir`: checks every segment,
    /// truncates damaged tails, and starts a new segment to append to.
    pub fn open(dir: &Path, budget: u64) -> io::Result<(Self, Recovery)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut sequences: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                name.to_str()?.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        sequences.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments = VecDeque::new();
        let mut boundaries = Vec::new();
        let mut cursor = read_cursor(dir);
        for sequence in sequences {
            let path = segment_path(dir, sequence);
            let bytes = fs::read(&path)?;
            let mut scan = records::scan(&bytes, SEGMENT_MAGIC);
            recovery.records += scan.records.len() as u64;
            recovery.corrupt_bytes += scan.corrupt_bytes;
            if scan.corrupt_bytes > 0 {
                tracing::warn!(
                    segment = %path.display(),
                    damaged_bytes = scan.corrupt_bytes,
                    intact_records = scan.records.len(),
                    "queue segment damaged; keeping its intact records"
                );
                let (compacted, moved) = compact(&bytes, &scan, cursor.map(|(c, _)| c), sequence);
                rewrite(&path, &compacted, Flush::Durable)?;
                if let (Some((position, _)), Some(offset)) = (cursor.as_mut(), moved) {
                    position.offset = offset;
                }
                scan = records::scan(&compacted, SEGMENT_MAGIC);
            }
            boundaries.push((sequence, scan.records.clone()));
            segments.push_back(Segment {
                sequence,
                bytes: scan.valid_end as u64,
                samples: scan.records.iter().map(|record| record.samples).sum(),
            });
        }
        let cursor = cursor.filter(|(position, _)| {
            boundaries.iter().any(|(sequence, records)| {
                *sequence == position.segment
                    && (records.iter().any(|r| r.offset == position.offset)
                        || records.last().map_or(SEGMENT_MAGIC.len() as u64, |r| r.end)
                            == position.offset)
            })
        });
        let (cursor, consumed) = match cursor {
            Some(found) => found,
            None => {
                recovery.cursor_reset = !segments.is_empty();
                let first = segments.front().map_or(1, |segment| segment.sequence);
                (
                    Position {
                        segment: first,
                        offset: SEGMENT_MAGIC.len() as u64,
                    },
                    0,
                )
            }
        };
        // Segments wholly before the cursor were acknowledged before a crash.
        while segments
            .front()
            .is_some_and(|segment| segment.sequence < cursor.segment)
        {
            if let Some(segment) = segments.pop_front() {
                remove_segment(dir, segment.sequence);
            }
        }
        for (sequence, records) in &boundaries {
            recovery.unsent_samples += records
                .iter()
                .filter(|record| {
                    Position {
                        segment: *sequence,
                        offset: record.offset,
                    } >= cursor
                })
                .map(|record| record.samples)
                .sum::<u64>();
        }
        let next = segments
            .back()
            .map_or(cursor.segment, |segment| segment.sequence + 1);
        let writer = create_segment(dir, next)?;
        segments.push_back(Segment {
            sequence: next,
            bytes: SEGMENT_MAGIC.len() as u64,
            samples: 0,
        });
        let queued_bytes = segments.iter().map(|segment| segment.bytes).sum();
        let mut queue = Self {
            dir: dir.to_owned(),
            budget,
            segment_limit: segment_limit(budget),
            segments,
            writer,
            cursor,
            consumed,
            queued_samples: recovery.unsent_samples,
            queued_bytes,
            unsynced: false,
        };
        queue.skip_finished_segments()?;
        Ok((queue, recovery))
    }

    /// Appends one record (in the page cache: an agent crash or kill loses
    /// nothing; [`Queue::sync`] makes it survive a power cut too); then, over the
    /// budget, drops the oldest segments and returns how many unsent samples went
    /// with them.
    pub fn append(&mut self, samples: u64, timestamp_ms: i64, payload: &[u8]) -> io::Result<u64> {
        let record = encode_record(samples, timestamp_ms, payload);
        let active = self.segments.back().map_or(0, |segment| segment.bytes);
        if active > SEGMENT_MAGIC.len() as u64 && active + record.len() as u64 > self.segment_limit
        {
            let next = self.segments.back().map_or(1, |s| s.sequence) + 1;
            // A closed segment goes to disk now; appends never reach it again.
            self.writer.sync_data()?;
            self.writer = create_segment(&self.dir, next)?;
            self.segments.push_back(Segment {
                sequence: next,
                bytes: SEGMENT_MAGIC.len() as u64,
                samples: 0,
            });
            self.queued_bytes += SEGMENT_MAGIC.len() as u64;
        }
        self.writer.write_all(&record)?;
        self.unsynced = true;
        if let Some(segment) = self.segments.back_mut() {
            segment.bytes += record.len() as u64;
            segment.samples += samples;
        }
        self.queued_bytes += record.len() as u64;
        self.queued_samples += samples;
        let mut dropped = 0;
        while self.queued_bytes > self.budget && self.segments.len() > 1 {
            dropped += self.drop_oldest()?;
        }
        Ok(dropped)
    }

    /// Up to `max_bytes` of payloads from the cursor on (at least one record when
    /// any is queued), without consuming them.
    pub fn peek(&mut self, max_bytes: usize) -> io::Result<Option<Batch>> {
        self.skip_finished_segments()?;
        let Some(segment) = self.segments.front() else {
            return Ok(None);
        };
        if self.cursor.offset >= segment.bytes {
            return Ok(None);
        }
        let mut file = File::open(segment_path(&self.dir, segment.sequence))?;
        file.seek(SeekFrom::Start(self.cursor.offset))?;
        let mut reader = io::BufReader::new(file.take(segment.bytes - self.cursor.offset));
        let mut batch = Batch {
            payloads: Vec::new(),
            samples: 0,
            end: self.cursor,
        };
        let mut size = 0;
        let mut header = [0u8; HEADER_LEN];
        while size < max_bytes && reader.read_exact(&mut header).is_ok() {
            let Some(parsed) = parse_header(&header) else {
                break;
            };
            let mut payload = vec![0; parsed.length];
            reader.read_exact(&mut payload)?;
            if checksum(&header, &payload) != parsed.crc {
                break;
            }
            size += payload.len();
            batch.samples += parsed.samples;
            batch.end.offset += (HEADER_LEN + payload.len()) as u64;
            batch.payloads.push(payload);
        }
        if batch.payloads.is_empty() {
            // Damaged after start-up (a disk error): give up the rest of the segment.
            tracing::warn!(
                segment = segment.sequence,
                "queue record unreadable; skipping the rest of its segment"
            );
            let lost = segment.samples.saturating_sub(self.consumed);
            self.queued_samples = self.queued_samples.saturating_sub(lost);
            self.cursor.offset = segment.bytes;
            self.consumed = segment.samples;
            return self.peek(max_bytes);
        }
        Ok(Some(batch))
    }

    /// The batch was delivered (or refused for good): moves the cursor past it and
    /// deletes the segments it finished.
    pub fn acknowledge(&mut self, batch: &Batch) -> io::Result<()> {
        self.cursor = batch.end;
        self.consumed += batch.samples;
        self.queued_samples = self.queued_samples.saturating_sub(batch.samples);
        self.skip_finished_segments()?;
        write_cursor(&self.dir, self.cursor, self.consumed)
    }

    /// Flushes what was appended since the last sync to the disk (once per push
    /// interval: a disk flush per collection costs more than the rest of the push
    /// path together).
    pub fn sync(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.unsynced) {
            self.writer.sync_data()?;
        }
        Ok(())
    }

    pub fn queued_samples(&self) -> u64 {
        self.queued_samples
    }

    /// Bytes of every segment on disk.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    /// Deletes segments the cursor has passed (all but the one appended to).
    fn skip_finished_segments(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front() else {
                break;
            };
            if front.sequence == self.cursor.segment && self.cursor.offset < front.bytes {
                break;
            }
            if front.sequence > self.cursor.segment {
                self.move_cursor_to(front.sequence);
                break;
            }
            let next = self
                .segments
                .get(1)
                .map_or(front.sequence + 1, |s| s.sequence);
            let removed = front.sequence;
            self.queued_bytes = self.queued_bytes.saturating_sub(front.bytes);
            self.segments.pop_front();
            remove_segment(&self.dir, removed);
            self.move_cursor_to(next);
        }
        Ok(())
    }

    fn move_cursor_to(&mut self, sequence: u64) {
        self.cursor = Position {
            segment: sequence,
            offset: SEGMENT_MAGIC.len() as u64,
        };
        self.consumed = 0;
    }

    /// Deletes the oldest segment; returns its samples not yet sent.
    fn drop_oldest(&mut self) -> io::Result<u64> {
        let Some(oldest) = self.segments.pop_front() else {
            return Ok(0);
        };
        let unsent = if oldest.sequence == self.cursor.segment {
            oldest.samples.saturating_sub(self.consumed)
        } else {
            oldest.samples
        };
        self.queued_bytes = self.queued_bytes.saturating_sub(oldest.bytes);
        self.queued_samples = self.queued_samples.saturating_sub(unsent);
        remove_segment(&self.dir, oldest.sequence);
        if let Some(next) = self.segments.front().map(|segment| segment.sequence)
            && self.cursor.segment < next
        {
            self.move_cursor_to(next);
            write_cursor(&self.dir, self.cursor, self.consumed)?;
        }
        Ok(unsent)
    }
}

/// Segments a quarter of the budget at most (so dropping one frees a quarter),
/// 16 MiB at most, and never smaller than 16 KiB.
fn segment_limit(budget: u64) -> u64 {
    (budget / 4).clamp(16 << 10, 16 << 20)
}

/// A damaged segment's intact records, back to back, and where the cursor (if it
/// is in this segment) lands among them.
fn compact(
    bytes: &[u8],
    scan: &Scan,
    cursor: Option<Position>,
    sequence: u64,
) -> (Vec<u8>, Option<u64>) {
    let mut compacted = SEGMENT_MAGIC.to_vec();
    let mut moved = None;
    for record in &scan.records {
        if cursor.is_some_and(|c| c.segment == sequence && c.offset <= record.offset) {
            moved.get_or_insert(compacted.len() as u64);
        }
        compacted.extend_from_slice(&bytes[record.offset as usize..record.end as usize]);
    }
    if cursor.is_some_and(|c| c.segment == sequence) {
        moved.get_or_insert(compacted.len() as u64);
    }
    (compacted, moved)
}

fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:020}.seg"))
}

fn create_segment(dir: &Path, sequence: u64) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(segment_path(dir, sequence))?;
    file.write_all(SEGMENT_MAGIC)?;
    file.sync_data()?;
    Ok(file)
}

fn remove_segment(dir: &Path, sequence: u64) {
    if let Err(error) = fs::remove_file(segment_path(dir, sequence)) {
        tracing::warn!(sequence, "removing queue segment: {error}");
    }
}

fn read_cursor(dir: &Path) -> Option<(Position, u64)> {
    let text = fs::read_to_string(dir.join(CURSOR_FILE)).ok()?;
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    let position = Position {
        segment: fields.next()?.ok()?,
        offset: fields.next()?.ok()?,
    };
    Some((position, fields.next()?.ok()?))
}

/// Replaced through a rename: a crash leaves the old cursor or the new, never a
/// mix. Not synced: a cursor lost to a power cut means records sent twice, which
/// receivers accept, so it is not worth a disk flush per acknowledgement.
fn write_cursor(dir: &Path, cursor: Position, consumed: u64) -> io::Result<()> {
    rewrite(
        &dir.join(CURSOR_FILE),
        format!("{} {} {consumed}\n", cursor.segment, cursor.offset).as_bytes(),
        Flush::Cached,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(dir: &Path, budget: u64) -> (Queue, Recovery) {
        Queue::open(dir, budget).expect("queue opens")
    }

    fn drain(queue: &mut Queue) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(batch) = queue.peek(1 << 20).expect("peek") {
            queue.acknowledge(&batch).expect("ack");
            out.extend(batch.payloads);
        }
        out
    }

    #[test]
    fn records_survive_a_reopen_and_acknowledged_ones_do_not_return() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut q, _) = queue(dir.path(), 1 << 20);
        for index in 0..10u8 {
            q.append(3, i64::from(index), &[index; 100])
                .expect("append");
        }
        let first = q.peek(250).expect("peek").expect("batch");
        assert_eq!(first.payloads.len(), 3, "stops once max_bytes is reached");
        q.acknowledge(&first).expect("ack");
        drop(q);
        let (mut q, recovery) = queue(dir.path(), 1 << 20);
        assert_eq!(recovery.records, 10);
        assert_eq!(recovery.unsent_samples, 21);
        assert_eq!(q.queued_samples(), 21);
        let rest = drain(&mut q);
        assert_eq!(rest, (3..10u8).map(|i| vec![i; 100]).collect::<Vec<_>>());
        assert_eq!(q.queued_samples(), 0);
    }

    #[test]
    fn over_budget_the_oldest_segments_go_and_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = 64 << 10;
        let (mut q, _) = queue(dir.path(), budget);
        let mut dropped = 0;
        for index in 0..200u32 {
            dropped += q.append(1, i64::from(index), &[7; 1000]).expect("append");
            assert!(q.queued_bytes() <= budget + 1100, "{}", q.queued_bytes());
        }
        assert!(dropped > 100, "{dropped}");
        let left = drain(&mut q).len() as u64;
        assert_eq!(
            left + dropped,
            200,
            "every record is sent or counted as dropped"
        );
    }

    #[test]
    fn damage_is_skipped_and_the_tail_truncated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut q, _) = queue(dir.path(), 1 << 20);
        for index in 0..6u8 {
            q.append(1, 0, &[index; 50]).expect("append");
        }
        drop(q);
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).expect("segment");
        let record = HEADER_LEN + 50;
        bytes[8 + record + 30] ^= 0xff; // the second record's payload
        bytes.truncate(bytes.len() - 20); // a torn last record
        fs::write(&path, &bytes).expect("write");
        let (mut q, recovery) = queue(dir.path(), 1 << 20);
        assert_eq!(recovery.records, 4);
        assert_eq!(recovery.corrupt_bytes, (record + record - 20) as u64);
        let payloads = drain(&mut q);
        assert_eq!(
            payloads.iter().map(|p| p[0]).collect::<Vec<_>>(),
            [0, 2, 3, 4]
        );
    }
}
