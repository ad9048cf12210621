//! The agent's data directory (0700; every file 0600): its KEK, its node
//! key (sealed under the KEK) and node SVID, the bundle it trusts the server
//! with, the last state the server pushed, and one file per cached SVID
//! whose key is sealed under the KEK. Whatever is written is written whole
//! (`files::write`), so a crash leaves the old file or the new one.
//!
//! Start-up refuses a directory or file with a wider mode, and a file that
//! does not read back, naming it: a node's keys are not served from a
//! directory someone else could have read or changed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use prost::Message;
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};

use crate::ca::{Kek, PrivateKey};
use crate::files;
use crate::proto::agent::v1 as pb;

pub const KEK_FILE: &str = "kek";
const NODE_KEY: &str = "node.key";
const NODE_CERT: &str = "node.pem";
const BUNDLE: &str = "bundle.pem";
const STATE: &str = "state.pb";
const SVIDS: &str = "svids";
/// Associated data of the sealed node key.
const NODE_KEY_AAD: &[u8] = b"trustmesh-agent node key";

#[derive(Debug, thiserror::Error)]
#[error("agent data directory: {0}")]
pub struct DiskError(pub String);

fn fail<T>(why: String) -> Result<T, DiskError> {
    Err(DiskError(why))
}

/// The node's own key and SVID chain (leaf, then the Transport CA).
pub struct NodeCredentials {
    pub key: PrivateKey,
    pub chain_pem: String,
}

/// A cached SVID: its chain and its key (sealed on disk).
pub struct StoredSvid {
    pub entry_id: String,
    pub chain_pem: String,
    pub key: PrivateKey,
}

#[derive(Serialize, Deserialize)]
struct SvidFile {
    entry_id: String,
    chain_pem: String,
    /// Hex of the key's PKCS#8, sealed under the KEK with the entry id as
    /// associated data.
    sealed_key: String,
}

pub struct Disk {
    dir: PathBuf,
    kek: Kek,
}

/// Refuses a data directory anyone but its owner may enter, and files in it
/// (or in its `svids/`) that anyone but their owner may read.
pub fn check_modes(dir: &Path) -> Result<(), DiskError> {
    let Ok(meta) = fs::symlink_metadata(dir) else { return Ok(()) };
    if !meta.is_dir() {
        return fail(format!("{} is not a directory", dir.display()));
    }
    for folder in [dir.to_path_buf(), dir.join(SVIDS)] {
        let Ok(meta) = fs::symlink_metadata(&folder) else { continue };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return fail(format!("{} has mode {mode:o}; it must be 0700", folder.display()));
        }
        let entries = fs::read_dir(&folder).map_err(|e| DiskError(format!("cannot read {}: {e}", folder.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else { continue };
            if meta.file_type().is_symlink() {
                return fail(format!("{} is a symbolic link", path.display()));
            }
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_file() && mode & 0o077 != 0 {
                return fail(format!("{} has mode {mode:o}; it must be 0600", path.display()));
            }
        }
    }
    Ok(())
}

impl Disk {
    /// The data directory `dir` (made 0700 if missing) with its `svids/`.
    pub fn new(dir: &Path, kek: Kek) -> Result<Self, DiskError> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| DiskError(format!("cannot create {}: {e}", dir.display())))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| DiskError(format!("cannot set mode 0700 on {}: {e}", dir.display())))?;
        }
        let svids = dir.join(SVIDS);
        if !svids.exists() {
            fs::create_dir(&svids).map_err(|e| DiskError(format!("cannot create {}: {e}", svids.display())))?;
        }
        fs::set_permissions(&svids, fs::Permissions::from_mode(0o700))
            .map_err(|e| DiskError(format!("cannot set mode 0700 on {}: {e}", svids.display())))?;
        Ok(Self { dir: dir.to_path_buf(), kek })
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, DiskError> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => fail(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), DiskError> {
        files::write_private(&self.dir.join(name), bytes).map_err(|e| DiskError(e.to_string()))
    }

    fn corrupt<T>(&self, name: &str, why: impl std::fmt::Display) -> Result<T, DiskError> {
        fail(format!("{} is corrupt ({why}); remove it to start over", self.dir.join(name).display()))
    }

    /// The node key and SVID, when the node was attested.
    pub fn node(&self) -> Result<Option<NodeCredentials>, DiskError> {
        let (Some(sealed), Some(chain)) = (self.read(NODE_KEY)?, self.read(NODE_CERT)?) else { return Ok(None) };
        let pkcs8 = match self.kek.open(&sealed, NODE_KEY_AAD) {
            Ok(p) => p,
            Err(e) => return self.corrupt(NODE_KEY, e),
        };
        let key = match PrivateKey::from_pkcs8_der(&pkcs8) {
            Ok(k) => k,
            Err(e) => return self.corrupt(NODE_KEY, e),
        };
        let chain_pem = match String::from_utf8(chain) {
            Ok(c) if crate::ca::certs_from_pem(&c).is_ok_and(|c| !c.is_empty()) => c,
            _ => return self.corrupt(NODE_CERT, "not a PEM certificate chain"),
        };
        Ok(Some(NodeCredentials { key, chain_pem }))
    }

    pub fn put_node(&self, key: &PrivateKey, chain_pem: &str) -> Result<(), DiskError> {
        let sealed = self
            .kek
            .seal(key.pkcs8_der(), NODE_KEY_AAD, &SystemRandom::new())
            .map_err(|e| DiskError(format!("cannot seal the node key: {e}")))?;
        self.write(NODE_KEY, &sealed)?;
        self.write(NODE_CERT, chain_pem.as_bytes())
    }

    /// The bundle the server was last trusted with.
    pub fn bundle(&self) -> Result<Option<String>, DiskError> {
        match self.read(BUNDLE)? {
            None => Ok(None),
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(pem) => Ok(Some(pem)),
                Err(e) => self.corrupt(BUNDLE, e),
            },
        }
    }

    pub fn put_bundle(&self, pem: &str) -> Result<(), DiskError> {
        self.write(BUNDLE, pem.as_bytes())
    }

    /// The last state the server pushed (checked again by the caller).
    pub fn state(&self) -> Result<Option<pb::SyncState>, DiskError> {
        match self.read(STATE)? {
            None => Ok(None),
            Some(bytes) => match pb::SyncState::decode(bytes.as_slice()) {
                Ok(state) => Ok(Some(state)),
                Err(e) => self.corrupt(STATE, e),
            },
        }
    }

    pub fn put_state(&self, state: &pb::SyncState) -> Result<(), DiskError> {
        self.write(STATE, &state.encode_to_vec())
    }

    /// Every cached SVID.
    pub fn svids(&self) -> Result<Vec<StoredSvid>, DiskError> {
        let folder = self.dir.join(SVIDS);
        let mut out = Vec::new();
        let entries = fs::read_dir(&folder).map_err(|e| DiskError(format!("cannot read {}: {e}", folder.display())))?;
        for entry in entries.flatten() {
            let name = format!("{SVIDS}/{}", entry.file_name().to_string_lossy());
            if name.contains(".tmp") {
                continue;
            }
            out.extend(self.svid_file(&name)?);
        }
        Ok(out)
    }

    /// The SVID cached for `entry_id`, if there is one.
    pub fn svid(&self, entry_id: &str) -> Result<Option<StoredSvid>, DiskError> {
        self.svid_file(&svid_file(entry_id))
    }

    fn svid_file(&self, name: &str) -> Result<Option<StoredSvid>, DiskError> {
        let Some(bytes) = self.read(name)? else { return Ok(None) };
        let file: SvidFile = match serde_json::from_slice(&bytes) {
            Ok(f) => f,
            Err(e) => return self.corrupt(name, e),
        };
        let sealed = match hex::decode(&file.sealed_key) {
            Ok(s) => s,
            Err(e) => return self.corrupt(name, e),
        };
        let key = match self.kek.open(&sealed, file.entry_id.as_bytes()).map(|p| PrivateKey::from_pkcs8_der(&p)) {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => return self.corrupt(name, e),
            Err(e) => return self.corrupt(name, e),
        };
        Ok(Some(StoredSvid { entry_id: file.entry_id, chain_pem: file.chain_pem, key }))
    }

    pub fn put_svid(&self, entry_id: &str, chain_pem: &str, key: &PrivateKey) -> Result<(), DiskError> {
        let sealed = self
            .kek
            .seal(key.pkcs8_der(), entry_id.as_bytes(), &SystemRandom::new())
            .map_err(|e| DiskError(format!("cannot seal an SVID key: {e}")))?;
        let file = SvidFile { entry_id: entry_id.into(), chain_pem: chain_pem.into(), sealed_key: hex::encode(sealed) };
        let bytes = serde_json::to_vec(&file).map_err(|e| DiskError(e.to_string()))?;
        self.write(&svid_file(entry_id), &bytes)
    }

    pub fn remove_svid(&self, entry_id: &str) {
        let _ = fs::remove_file(self.dir.join(svid_file(entry_id)));
    }
}

/// Entry ids are hex, but a server's is not trusted to be: anything else
/// becomes hex of its bytes.
fn svid_file(entry_id: &str) -> String {
    if !entry_id.is_empty() && entry_id.len() <= 64 && entry_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{SVIDS}/{entry_id}.json")
    } else {
        format!("{SVIDS}/x{}.json", hex::encode(entry_id.as_bytes()))
    }
}
