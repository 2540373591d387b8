//! The module log: an append-only file of events for the admin (state changes, actions, hook
//! output, refusals), bounded: when it passes `max_bytes` it is renamed to `log.1` (the previous
//! `log.1` is dropped) and a new one starts. `tandem log` reads it through the control socket.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub const DEFAULT_MAX_BYTES: u64 = 4 << 20;

pub struct ModLog {
    path: PathBuf,
    max_bytes: u64,
}

impl ModLog {
    pub fn new(dir: &Path, max_bytes: u64) -> ModLog {
        ModLog { path: dir.join("log"), max_bytes }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line `TIME LEVEL message` (UTC, ms). Errors are reported by tracing only: the
    /// log must never stop the module.
    pub fn append(&self, level: &str, message: &str) {
        if let Err(e) = self.try_append(level, message) {
            tracing::warn!("module log {}: {e}", self.path.display());
        }
    }

    fn try_append(&self, level: &str, message: &str) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        if fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0) >= self.max_bytes {
            fs::rename(&self.path, self.path.with_extension("1"))?;
        }
        let mut f = OpenOptions::new().create(true).append(true).open(&self.path)?;
        // One line per event, whatever the message holds.
        let clean = message.replace('\n', " | ");
        writeln!(f, "{} {level:<5} {clean}", timestamp(SystemTime::now()))
    }

    /// Lines from byte offset `since` (0: the last `tail` lines), and the offset to ask next.
    pub fn read(&self, since: u64, tail: usize) -> std::io::Result<(Vec<String>, u64)> {
        let mut f = match fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        // The file was rotated since the caller's offset: start again from the top.
        let from = if since > len { 0 } else { since };
        f.seek(SeekFrom::Start(from))?;
        let mut text = String::new();
        f.take(len - from).read_to_string(&mut text)?;
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        if since == 0 && lines.len() > tail {
            lines.drain(..lines.len() - tail);
        }
        Ok((lines, len))
    }
}

/// RFC 3339 UTC with milliseconds, without a date crate: civil-from-days (H. Hinnant).
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_723_200_123);
        assert_eq!(timestamp(t), "2026-11-26T20:00:00.123Z");
    }

    #[test]
    fn bounded_and_readable_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = ModLog::new(dir.path(), 200);
        for i in 0..20 {
            log.append("INFO", &format!("event {i}\nsecond line"));
        }
        let (lines, next) = log.read(0, 3).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].contains("event 19 | second line"), "{lines:?}");
        assert!(std::fs::metadata(log.path()).unwrap().len() < 400);
        assert!(dir.path().join("log.1").exists());
        log.append("WARN", "later");
        let (more, _) = log.read(next, 3).unwrap();
        assert_eq!(more.len(), 1);
        assert!(more[0].contains("WARN  later"));
    }
}
