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
    io,
    path::{Path, PathBuf},
};

/// A malformed line in a kernel file (1-based line number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
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
    /// How much of `buffer` the last [`TextReader::load`] filled.
    loaded: usize,
}

impl TextReader {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            buffer: vec![0; 64 * 1024],
            loaded: 0,
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
        let io_error = |source| SourceError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_error)?;
        self.load(&file).map_err(io_error)?;
        self.parse_loaded(|| path.to_owned(), parse)
    }

    /// Reads all of `file` from its start into the buffer. Reading a kernel
    /// pseudo-file at offset 0 makes the kernel generate it afresh, so a file kept
    /// open can be re-read with this, one syscall per read.
    pub fn load(&mut self, file: &std::fs::File) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut length = 0;
        loop {
            if length == self.buffer.len() {
                self.buffer.resize(self.buffer.len() * 2, 0);
            }
            match file.read_at(&mut self.buffer[length..], length as u64) {
                Ok(0) => break,
                Ok(count) => {
                    length += count;
                    // Pseudo-files fill the buffer while they have data: a short read is the end.
                    if length < self.buffer.len() {
                        break;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.loaded = length;
        Ok(())
    }

    /// Parses what [`Self::load`] read; `path` names the file in errors.
    pub fn parse_loaded<T>(
        &self,
        path: impl Fn() -> PathBuf,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, SourceError> {
        let parse_error = |source| SourceError::Parse {
            path: path(),
            source,
        };
        // Users can put any bytes in what the kernel echoes (mount points, process
        // names): a stray byte becomes U+FFFD instead of failing the whole file.
        let text = String::from_utf8_lossy(&self.buffer[..self.loaded]);
        parse(&text).map_err(parse_error)
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
