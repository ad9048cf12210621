//! Files trustmesh writes (keys, tokens, certificates, bundles): whole or not
//! at all — a new file beside the target, synced, then renamed over it — with
//! exactly the mode asked for, whatever the file it replaces had, and never
//! through a symbolic link.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{path} is a symbolic link; refusing to write through it")]
    Symlink { path: PathBuf },
    #[error("{path} is a directory")]
    Directory { path: PathBuf },
}

/// A file only its owner can read (keys, tokens).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write(path, contents, 0o600)
}

/// A file anyone may read (certificates, bundles).
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write(path, contents, 0o644)
}

/// Replaces `path` atomically with `contents` at `mode`.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    check_target(path)?;
    let tmp = temp_path(path);
    create_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        fail(path, e)
    })
}

/// Fails unless [`write`] could replace `path`: it is no symbolic link or
/// directory, and its folder takes a new file. Checked before work whose
/// result would otherwise be lost (a certificate issued, then not saved).
pub fn check_writable(path: &Path) -> Result<(), FileError> {
    check_target(path)?;
    let probe = temp_path(path);
    create_new(&probe, b"", 0o600)?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// Creates `path`, which must not exist, with `contents` (synced) at `mode`.
pub fn create_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let mut f = OpenOptions::new().create_new(true).write(true).mode(mode).open(path).map_err(|e| fail(path, e))?;
    f.write_all(contents).and_then(|()| f.sync_all()).map_err(|e| {
        let _ = fs::remove_file(path);
        fail(path, e)
    })
}

/// A temporary name beside `path`, unique to this process and call, so two
/// processes writing the same file never share one.
pub fn temp_path(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{nanos}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn check_target(path: &Path) -> Result<(), FileError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(FileError::Symlink { path: path.to_path_buf() }),
        Ok(m) if m.is_dir() => Err(FileError::Directory { path: path.to_path_buf() }),
        _ => Ok(()),
    }
}

fn fail(path: &Path, e: std::io::Error) -> FileError {
    FileError::Write { path: path.to_path_buf(), reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_key_written_over_a_readable_file_ends_up_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("svc.key");
        fs::write(&key, b"old").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&key, b"new").unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"new");
        assert_eq!(mode(&key), 0o600);
        write_public(&dir.path().join("svc.pem"), b"cert").unwrap();
        assert_eq!(mode(&dir.path().join("svc.pem")), 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file is left behind");
    }

    #[test]
    fn symbolic_links_directories_and_missing_folders_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, b"keep").unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(matches!(write_private(&link, b"secret"), Err(FileError::Symlink { .. })));
        assert!(matches!(check_writable(&link), Err(FileError::Symlink { .. })));
        assert_eq!(fs::read(&elsewhere).unwrap(), b"keep");
        assert!(matches!(check_writable(dir.path()), Err(FileError::Directory { .. })));
        let missing = dir.path().join("missing/dir/x.pem");
        let err = check_writable(&missing).unwrap_err().to_string();
        assert!(err.contains("missing/dir"), "{err}");
        check_writable(&dir.path().join("fine.pem")).unwrap();
        assert!(!dir.path().join("fine.pem").exists());
    }
}
