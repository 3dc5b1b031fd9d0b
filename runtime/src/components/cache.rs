//! The on-disk cache of compiled components: `{digest}-{engine}.cwasm`, so
//! the second load of a component (and every load after a restart) is a
//! deserialize (~0.2 ms) instead of a compile (~50 ms).
//!
//! Loading a compiled artifact is `unsafe` in wasmtime: it is native code
//! that is trusted, not validated. The directory is therefore created by the
//! node with mode 0700 and files in it are only ever written by the node
//! itself (temp file + rename, so a crash never leaves half a file under the
//! final name). Never point `sandbox.cache_dir` at a directory others can
//! write.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::digest::Digest;

/// A directory of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    compatibility: String,
}

impl ArtifactCache {
    /// Use (creating it, mode 0700, if needed) `dir` for artifacts of engines
    /// with the given compatibility hash.
    pub fn open(dir: &Path, compatibility: &str) -> std::io::Result<ArtifactCache> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "component cache {} is writable by others (mode {:o}); compiled code loaded from it runs unchecked: chmod 700 it or choose another sandbox.cache_dir",
                    dir.display(),
                    mode & 0o777
                ),
            ));
        }
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            compatibility: compatibility.to_string(),
        })
    }

    /// The file an artifact of `digest` lives in.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}-{}.cwasm", digest.hex(), self.compatibility))
    }

    /// The cached artifact of `digest`, if there is a usable one. A file that
    /// fails to load (truncated, or from another build) is removed so that
    /// it is recompiled and rewritten.
    ///
    /// The file is read into memory rather than mapped: a mapped artifact
    /// that is truncated or rewritten in place while in use would crash the
    /// whole node (SIGBUS), a read copy cannot be affected.
    pub fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        let bytes = fs::read(&path).ok()?;
        // SAFETY: the bytes come from the node's own 0700 cache directory,
        // written only by `store` below from `Component::serialize` of this
        // engine configuration (the name carries the compatibility hash);
        // wasmtime additionally checks the header against the engine.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "discarding unusable compiled component");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Write the compiled form of `component`. Failing to cache is not
    /// fatal: the component still runs, it is just compiled again next time.
    pub fn store(&self, digest: &Digest, component: &Component) {
        let path = self.path(digest);
        let result = component.serialize().map_err(std::io::Error::other).and_then(|bytes| {
            let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
            temp.write_all(&bytes)?;
            temp.as_file().sync_all()?;
            temp.persist(&path).map_err(|err| err.error)?;
            Ok(())
        });
        if let Err(err) = result {
            tracing::warn!(path = %path.display(), error = %err, "could not cache compiled component");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_its_directory_private_and_refuses_one_others_can_write() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let cache = ArtifactCache::open(&dir, "engine").unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(
            cache.path(&Digest::of(b"x")).starts_with(&dir),
            "artifacts live only in it"
        );

        let shared = root.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ArtifactCache::open(&shared, "engine").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("writable by others (mode 777)"), "{err}");
        assert!(err.to_string().contains("chmod 700"), "{err}");
    }

    #[test]
    fn a_damaged_artifact_is_discarded_not_loaded() {
        let root = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(root.path(), "engine").unwrap();
        let digest = Digest::of(b"component");
        fs::write(cache.path(&digest), b"not a compiled component").unwrap();
        let engine = Engine::default();
        assert!(cache.load(&engine, &digest).is_none());
        assert!(!cache.path(&digest).exists(), "removed, to be recompiled");
    }
}
