//! Data source: the `/proc` filesystem. Each submodule parses one file from text
//! into typed counters; [`TextReader`] reads the files into reused buffers.
//! Parsers never panic: malformed input yields a [`ParseError`] naming the line.

pub mod diskstats;
pub mod loadavg;
pub mod meminfo;
pub mod mountinfo;
pub mod netdev;
pub mod stat;

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

/// A malformed line in a kernel file (1-based line number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl ParseError {
    pub fn new(line: usize, reason: impl Into<String>) -> Self {
        Self {
            line,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// Reading or parsing one source file failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: ParseError },
}

/// Parses an unsigned decimal field, naming the field on failure.
pub(crate) fn parse_u64(field: Option<&str>, line: usize, what: &str) -> Result<u64, ParseError> {
    let text = field.ok_or_else(|| ParseError::new(line, format!("missing field {what}")))?;
    text.parse().map_err(|_| {
        ParseError::new(
            line,
            format!("field {what}: {text:?} is not an unsigned integer"),
        )
    })
}

/// Reads kernel text files (procfs, cgroupfs) into one reused buffer and hands the
/// text to a parser. The root is configurable so tests can point it at fixture trees.
#[derive(Debug)]
pub struct TextReader {
    root: PathBuf,
    buffer: String,
}

impl TextReader {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            buffer: String::with_capacity(64 * 1024),
        }
    }

    /// Reads `relative` below the root (e.g. `"stat"`) and parses it with `parse`.
    pub fn read<T>(
        &mut self,
        relative: &str,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, SourceError> {
        let path = self.root.join(relative);
        self.read_path(&path, parse)
    }

    /// Reads `path` and parses it with `parse`.
    pub fn read_path<T>(
        &mut self,
        path: &Path,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, SourceError> {
        use std::io::Read;
        self.buffer.clear();
        std::fs::File::open(path)
            .and_then(|mut file| file.read_to_string(&mut self.buffer))
            .map_err(|source| SourceError::Io {
                path: path.to_owned(),
                source,
            })?;
        parse(&self.buffer).map_err(|source| SourceError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

impl SourceError {
    pub fn path(&self) -> &Path {
        match self {
            SourceError::Io { path, .. } | SourceError::Parse { path, .. } => path,
        }
    }

    /// The file does not exist (e.g. a cgroup removed between discovery and read).
    pub fn is_not_found(&self) -> bool {
        matches!(self, SourceError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}
