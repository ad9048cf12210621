//! SHA-256 of executables, read through `/proc/<pid>/exe` (the inode the
//! process runs, even when the file on disk was replaced or deleted), cached
//! by (device, inode, size, mtime) so a large binary is hashed once, not at
//! every connection.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Larger executables get no `unix:sha256` selector (hashing would stall the caller).
const MAX_HASH_BYTES: u64 = 1 << 30;
/// Cached hashes; the cache is emptied when full (binaries rarely change).
const MAX_CACHED: usize = 1024;

/// What identifies one version of a file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileVersion {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self { dev: meta.dev(), ino: meta.ino(), size: meta.size(), mtime: meta.mtime(), mtime_nsec: meta.mtime_nsec() }
    }
}

#[derive(Debug, Default)]
pub(super) struct HashCache {
    hashes: Mutex<HashMap<FileVersion, String>>,
    computed: AtomicU64,
}

impl HashCache {
    /// Lowercase hex SHA-256 of the file `exe` opens to; `None` when it is
    /// larger than 1 GiB. Errors are the open/read errors.
    pub(super) fn sha256(&self, exe: &Path) -> std::io::Result<Option<String>> {
        let mut file = File::open(exe)?;
        let version = FileVersion::of(&file.metadata()?);
        if version.size > MAX_HASH_BYTES {
            return Ok(None);
        }
        if let Some(hex) = self.hashes.lock().get(&version) {
            return Ok(Some(hex.clone()));
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        let mut total: u64 = 0;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > MAX_HASH_BYTES {
                return Ok(None);
            }
            ctx.update(&buf[..n]);
        }
        let hex = hex::encode(ctx.finish());
        self.computed.fetch_add(1, Ordering::Relaxed);
        // Cache only when the file did not change while it was read.
        if FileVersion::of(&file.metadata()?) == version && total == version.size {
            let mut hashes = self.hashes.lock();
            if hashes.len() >= MAX_CACHED {
                hashes.clear();
            }
            hashes.insert(version, hex.clone());
        }
        Ok(Some(hex))
    }

    /// How many times a file was actually read and hashed.
    pub(super) fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_once_per_file_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"abc").unwrap();
        let cache = HashCache::default();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(cache.sha256(&path).unwrap().as_deref(), Some(abc));
        assert_eq!(cache.sha256(&path).unwrap().as_deref(), Some(abc));
        assert_eq!(cache.computed(), 1, "the second call is served from the cache");
        std::fs::write(&path, b"abcd").unwrap();
        assert_ne!(cache.sha256(&path).unwrap().as_deref(), Some(abc), "a changed file is hashed again");
        assert_eq!(cache.computed(), 2);
        assert!(cache.sha256(&dir.path().join("missing")).is_err());
    }
}
