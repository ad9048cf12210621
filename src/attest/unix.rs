//! Local-socket attestation from `/proc/<pid>` and the account files.
//!
//! Order, so that a recycled pid proves nothing: (1) read the start time
//! (field 22 of `stat`), (2) check the effective uid in `status` is the
//! connection's, (3) read the names, the executable path and its hash,
//! (4) read the start time again. A process that vanished, turned zombie or
//! whose start time changed fails the attestation.

use crate::domain::text;
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use super::hash::HashCache;
use super::{AttestError, UnixPeer};
use crate::domain::{Selector, SelectorKind};

/// Reads process facts below `proc_root` and names from `passwd` / `group`.
/// Holds the executable-hash cache: keep one per process (see [`unix_selectors`]).
#[derive(Debug)]
pub struct Attestor {
    pub proc_root: PathBuf,
    pub passwd: PathBuf,
    pub group: PathBuf,
    hashes: HashCache,
}

/// Attests a local-socket peer with the system's `/proc`, `/etc/passwd` and
/// `/etc/group`, sharing one hash cache for the whole process.
pub fn unix_selectors(peer: &UnixPeer) -> Result<BTreeSet<Selector>, AttestError> {
    static SYSTEM: LazyLock<Attestor> = LazyLock::new(Attestor::system);
    SYSTEM.selectors(peer)
}

impl Attestor {
    pub fn new(proc_root: impl Into<PathBuf>, passwd: impl Into<PathBuf>, group: impl Into<PathBuf>) -> Self {
        Self { proc_root: proc_root.into(), passwd: passwd.into(), group: group.into(), hashes: HashCache::default() }
    }

    /// `/proc`, `/etc/passwd`, `/etc/group`.
    pub fn system() -> Self {
        Self::new("/proc", "/etc/passwd", "/etc/group")
    }

    /// The selectors `peer` proves: `unix:uid`, `unix:gid`, and when they can
    /// be read `unix:user`, `unix:group`, `unix:path` and `unix:sha256`.
    pub fn selectors(&self, peer: &UnixPeer) -> Result<BTreeSet<Selector>, AttestError> {
        let pid = peer.pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
        let dir = self.proc_root.join(pid.to_string());
        let before = start_time(&dir, pid)?;
        let found = effective_uid(&dir, pid)?;
        if found != peer.uid {
            return Err(AttestError::UidMismatch { pid, expected: peer.uid, found });
        }
        let mut out = BTreeSet::new();
        add(&mut out, SelectorKind::UnixUid, Some(peer.uid.to_string()));
        add(&mut out, SelectorKind::UnixGid, Some(peer.gid.to_string()));
        add(&mut out, SelectorKind::UnixUser, lookup_name(&self.passwd, peer.uid));
        add(&mut out, SelectorKind::UnixGroup, lookup_name(&self.group, peer.gid));
        let exe = dir.join("exe");
        match std::fs::read_link(&exe) {
            Ok(target) => add(&mut out, SelectorKind::UnixPath, target.to_str().map(str::to_string)),
            Err(e) => tracing::debug!(pid, error = %e, "executable path unreadable"),
        }
        match self.hashes.sha256(&exe) {
            Ok(hex) => add(&mut out, SelectorKind::UnixSha256, hex),
            Err(e) => tracing::debug!(pid, error = %e, "executable unreadable"),
        }
        let after = start_time(&dir, pid)?;
        if after != before {
            return Err(AttestError::PidReused { pid, before, after });
        }
        Ok(out)
    }

    /// How many executables were read and hashed (the rest came from the cache).
    pub fn hashes_computed(&self) -> u64 {
        self.hashes.computed()
    }
}

/// Adds a selector when there is a value and it is valid (a name with
/// whitespace, a non-UTF-8 path: left out, never an error).
fn add(out: &mut BTreeSet<Selector>, kind: SelectorKind, value: Option<String>) {
    if let Some(selector) = value.and_then(|v| Selector::new(kind, &v).ok()) {
        out.insert(selector);
    }
}

/// Field 22 of `<dir>/stat`; a zombie or dead process is gone.
fn start_time(dir: &Path, pid: i32) -> Result<u64, AttestError> {
    let path = dir.join("stat");
    let text = read(&path, pid)?;
    let (state, start) = parse_stat(&text, pid).map_err(|reason| malformed(&path, reason))?;
    if state == "Z" || state == "X" {
        return Err(AttestError::Gone { pid });
    }
    Ok(start)
}

/// `(state, starttime)` of a `stat` line: `pid (comm) state … starttime …`.
/// `comm` may hold spaces and parentheses, so the fields start after the
/// last `)`.
pub(super) fn parse_stat(text: &str, pid: i32) -> Result<(&str, u64), String> {
    let open = text.find(" (").ok_or("no \" (\" before the command name")?;
    let close = text.rfind(')').filter(|c| *c > open).ok_or("no ')' after the command name")?;
    let head = &text[..open];
    if head != pid.to_string() {
        return Err(format!("it is about process {:?}, not {pid}", text::shorten(head, 16)));
    }
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
    let (Some(state), Some(start)) = (fields.first(), fields.get(19)) else {
        return Err(format!("{} fields after the command name, expected at least 20", fields.len()));
    };
    let start = start.parse().map_err(|_| format!("start time {:?} is not a number", text::shorten(start, 32)))?;
    Ok((state, start))
}

/// The effective uid (second value of `Uid:`) in `<dir>/status`.
fn effective_uid(dir: &Path, pid: i32) -> Result<u32, AttestError> {
    let path = dir.join("status");
    let text = read(&path, pid)?;
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:")).ok_or_else(|| malformed(&path, "no Uid: line"))?;
    let euid = line.split_ascii_whitespace().nth(1).ok_or_else(|| malformed(&path, "Uid: has no effective uid"))?;
    euid.parse().map_err(|_| malformed(&path, format!("effective uid {:?} is not a number", text::shorten(euid, 32))))
}

/// Reads a small `/proc` file; a missing process (ENOENT, ESRCH) is `Gone`.
fn read(path: &Path, pid: i32) -> Result<String, AttestError> {
    /// `ESRCH`: the process exited while its `/proc` directory was open.
    const ESRCH: i32 = 3;
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() <= 64 * 1024 => String::from_utf8(bytes).map_err(|_| malformed(path, "not UTF-8")),
        Ok(bytes) => Err(malformed(path, format!("{} bytes is larger than any /proc file", bytes.len()))),
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(ESRCH) => Err(AttestError::Gone { pid }),
        Err(e) => Err(AttestError::Io { path: path.display().to_string(), reason: e.to_string() }),
    }
}

/// The name of `id` in a passwd- or group-format file (`name:password:id:…`,
/// parsed by hand: no NSS, no libc). The first line with the id wins;
/// comments, blank, malformed and non-UTF-8 lines are skipped. A file that
/// cannot be read gives no name (the caller then lacks that selector only).
fn lookup_name(file: &Path, id: u32) -> Option<String> {
    match std::fs::read(file) {
        Ok(bytes) => find_name(&bytes, id),
        Err(e) => {
            tracing::debug!(file = %file.display(), error = %e, "account file unreadable");
            None
        }
    }
}

fn find_name(bytes: &[u8], id: u32) -> Option<String> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let found: u32 = fields.next()?.parse().ok()?;
            (found == id && !name.is_empty()).then(|| name.to_string())
        })
}

fn malformed(path: &Path, reason: impl Into<String>) -> AttestError {
    AttestError::Malformed { path: path.display().to_string(), reason: reason.into() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{find_name, parse_stat};

    fn stat(comm: &str, start: &str) -> String {
        format!("42 ({comm}) S 1 42 42 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 {start} 1000 200 18446744073709551615")
    }

    #[test]
    fn start_time_after_a_hostile_command_name() {
        for comm in ["envoy", "a b", "x) R 1 2 (y", "))((", ""] {
            assert_eq!(parse_stat(&stat(comm, "98765"), 42).unwrap(), ("S", 98765), "{comm:?}");
        }
    }

    #[test]
    fn garbage_stat_lines() {
        for (text, needle) in [
            ("", "command name"),
            ("garbage", "command name"),
            ("42 (envoy S 1", "')'"),
            ("42 (envoy) S 1 2 3", "fields"),
            (&stat("envoy", "soon"), "not a number"),
            (&stat("envoy", "-5"), "not a number"),
            (&stat("envoy", "1").replacen("42", "43", 1), "not 42"),
        ] {
            let err = parse_stat(text, 42).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    const PASSWD: &[u8] = b"# comment\n\
        root:x:0:0:root:/root:/bin/bash\n\
        \n\
        broken line\n\
        nouid:x::1:\n\
        bad\xffname:x:7:7::/:/bin/sh\n\
        envoy:x:101:101:Envoy Proxy:/nonexistent:/usr/sbin/nologin\r\n\
        twin:x:101:101::/:/bin/sh\n\
        :x:55:55::/:/bin/sh\n\
        +nis";

    #[test]
    fn names_by_id() {
        assert_eq!(find_name(PASSWD, 0).as_deref(), Some("root"));
        assert_eq!(find_name(PASSWD, 101).as_deref(), Some("envoy"), "first match wins, CRLF tolerated");
        assert_eq!(find_name(PASSWD, 7), None, "non-UTF-8 lines are skipped");
        assert_eq!(find_name(PASSWD, 55), None, "an empty name is no name");
        assert_eq!(find_name(PASSWD, 1), None);
        assert_eq!(find_name(b"", 0), None);
        assert_eq!(find_name(b"docker:x:999:alice,bob", 999).as_deref(), Some("docker"), "group format");
        assert_eq!(find_name(b"big:x:4294967296:0", 0), None, "out-of-range ids are malformed");
    }
}
