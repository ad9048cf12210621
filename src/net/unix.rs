//! The local socket: created in a 0755 folder with mode 0777 (any local
//! process may connect; what it gets is decided by attestation), a stale
//! socket left by a crash is replaced, a live one is never stolen.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket {path} (--socket): another process is listening on it")]
    InUse { path: PathBuf },
    #[error("socket {path} (--socket): the path exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("socket {path} (--socket): {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Fails when `path` could not be bound: something other than a socket is
/// there, or another process listens on it. Checked at start, before any
/// state is written or port bound; [`bind_unix`] checks again.
pub fn check_socket_path(path: &Path) -> Result<(), SocketError> {
    let io = |source| SocketError::Io { path: path.to_path_buf(), source };
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse { path: path.to_path_buf() });
            }
            Ok(())
        }
        Ok(_) => Err(SocketError::NotASocket { path: path.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// Binds the local socket at `path`.
pub fn bind_unix(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |source| SocketError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    check_socket_path(path)?;
    if fs::symlink_metadata(path).is_ok() {
        tracing::info!(path = %path.display(), "removing a stale socket");
        fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o777)).map_err(io)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_replaces_stale_and_refuses_live_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("public/api.sock");
        let live = bind_unix(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o777);
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o755);
        assert!(matches!(bind_unix(&path), Err(SocketError::InUse { .. })));
        drop(live); // the file stays behind, as after a crash
        assert!(path.exists());
        let _again = bind_unix(&path).unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(bind_unix(&file), Err(SocketError::NotASocket { .. })));
    }
}
