//! The node's models directory (`[models]`): where capability `models`
//! stores model files, under a size cap, written only through
//! [`ModelStore::begin`].
//!
//! A file is written as `.partial/<name>.<sha256>` while its SHA-256 is
//! computed; [`ModelWrite::finish`] fsyncs it and renames it to `<name>`
//! (atomically replacing an older file of that name) only when the digest
//! matches the declared one, and deletes it otherwise. A download dropped
//! before `finish` leaves its partial file, and the next `begin` of the
//! same name and digest re-hashes it and resumes after it. A partial file
//! of the same name with another digest is superseded and deleted. Every
//! byte in the directory, partial files included, counts against the cap.

mod host;

pub use host::ActiveDownload;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Where partial files live, inside the models directory.
const PARTIAL_DIR: &str = ".partial";
/// Longest model name, bytes (leaves room for the digest in partial names).
const MAX_NAME: usize = 160;

/// Why a models call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The name or digest is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The cap would be passed; bytes still free.
    #[error("the models directory has {0} bytes free (models.max_size)")]
    NoSpace(u64),
    /// The content's digest is not the declared one.
    #[error("sha256 mismatch: the content hashes to {0}; nothing was kept")]
    HashMismatch(String),
    /// Another job is writing the name.
    #[error("model {0:?} is being written by another job")]
    Busy(String),
    /// A filesystem error.
    #[error("{0}")]
    Io(String),
}

fn io_error(what: &str, path: &Path, err: std::io::Error) -> ModelError {
    ModelError::Io(format!("cannot {what} {}: {err}", path.display()))
}

/// A model file, stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its name in the directory.
    pub name: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Size, bytes.
    pub bytes: u64,
}

/// The models directory and its cap.
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
    max_bytes: u64,
    /// Names being written → bytes written since their `begin`.
    writing: Mutex<HashMap<String, u64>>,
}

impl ModelStore {
    /// The store in `dir` (created on first use), holding at most
    /// `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> ModelStore {
        ModelStore {
            dir,
            max_bytes,
            writing: Mutex::default(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Start or resume writing `name` with content digest `sha256`; `size`
    /// (when known) is checked against the space left at once. Blocking
    /// (it re-hashes a partial file): call it off the async threads.
    pub fn begin(self: &Arc<Self>, name: &str, sha256: &str, size: Option<u64>) -> Result<ModelWrite, ModelError> {
        check_name(name)?;
        let digest = parse_digest(sha256)?;
        let hex = hex::encode(digest);
        {
            let mut writing = self.writing.lock().expect("models lock poisoned");
            if writing.contains_key(name) {
                return Err(ModelError::Busy(name.to_string()));
            }
            writing.insert(name.to_string(), 0);
        }
        // From here on, dropping `write` releases the name.
        let mut write = ModelWrite {
            store: Arc::clone(self),
            name: name.to_string(),
            digest,
            partial: self.dir.join(PARTIAL_DIR).join(format!("{name}.{hex}")),
            file: None,
            hasher: Sha256::new(),
            offset: 0,
            others: 0,
        };
        let partials = self.dir.join(PARTIAL_DIR);
        fs::create_dir_all(&partials).map_err(|err| io_error("create", &partials, err))?;
        self.remove_superseded(name, &write.partial)?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&write.partial)
            .map_err(|err| io_error("open", &write.partial, err))?;
        write.offset = hash_into(&mut file, &mut write.hasher).map_err(|err| io_error("read", &write.partial, err))?;
        write.file = Some(file);
        write.others = self.usage()?.saturating_sub(write.offset);
        if let Some(size) = size
            && write.others + size.max(write.offset) > self.max_bytes
        {
            if write.offset == 0 {
                let _ = fs::remove_file(&write.partial);
            }
            return Err(ModelError::NoSpace(write.free(0)));
        }
        Ok(write)
    }

    /// Delete partial files of `name` other than `keep` (another digest).
    fn remove_superseded(&self, name: &str, keep: &Path) -> Result<(), ModelError> {
        let partials = self.dir.join(PARTIAL_DIR);
        let entries = fs::read_dir(&partials).map_err(|err| io_error("list", &partials, err))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let file_name = entry.file_name();
            let superseded = file_name
                .to_str()
                .and_then(|file| file.strip_prefix(name))
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|digest| digest.len() == 64 && !digest.contains('.'));
            if superseded && path != keep {
                tracing::info!(model = name, file = %path.display(), "removing a partial download of another digest");
                fs::remove_file(&path).map_err(|err| io_error("remove", &path, err))?;
            }
        }
        Ok(())
    }

    /// Bytes in the directory (stored and partial files).
    fn usage(&self) -> Result<u64, ModelError> {
        let mut total = 0;
        for dir in [self.dir.clone(), self.dir.join(PARTIAL_DIR)] {
            let entries = fs::read_dir(&dir).map_err(|err| io_error("list", &dir, err))?;
            for entry in entries.flatten() {
                if let Ok(meta) = entry.metadata()
                    && meta.is_file()
                {
                    total += meta.len();
                }
            }
        }
        Ok(total)
    }
}

/// A model file being written (`download` resource).
#[derive(Debug)]
pub struct ModelWrite {
    store: Arc<ModelStore>,
    name: String,
    digest: [u8; 32],
    partial: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    /// Bytes in the partial file.
    offset: u64,
    /// Bytes of everything else in the directory at `begin`.
    others: u64,
}

impl ModelWrite {
    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes stored so far (after a resume: before anything was written).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes free for this file after `more` bytes, counting what other
    /// downloads have written since.
    fn free(&self, more: u64) -> u64 {
        let writing = self.store.writing.lock().expect("models lock poisoned");
        let others_growth: u64 = writing
            .iter()
            .filter(|(name, _)| **name != self.name)
            .map(|(_, grown)| grown)
            .sum();
        self.store
            .max_bytes
            .saturating_sub(self.others + others_growth + self.offset + more)
    }

    /// Append `bytes`. Blocking.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        let size = bytes.len() as u64;
        if self.free(0) < size {
            return Err(ModelError::NoSpace(self.free(0)));
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| ModelError::Io("the download is finished".into()))?;
        file.write_all(bytes)
            .map_err(|err| io_error("write", &self.partial, err))?;
        self.hasher.update(bytes);
        self.offset += size;
        self.set_grown(|grown| grown + size);
        Ok(())
    }

    /// Update what this download has added to the directory since `begin`.
    fn set_grown(&self, update: impl FnOnce(u64) -> u64) {
        if let Some(grown) = self
            .store
            .writing
            .lock()
            .expect("models lock poisoned")
            .get_mut(&self.name)
        {
            *grown = update(*grown);
        }
    }

    /// Forget what was written. Blocking.
    pub fn restart(&mut self) -> Result<(), ModelError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| ModelError::Io("the download is finished".into()))?;
        file.set_len(0)
            .map_err(|err| io_error("truncate", &self.partial, err))?;
        self.hasher = Sha256::new();
        self.offset = 0;
        self.others = self.store.usage()?;
        self.set_grown(|_| 0);
        Ok(())
    }

    /// Check the digest; publish the file under its name, or delete it.
    /// Blocking.
    pub fn finish(&mut self) -> Result<Stored, ModelError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| ModelError::Io("the download is finished".into()))?;
        // Deleted or counted among the directory's files from now on.
        self.set_grown(|_| 0);
        let actual: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if actual != self.digest {
            drop(file);
            fs::remove_file(&self.partial).map_err(|err| io_error("remove", &self.partial, err))?;
            return Err(ModelError::HashMismatch(hex::encode(actual)));
        }
        file.sync_all().map_err(|err| io_error("sync", &self.partial, err))?;
        drop(file);
        let target = self.store.dir.join(&self.name);
        fs::rename(&self.partial, &target).map_err(|err| io_error("rename into place", &target, err))?;
        File::open(&self.store.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|err| io_error("sync", &self.store.dir, err))?;
        Ok(Stored {
            name: self.name.clone(),
            sha256: hex::encode(actual),
            bytes: self.offset,
        })
    }
}

impl Drop for ModelWrite {
    fn drop(&mut self) {
        if let Ok(mut writing) = self.store.writing.lock() {
            writing.remove(&self.name);
        }
    }
}

/// Read `file` from the start into `hasher`; its length.
fn hash_into(file: &mut File, hasher: &mut Sha256) -> std::io::Result<u64> {
    let mut buffer = vec![0; 1 << 20];
    let mut total = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(total);
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
}

/// Model names are plain file names: letters, digits, `.`, `_`, `-`, `+`,
/// not starting with a dot.
fn check_name(name: &str) -> Result<(), ModelError> {
    let plain = name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || b"._-+".contains(&byte));
    if name.is_empty() || name.len() > MAX_NAME || name.starts_with('.') || !plain {
        return Err(ModelError::Invalid(format!(
            "model name {name:?} must be a plain file name of at most {MAX_NAME} letters, digits, `.`, `_`, `-` or `+`, not starting with `.`"
        )));
    }
    Ok(())
}

fn parse_digest(text: &str) -> Result<[u8; 32], ModelError> {
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    let mut digest = [0; 32];
    hex::decode_to_slice(text, &mut digest)
        .map_err(|_| ModelError::Invalid(format!("sha256 {text:?} must be 64 hex digits")))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn names_and_digests_are_checked() {
        for bad in ["", ".hidden", "a/b", "../x", "a b"] {
            assert!(matches!(check_name(bad), Err(ModelError::Invalid(_))), "{bad:?}");
        }
        check_name("llama-3.2-1b.Q4_K_M.gguf").unwrap();
        assert!(parse_digest("abc").is_err());
        assert_eq!(
            parse_digest(&format!("sha256:{}", sha(b"x"))).unwrap().to_vec(),
            Sha256::digest(b"x").to_vec()
        );
    }

    #[test]
    fn a_resumed_write_hashes_what_was_there_and_publishes_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ModelStore::new(dir.path().join("models"), 1 << 20));
        let content = b"weights weights weights";
        let mut first = store.begin("m.bin", &sha(content), Some(content.len() as u64)).unwrap();
        first.write(&content[..10]).unwrap();
        assert!(matches!(
            store.begin("m.bin", &sha(content), None),
            Err(ModelError::Busy(_))
        ));
        drop(first);
        let mut resumed = store.begin("m.bin", &sha(content), None).unwrap();
        assert_eq!(resumed.offset(), 10);
        resumed.write(&content[10..]).unwrap();
        let stored = resumed.finish().unwrap();
        assert_eq!((stored.bytes, stored.sha256), (content.len() as u64, sha(content)));
        assert_eq!(fs::read(dir.path().join("models/m.bin")).unwrap(), content);
        assert_eq!(fs::read_dir(dir.path().join("models/.partial")).unwrap().count(), 0);
    }

    #[test]
    fn a_wrong_digest_or_the_cap_leaves_nothing_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ModelStore::new(dir.path().to_path_buf(), 100));
        let mut write = store.begin("m.bin", &sha(b"expected"), None).unwrap();
        write.write(b"something else").unwrap();
        assert_eq!(write.finish(), Err(ModelError::HashMismatch(sha(b"something else"))));
        assert!(!dir.path().join("m.bin").exists());
        assert_eq!(fs::read_dir(dir.path().join(PARTIAL_DIR)).unwrap().count(), 0);

        assert_eq!(
            store.begin("big", &sha(b"x"), Some(101)).unwrap_err(),
            ModelError::NoSpace(100)
        );
        let mut write = store.begin("big", &sha(b"x"), None).unwrap();
        write.write(&[0; 60]).unwrap();
        assert_eq!(write.write(&[0; 60]), Err(ModelError::NoSpace(40)));
    }
}
