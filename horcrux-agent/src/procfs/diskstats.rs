//! `/proc/diskstats`: per block device I/O counters (Documentation/admin-guide/iostats.rst).

use super::{ParseError, parse_u64};

/// Sectors in `/proc/diskstats` are always 512 bytes, whatever the device's block size.
pub const SECTOR_BYTES: u64 = 512;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStat {
    pub major: u32,
    pub minor: u32,
    pub name: String,
    pub reads: u64,
    pub reads_merged: u64,
    pub sectors_read: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub writes_merged: u64,
    pub sectors_written: u64,
    pub write_ms: u64,
    pub in_flight: u64,
    /// Milliseconds during which the device had I/O in flight (basis of utilisation).
    pub io_ms: u64,
    pub weighted_io_ms: u64,
    /// Discard and flush columns exist since kernels 4.18 and 5.5.
    pub discards: u64,
    pub sectors_discarded: u64,
    pub flushes: u64,
}

pub fn parse(text: &str) -> Result<Vec<DiskStat>, ParseError> {
    let mut disks = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 14 {
            return Err(ParseError::new(
                number,
                format!("expected at least 14 fields, found {}", fields.len()),
            ));
        }
        let field = |at: usize, what: &str| parse_u64(fields.get(at).copied(), number, what);
        let optional = |at: usize, what: &str| match fields.get(at) {
            None => Ok(0),
            Some(text) => parse_u64(Some(text), number, what),
        };
        let device_number = |at: usize, what: &str| -> Result<u32, ParseError> {
            u32::try_from(field(at, what)?)
                .map_err(|_| ParseError::new(number, format!("{what} out of range")))
        };
        disks.push(DiskStat {
            major: device_number(0, "major")?,
            minor: device_number(1, "minor")?,
            name: fields[2].to_owned(),
            reads: field(3, "reads completed")?,
            reads_merged: field(4, "reads merged")?,
            sectors_read: field(5, "sectors read")?,
            read_ms: field(6, "ms reading")?,
            writes: field(7, "writes completed")?,
            writes_merged: field(8, "writes merged")?,
            sectors_written: field(9, "sectors written")?,
            write_ms: field(10, "ms writing")?,
            in_flight: field(11, "I/Os in progress")?,
            io_ms: field(12, "ms doing I/O")?,
            weighted_io_ms: field(13, "weighted ms doing I/O")?,
            discards: optional(14, "discards completed")?,
            sectors_discarded: optional(16, "sectors discarded")?,
            flushes: optional(18, "flushes completed")?,
        });
    }
    Ok(disks)
}
