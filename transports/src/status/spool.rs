//! The HTTP publisher's on-disk spool: status messages that could not be
//! delivered, one JSON document per line (JSONL), oldest first, capped in
//! size. When the cap is reached the oldest lines are dropped (and counted)
//! to make room. Lines are consumed from the front by advancing an offset;
//! the file is compacted when it is emptied or must shrink.
//!
//! The offset lives in memory: after a restart the spool is replayed from
//! its start, so a message may be delivered twice, never lost.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A size-capped JSONL spool file.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
    /// Bytes of the file already delivered.
    offset: u64,
    /// Lines dropped to respect the cap, since start.
    dropped: u64,
}

impl Spool {
    /// Open (creating the directory if needed) the spool at `path`.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Spool> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        Ok(Spool {
            path: path.to_path_buf(),
            max_bytes,
            offset: 0,
            dropped: 0,
        })
    }

    /// Lines dropped because the spool was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes waiting in the spool.
    pub fn pending_bytes(&self) -> u64 {
        fs::metadata(&self.path)
            .map(|meta| meta.len().saturating_sub(self.offset))
            .unwrap_or(0)
    }

    /// Whether nothing waits in the spool.
    pub fn is_empty(&self) -> bool {
        self.pending_bytes() == 0
    }

    /// Append `line` (one JSON document, no newline), dropping the oldest
    /// lines first if the cap would be exceeded. A line larger than the
    /// whole cap is dropped itself.
    pub fn push(&mut self, line: &str) -> io::Result<()> {
        let needed = line.len() as u64 + 1;
        if needed > self.max_bytes {
            self.dropped += 1;
            return Ok(());
        }
        if self.pending_bytes() + needed > self.max_bytes {
            self.shrink_to(self.max_bytes - needed)?;
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.write_all(line.as_bytes())?;
        file.write_all(b"\n")?;
        Ok(())
    }

    /// The oldest waiting line.
    pub fn peek(&self) -> io::Result<Option<String>> {
        let Ok(mut file) = File::open(&self.path) else {
            return Ok(None);
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut line = String::new();
        if BufReader::new(file).read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches('\n').to_string()))
    }

    /// Mark the oldest line (as returned by [`Spool::peek`]) delivered.
    pub fn pop(&mut self, line: &str) -> io::Result<()> {
        self.offset += line.len() as u64 + 1;
        if self.pending_bytes() == 0 {
            // Everything delivered: start the file over.
            let _ = fs::remove_file(&self.path);
            self.offset = 0;
        }
        Ok(())
    }

    /// Drop the oldest lines until at most `budget` bytes wait, rewriting
    /// the file without the delivered and dropped part.
    fn shrink_to(&mut self, budget: u64) -> io::Result<()> {
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let lines: Vec<String> = BufReader::new(file).lines().collect::<io::Result<_>>()?;
        let mut kept_bytes: u64 = lines.iter().map(|line| line.len() as u64 + 1).sum();
        let mut start = 0;
        while kept_bytes > budget && start < lines.len() {
            kept_bytes -= lines[start].len() as u64 + 1;
            start += 1;
        }
        self.dropped += start as u64;
        let temp = self.path.with_extension("compact");
        {
            let mut out = File::create(&temp)?;
            for line in &lines[start..] {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.sync_all()?;
        }
        fs::rename(&temp, &self.path)?;
        self.offset = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_with_a_cap_that_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&dir.path().join("spool/status.jsonl"), 30).unwrap();
        assert_eq!(spool.peek().unwrap(), None);
        for n in 0..5 {
            spool.push(&format!(r#"{{"n":{n}}}"#)).unwrap(); // 7 bytes + newline each
        }
        // 5 × 8 bytes > 30: the two oldest were dropped.
        assert_eq!(spool.dropped(), 2);
        let mut seen = Vec::new();
        while let Some(line) = spool.peek().unwrap() {
            spool.pop(&line).unwrap();
            seen.push(line);
        }
        assert_eq!(seen, [r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#]);
        assert!(spool.is_empty());
        spool.push(&"x".repeat(64)).unwrap();
        assert_eq!(spool.dropped(), 3, "a line larger than the cap is dropped itself");
    }

    #[test]
    fn survives_a_restart_by_replaying_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.jsonl");
        let mut spool = Spool::open(&path, 1024).unwrap();
        spool.push("a").unwrap();
        spool.push("b").unwrap();
        let reopened = Spool::open(&path, 1024).unwrap();
        assert_eq!(reopened.peek().unwrap().as_deref(), Some("a"));
    }
}
