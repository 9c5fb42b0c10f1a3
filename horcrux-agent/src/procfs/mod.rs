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
    /// Always fully initialised (its length is its size), so reads need no zeroing.
    buffer: Vec<u8>,
}

impl TextReader {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            buffer: vec![0; 64 * 1024],
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
        let file = std::fs::File::open(path);
        self.read_file(file, || path.to_owned(), parse)
    }

    /// Reads `name` in the open directory `dir` (found at `dir_path`): one path
    /// component to resolve instead of a whole path, for the many files of one cgroup.
    pub fn read_at<T>(
        &mut self,
        dir: &std::fs::File,
        dir_path: &Path,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, SourceError> {
        use nix::{fcntl::OFlag, sys::stat::Mode};
        let file = nix::fcntl::openat(dir, name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map(std::fs::File::from)
            .map_err(io::Error::from);
        self.read_file(file, || dir_path.join(name), parse)
    }

    fn read_file<T>(
        &mut self,
        file: io::Result<std::fs::File>,
        path: impl Fn() -> PathBuf,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, SourceError> {
        let length = file
            .and_then(|file| read_until_eof(file, &mut self.buffer))
            .map_err(|source| SourceError::Io {
                path: path(),
                source,
            })?;
        let text =
            std::str::from_utf8(&self.buffer[..length]).map_err(|error| SourceError::Parse {
                path: path(),
                source: ParseError::new(0, format!("not UTF-8: {error}")),
            })?;
        parse(text).map_err(|source| SourceError::Parse {
            path: path(),
            source,
        })
    }
}

/// Reads to end of file with plain `read` calls, growing `buffer` when full; returns
/// the length read. (`Read::read_to_string` first asks for the file's size and
/// position: two more syscalls per file, which pseudo-files answer with 0 anyway.)
fn read_until_eof(mut file: std::fs::File, buffer: &mut Vec<u8>) -> io::Result<usize> {
    use std::io::Read;
    let mut length = 0;
    loop {
        if length == buffer.len() {
            buffer.resize(buffer.len() * 2, 0);
        }
        match file.read(&mut buffer[length..]) {
            Ok(0) => return Ok(length),
            Ok(count) => length += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
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
