//! Logs: `tracing` to stderr, filtered by `LOG_LEVEL` (the local runtime's
//! variable: `debug`, `info`, ...) or `RUST_LOG` for per-module filters.
//! A running broker also writes them to `broker.log` in the home's logs
//! directory, rotated by size ([`LOG_FILE_BYTES_MAX`], [`LOG_FILES_KEPT`]),
//! so `scout service logs` reads the same file under systemd and launchd.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Size at which `broker.log` is rotated: a day or more of `info` logs of a
/// busy broker, small enough to open in an editor.
pub const LOG_FILE_BYTES_MAX: u64 = 10 * 1024 * 1024;

/// Rotated files kept besides the current one (`broker.log.1` ...
/// `broker.log.4`): with [`LOG_FILE_BYTES_MAX`] the logs never take more
/// than 50 MiB of the home.
pub const LOG_FILES_KEPT: usize = 5;

/// The current log file's name in the logs directory.
pub const LOG_FILE_NAME: &str = "broker.log";

/// Installs the stderr subscriber once; later calls do nothing.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Installs a subscriber that writes to stderr and to the rotated
/// `broker.log` in `logs_dir`. When the file cannot be opened the broker
/// still logs to stderr, and says why once.
pub fn init_with_file(logs_dir: &Path) {
    let file = match RotatingFile::open(logs_dir, LOG_FILE_BYTES_MAX, LOG_FILES_KEPT) {
        Ok(file) => Some(Arc::new(Mutex::new(file))),
        Err(err) => {
            eprintln!(
                "warning: cannot write logs to {}: {err}",
                logs_dir.display()
            );
            None
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(Tee { file })
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

fn filter() -> EnvFilter {
    std::env::var("RUST_LOG")
        .ok()
        .or_else(|| std::env::var("LOG_LEVEL").ok())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Writes each log line to stderr and to the log file.
#[derive(Clone)]
struct Tee {
    file: Option<Arc<Mutex<RotatingFile>>>,
}

impl<'a> MakeWriter<'a> for Tee {
    type Writer = Tee;
    fn make_writer(&'a self) -> Tee {
        self.clone()
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        if let Some(file) = &self.file
            && let Ok(mut file) = file.lock()
        {
            // A full disk must not stop the broker; the line still went to
            // stderr.
            let _ = file.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// An append-only file that is renamed to `NAME.1` (shifting older ones up
/// to `NAME.<kept-1>`, dropping the oldest) before it would pass its size
/// limit.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    bytes_max: u64,
    kept: usize,
}

impl RotatingFile {
    /// Opens (or creates) `dir/broker.log` for appending.
    pub fn open(dir: &Path, bytes_max: u64, kept: usize) -> std::io::Result<RotatingFile> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE_NAME);
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            file,
            size,
            bytes_max,
            kept,
        })
    }

    fn rotated(&self, index: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{index}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        // `kept` counts the current file too, so the highest rotated
        // index is kept - 1; anything at or past it is dropped.
        let highest = self.kept.saturating_sub(1);
        let _ = std::fs::remove_file(self.rotated(highest.max(1)));
        for index in (1..highest).rev() {
            let _ = std::fs::rename(self.rotated(index), self.rotated(index + 1));
        }
        if highest >= 1 {
            std::fs::rename(&self.path, self.rotated(1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Logs can hold agent names and paths: only the user reads them.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.bytes_max {
            self.rotate()?;
        }
        // One line longer than the limit is cut, so no file passes it.
        let len = buf
            .len()
            .min(usize::try_from(self.bytes_max).unwrap_or(usize::MAX));
        self.file.write_all(&buf[..len])?;
        self.size += len as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_named_number_of_bounded_files() {
        let dir = tempfile::tempdir().unwrap();
        const MAX: u64 = 1000;
        const KEPT: usize = 3;
        let mut file = RotatingFile::open(dir.path(), MAX, KEPT).unwrap();
        for line in 0..2000 {
            writeln!(file, "line {line} of the broker's log").unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["broker.log", "broker.log.1", "broker.log.2"]);
        for name in &names {
            let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(size <= MAX, "{name} has {size} bytes");
        }
        let newest = std::fs::read_to_string(dir.path().join("broker.log")).unwrap();
        assert!(newest.ends_with("line 1999 of the broker's log\n"));
        // A reopened file continues, and keeps rotating at the limit.
        drop(file);
        let mut file = RotatingFile::open(dir.path(), MAX, KEPT).unwrap();
        for line in 0..100 {
            writeln!(file, "again {line}").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), KEPT);
    }
}
