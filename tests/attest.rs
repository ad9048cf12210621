//! Local-socket attestation against the real kernel (this test process and
//! its children over real Unix sockets) and against fake `/proc` trees for
//! the cases the kernel will not produce on demand: a pid recycled between
//! two reads, garbage `stat` contents, a zombie, a foreign uid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use trustmesh::attest::{AttestError, Attestor, UnixPeer, unix_selectors};
use trustmesh::domain::Selector;

/// This process as a peer of a real socket pair: the kernel's credentials.
async fn own_peer() -> UnixPeer {
    let (a, _b) = tokio::net::UnixStream::pair().unwrap();
    let cred = a.peer_cred().unwrap();
    UnixPeer { pid: cred.pid(), uid: cred.uid(), gid: cred.gid() }
}

fn texts(selectors: &BTreeSet<Selector>) -> Vec<String> {
    selectors.iter().map(ToString::to_string).collect()
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// `id -un` / `id -gn`, when the id has a name.
fn id_name(flag: &str) -> Option<String> {
    let out = Command::new("id").arg(flag).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test]
async fn the_test_process_attests_itself_over_a_unix_socket() {
    let peer = own_peer().await;
    assert_eq!(peer.pid, Some(std::process::id() as i32));
    let got = texts(&unix_selectors(&peer).unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut expected = vec![
        format!("unix:uid:{}", peer.uid),
        format!("unix:gid:{}", peer.gid),
        format!("unix:path:{}", exe.display()),
        format!("unix:sha256:{}", sha256sum(&exe)),
    ];
    expected.extend(id_name("-un").map(|n| format!("unix:user:{n}")));
    expected.extend(id_name("-gn").map(|n| format!("unix:group:{n}")));
    expected.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, expected);
}

#[tokio::test]
async fn the_executable_is_hashed_once_per_version() {
    let peer = own_peer().await;
    let attestor = Attestor::system();
    let first = attestor.selectors(&peer).unwrap();
    for _ in 0..5 {
        assert_eq!(attestor.selectors(&peer).unwrap(), first);
    }
    assert_eq!(attestor.hashes_computed(), 1, "later connections are served from the cache");
}

#[tokio::test]
async fn a_child_process_is_attested_by_its_pid() {
    let me = own_peer().await;
    let mut child = Command::new("/bin/sleep").arg("30").stdin(Stdio::null()).spawn().unwrap();
    let peer = UnixPeer { pid: Some(child.id() as i32), ..me };
    let got = texts(&unix_selectors(&peer).unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    let real = std::fs::canonicalize("/bin/sleep").unwrap();
    assert!(got.contains(&format!("unix:path:{}", real.display())), "{got:?}");
    assert!(got.contains(&format!("unix:sha256:{}", sha256sum(&real))), "{got:?}");
    assert!(got.contains(&format!("unix:uid:{}", me.uid)), "{got:?}");
}

#[tokio::test]
async fn a_binary_replaced_on_disk_is_hashed_as_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sleepy");
    std::fs::copy("/bin/sleep", &copy).unwrap();
    let mut child = spawn_retrying(&copy, &["30"]);
    std::fs::remove_file(&copy).unwrap();
    std::fs::write(&copy, b"#!/bin/sh\necho impostor\n").unwrap();
    let me = own_peer().await;
    let got = texts(&unix_selectors(&UnixPeer { pid: Some(child.id() as i32), ..me }).unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    let original = sha256sum(Path::new("/bin/sleep"));
    assert!(got.contains(&format!("unix:sha256:{original}")), "the running inode is hashed: {got:?}");
    assert!(!got.contains(&format!("unix:sha256:{}", sha256sum(&copy))), "{got:?}");
    assert!(got.contains(&format!("unix:path:{} (deleted)", copy.display())), "{got:?}");
}

#[tokio::test]
async fn vanished_and_missing_pids_prove_nothing() {
    let me = own_peer().await;
    let mut child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    for pid in [pid, i32::MAX] {
        let err = unix_selectors(&UnixPeer { pid: Some(pid), ..me }).unwrap_err();
        assert_eq!(err, AttestError::Gone { pid });
    }
    for pid in [None, Some(0), Some(-1)] {
        assert_eq!(unix_selectors(&UnixPeer { pid, ..me }).unwrap_err(), AttestError::NoPid);
    }
}

// ---- fake /proc trees ------------------------------------------------------

const PID: i32 = 4242;

fn stat_line(comm: &str, state: &str, start: u64) -> String {
    format!("{PID} ({comm}) {state} 1 {PID} {PID} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 1 1 0\n")
}

/// `<root>/<PID>/{stat,status,exe}`, passwd and group files; the exe links to `exe_target`.
fn fake_proc(root: &Path, stat: &str, euid: u32, exe_target: &Path) -> Attestor {
    let dir = root.join("proc").join(PID.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stat"), stat).unwrap();
    std::fs::write(dir.join("status"), format!("Name:\tenvoy\nUid:\t1000\t{euid}\t{euid}\t{euid}\nGid:\t1000\n"))
        .unwrap();
    std::os::unix::fs::symlink(exe_target, dir.join("exe")).unwrap();
    std::fs::write(root.join("passwd"), "root:x:0:0::/root:/bin/sh\nenvoy:x:1000:1000::/:/bin/false\n").unwrap();
    std::fs::write(root.join("group"), "root:x:0:\nproxy:x:1001:envoy\n").unwrap();
    Attestor::new(root.join("proc"), root.join("passwd"), root.join("group"))
}

fn peer() -> UnixPeer {
    UnixPeer { pid: Some(PID), uid: 1000, gid: 1001 }
}

fn binary(root: &Path) -> PathBuf {
    let path = root.join("envoy-bin");
    std::fs::write(&path, b"pretend envoy").unwrap();
    path
}

#[test]
fn a_steady_fake_process_yields_every_selector() {
    let dir = tempfile::tempdir().unwrap();
    let bin = binary(dir.path());
    let attestor = fake_proc(dir.path(), &stat_line("envoy (main)", "S", 777), 1000, &bin);
    let mut got = texts(&attestor.selectors(&peer()).unwrap());
    got.sort();
    let expected = [
        "unix:gid:1001".to_string(),
        "unix:group:proxy".into(),
        format!("unix:path:{}", bin.display()),
        format!("unix:sha256:{}", sha256sum(&bin)),
        "unix:uid:1000".into(),
        "unix:user:envoy".into(),
    ];
    assert_eq!(got, expected);
}

#[test]
fn a_pid_recycled_between_the_reads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bin = binary(dir.path());
    let attestor = fake_proc(dir.path(), "", 1000, &bin);
    let proc_dir = dir.path().join("proc").join(PID.to_string());
    let (stat, status) = (proc_dir.join("stat"), proc_dir.join("status"));
    for fifo in [&stat, &status] {
        std::fs::remove_file(fifo).unwrap();
        assert!(Command::new("mkfifo").arg(fifo).status().unwrap().success(), "mkfifo");
    }
    // FIFOs: each open reads what the writer sends next. `stat` shows the
    // process, then its successor; `status` (read in between, after the first
    // `stat` is closed) keeps the two `stat` versions apart.
    std::thread::spawn(move || {
        std::fs::write(&stat, stat_line("envoy", "S", 100)).unwrap();
        std::fs::write(&status, "Uid:\t1000\t1000\t1000\t1000\n").unwrap();
        std::fs::write(&stat, stat_line("envoy", "S", 200)).unwrap();
    });
    let err = attestor.selectors(&peer()).unwrap_err();
    assert_eq!(err, AttestError::PidReused { pid: PID, before: 100, after: 200 });
    assert!(err.to_string().contains("pid reuse"), "{err}");
}

#[test]
fn garbage_zombies_and_foreign_uids_are_refused() {
    let cases: [(String, u32, &str); 6] = [
        ("garbage".into(), 1000, "cannot parse"),
        (String::new(), 1000, "cannot parse"),
        (format!("{PID} (envoy) S 1 {PID} {PID} 0\n"), 1000, "fields"),
        (stat_line("envoy", "S", 1).replacen(&PID.to_string(), "1", 1), 1000, "not 4242"),
        (stat_line("envoy", "Z", 5), 1000, "is gone"),
        (stat_line("envoy", "S", 5), 0, "runs as uid 0, not as the connection's uid 1000"),
    ];
    for (stat, euid, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let attestor = fake_proc(dir.path(), &stat, euid, &binary(dir.path()));
        let err = attestor.selectors(&peer()).unwrap_err().to_string();
        assert!(err.contains(needle), "{stat:?}: {err}");
    }
    // an oversized stat file and a status without Uid:
    let dir = tempfile::tempdir().unwrap();
    let attestor = fake_proc(dir.path(), &"x".repeat(100_000), 1000, &binary(dir.path()));
    assert!(attestor.selectors(&peer()).unwrap_err().to_string().contains("larger than any /proc file"));
    let status = dir.path().join("proc").join(PID.to_string()).join("status");
    std::fs::write(dir.path().join("proc").join(PID.to_string()).join("stat"), stat_line("e", "S", 1)).unwrap();
    std::fs::write(&status, "Name:\tenvoy\n").unwrap();
    assert!(attestor.selectors(&peer()).unwrap_err().to_string().contains("no Uid: line"));
}

#[test]
fn unreadable_names_and_executables_only_drop_their_selectors() {
    let dir = tempfile::tempdir().unwrap();
    let absent_exe = dir.path().join("no-such-binary");
    let mut attestor = fake_proc(dir.path(), &stat_line("envoy", "S", 9), 1000, &absent_exe);
    attestor.passwd = dir.path().join("no-passwd");
    let mut got = texts(&attestor.selectors(&peer()).unwrap());
    got.sort();
    // the dangling link still names a path; there is nothing to hash
    let expected = [
        "unix:gid:1001".to_string(),
        "unix:group:proxy".into(),
        format!("unix:path:{}", absent_exe.display()),
        "unix:uid:1000".into(),
    ];
    assert_eq!(got, expected);
}

/// Spawns a freshly written executable, retrying while another test thread's
/// fork still holds it open for writing (ETXTBSY).
fn spawn_retrying(path: &Path, args: &[&str]) -> std::process::Child {
    for _ in 0..50 {
        match Command::new(path).args(args).stdin(Stdio::null()).spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(26) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => panic!("spawn {}: {e}", path.display()),
        }
    }
    panic!("{} stayed busy", path.display());
}
