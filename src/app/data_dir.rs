//! The data directory and the key-encryption key: the lock that keeps one
//! process per directory, and the decision, made before anything is written,
//! whether to load the PKI, create one, or stop.
//!
//! Invariant: a PKI is created only where none was: an empty database with
//! no key-encryption key (or one the operator provisioned with `--kek-file`,
//! as replicas sharing a database do) and none of the files an earlier PKI
//! leaves in the data directory. Every other inconsistency stops the start
//! with one line naming the files, and nothing is written.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::ca::Kek;
use crate::files;

/// Files a PKI leaves in its data directory besides the database and the KEK.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const BUNDLE_FILE: &str = "ca-bundle.pem";

/// Holds the data directory for this process; released when dropped.
pub struct DataDirLock {
    _file: File,
}

/// Creates the data directory (0700) if needed and takes its lock.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<DataDirLock> {
    match fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => bail!("data directory {} exists and is not a directory (--data-dir)", dir.display()),
        Ok(_) => {}
        Err(_) => {
            fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data directory {} (--data-dir)", dir.display()))?;
            tracing::info!(path = %dir.display(), "data directory created");
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set mode 0700 on data directory {} (--data-dir)", dir.display()))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write in data directory {} (--data-dir)", dir.display()))?;
    if file.try_lock().is_err() {
        bail!(
            "another trustmesh process is using data directory {} (lock held on {}); stop it first",
            dir.display(),
            path.display()
        );
    }
    Ok(DataDirLock { _file: file })
}

/// Reads the KEK (which must be 0600).
pub fn load_kek(path: &Path) -> anyhow::Result<Kek> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read key-encryption key {}", path.display()))?;
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("key-encryption key {} has mode {mode:o}; it must be 0600", path.display());
    }
    Kek::from_file_contents(&text).with_context(|| format!("key-encryption key {}", path.display()))
}

/// Creates the KEK (0600). Replicas starting together may share one KEK
/// file: only the first one's key is ever written; the others read it.
pub fn create_kek(path: &Path) -> anyhow::Result<Kek> {
    let (kek, text) = Kek::generate(&ring::rand::SystemRandom::new())?;
    let tmp = files::temp_path(path);
    files::create_new(&tmp, text.as_bytes(), 0o600)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "key-encryption key created");
            Ok(kek)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_kek(path),
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// What start-up found before it wrote anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub database_has_pki: bool,
    pub kek_exists: bool,
    /// `--kek-file` was given: the KEK is the operator's, not ours to make.
    pub kek_provisioned: bool,
    /// Files of an earlier PKI present in the data directory.
    pub earlier_files: Vec<&'static str>,
}

/// What start-up does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Load,
    /// Create the hierarchy, with a new KEK unless one was provisioned.
    Create {
        new_kek: bool,
    },
    /// Stop with this reason; nothing was written.
    Refuse(String),
}

/// Where the pieces are, for messages.
pub struct Places<'a> {
    pub data_dir: &'a Path,
    pub database: &'a str,
    pub kek: &'a Path,
}

/// The decision, a pure function of what was found.
pub fn plan(found: &Found, at: &Places<'_>) -> Plan {
    let (db, kek, dir) = (at.database, at.kek.display(), at.data_dir.display());
    match (found.database_has_pki, found.kek_exists) {
        (true, true) => Plan::Load,
        (true, false) => Plan::Refuse(format!(
            "the database {db} holds a PKI but its key-encryption key {kek} is missing: restore that file \
             (a new key could not open the CA keys)"
        )),
        (false, _) if !found.earlier_files.is_empty() => Plan::Refuse(format!(
            "the database {db} holds no PKI, but {} in {dir} belong to one: restore the database, or move \
             those files away to create a new PKI",
            found.earlier_files.join(" and ")
        )),
        (false, true) if !found.kek_provisioned => Plan::Refuse(format!(
            "the database {db} holds no PKI, but the key-encryption key {kek} exists: restore the database, \
             or remove the key to create a new PKI"
        )),
        (false, kek_exists) => Plan::Create { new_kek: !kek_exists },
    }
}

/// The files of an earlier PKI in `data_dir`.
pub fn earlier_files(data_dir: &Path) -> Vec<&'static str> {
    [ADMIN_TOKEN_FILE, BUNDLE_FILE].into_iter().filter(|f| fs::symlink_metadata(data_dir.join(f)).is_ok()).collect()
}

/// Whether the SQLite file at `url` is absent or empty (so it holds no PKI,
/// and opening it would create it); `None` for other databases or a file
/// with content, which must be opened to tell.
pub fn sqlite_file_is_empty(url: &str) -> Option<bool> {
    let path = PathBuf::from(url.strip_prefix("sqlite://")?);
    match fs::metadata(&path) {
        Ok(m) if m.len() > 0 => None,
        Ok(_) => Some(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(true),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(database_has_pki: bool, kek_exists: bool, kek_provisioned: bool, earlier: &[&'static str]) -> Found {
        Found { database_has_pki, kek_exists, kek_provisioned, earlier_files: earlier.to_vec() }
    }

    #[test]
    fn a_pki_is_created_only_where_none_was() {
        let at = Places { data_dir: Path::new("/d"), database: "/d/trustmesh.db", kek: Path::new("/d/kek") };
        let token = ADMIN_TOKEN_FILE;
        // (found, plan, words the refusal must contain)
        #[rustfmt::skip]
        let cases: Vec<(Found, Option<Plan>, &[&str])> = vec![
            (found(true, true, false, &[token]), Some(Plan::Load), &[]),
            (found(true, true, true, &[]), Some(Plan::Load), &[]),
            (found(false, false, false, &[]), Some(Plan::Create { new_kek: true }), &[]),
            (found(false, true, true, &[]), Some(Plan::Create { new_kek: false }), &[]),
            // a database with a PKI and no KEK: never a new KEK
            (found(true, false, false, &[token]), None, &["/d/trustmesh.db", "/d/kek", "missing"]),
            // an empty database next to an earlier PKI's files
            (found(false, true, false, &[token, BUNDLE_FILE]), None, &["admin.token and ca-bundle.pem", "/d"]),
            (found(false, false, false, &[BUNDLE_FILE]), None, &["ca-bundle.pem"]),
            (found(false, true, true, &[token]), None, &["admin.token"]),
            // an empty database next to a KEK of our own making
            (found(false, true, false, &[]), None, &["/d/kek", "exists"]),
        ];
        for (found, expected, words) in cases {
            let got = plan(&found, &at);
            match (&got, expected) {
                (Plan::Refuse(why), None) => {
                    for w in words {
                        assert!(why.contains(w), "{found:?}: {why:?} lacks {w:?}");
                    }
                    assert!(!why.contains('\n'));
                }
                (got, Some(expected)) => assert_eq!(*got, expected, "{found:?}"),
                (got, None) => panic!("{found:?}: expected a refusal, got {got:?}"),
            }
        }
    }

    #[test]
    fn an_absent_or_zero_byte_sqlite_file_is_empty_without_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let url = format!("sqlite://{}", db.display());
        assert_eq!(sqlite_file_is_empty(&url), Some(true));
        fs::write(&db, b"").unwrap();
        assert_eq!(sqlite_file_is_empty(&url), Some(true));
        fs::write(&db, b"x").unwrap();
        assert_eq!(sqlite_file_is_empty(&url), None);
        assert_eq!(sqlite_file_is_empty("postgres://u@h/db"), None);
    }
}
