//! Start-up on bad or inconsistent state: one line, exit 64, nothing written,
//! no port bound.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::server::{Server, failed_start};
use crate::tmp;

/// Exit 64, and the failure said once (one JSON event) naming `words`.
fn refused(data: &Path, extra: &[&str], words: &[&str]) -> String {
    let (code, output) = failed_start(data, extra);
    assert_eq!(code, Some(64), "{extra:?}: {output}");
    let failures: Vec<&str> = output.lines().filter(|l| l.contains("\"trustmesh stopped\"")).collect();
    assert_eq!(failures.len(), 1, "the failure is said once: {output}");
    let line = failures[0];
    for w in words {
        assert!(line.contains(w), "{extra:?}: {line} lacks {w:?}");
    }
    assert!(!output.contains("\"ready\""), "{output}");
    line.to_string()
}

/// Every file of a data directory with its size, but the lock.
fn listing(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "lock"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), fs::read(&p).unwrap_or_default()))
        .collect()
}

/// A data directory that held a PKI and a stopped server.
fn made(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    let mut s = Server::start(&data, &[]);
    s.generate(dir, "one", "spiffe://example.org/svc/one", &[]);
    s.stop();
    data
}

#[test]
fn an_empty_database_next_to_an_earlier_pki_stops_the_start_and_writes_nothing() {
    let dir = tmp();
    let data = made(dir.path());
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(data.join(format!("trustmesh.db{suffix}")));
    }
    fs::write(data.join("trustmesh.db"), b"").unwrap();
    let before = listing(&data);
    let line = refused(&data, &[], &["admin.token and ca-bundle.pem", "holds no PKI"]);
    assert!(line.contains(&data.display().to_string()), "{line}");
    assert_eq!(listing(&data), before, "nothing was written: no new root, the bundle untouched");
}

#[test]
fn a_missing_kek_next_to_a_database_stops_the_start_and_writes_no_key() {
    let dir = tmp();
    let data = made(dir.path());
    let kek = fs::read(data.join("kek")).unwrap();
    let bundle = fs::read(data.join("ca-bundle.pem")).unwrap();
    fs::remove_file(data.join("kek")).unwrap();
    let before = listing(&data);
    refused(&data, &[], &["kek", "missing"]);
    assert!(!data.join("kek").exists(), "no new key-encryption key");
    assert_eq!(listing(&data), before);
    // Restored, the same PKI starts again.
    fs::write(data.join("kek"), kek).unwrap();
    fs::set_permissions(data.join("kek"), fs::Permissions::from_mode(0o600)).unwrap();
    let mut s = Server::start(&data, &[]);
    assert_eq!(fs::read(data.join("ca-bundle.pem")).unwrap(), bundle);
    s.stop();
}

#[test]
fn a_damaged_database_page_is_found_at_start() {
    let dir = tmp();
    let data = made(dir.path());
    let db = data.join("trustmesh.db");
    let size = fs::metadata(&db).unwrap().len();
    assert!(size >= 5 * 4096, "the database has pages to damage: {size}");
    let mut f = fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.seek(SeekFrom::Start(3 * 4096)).unwrap();
    f.write_all(&[0x55; 4096]).unwrap();
    f.sync_all().unwrap();
    refused(&data, &[], &["damaged", "trustmesh.db"]);
}

#[test]
fn startup_failures_exit_64_with_one_line() {
    let dir = tmp();
    let root = dir.path();

    let file = root.join("a-file");
    fs::write(&file, b"x").unwrap();
    refused(&file, &[], &["not a directory", "--data-dir"]);

    let garbage_db = root.join("garbage-db");
    fs::create_dir(&garbage_db).unwrap();
    fs::write(garbage_db.join("trustmesh.db"), vec![b'x'; 8192]).unwrap();
    refused(&garbage_db, &[], &["trustmesh.db"]);

    let policy = root.join("policy");
    fs::create_dir(&policy).unwrap();
    fs::write(policy.join("bad.cedar"), "permit(").unwrap();
    refused(&root.join("p"), &["--policy-dir", policy.to_str().unwrap()], &["bad.cedar"]);

    // The socket path is checked before anything is written.
    let socket_file = root.join("socket-file");
    fs::write(&socket_file, b"x").unwrap();
    let data = root.join("s");
    refused(&data, &["--socket", socket_file.to_str().unwrap()], &["not a socket", "--socket"]);
    assert!(!data.join("kek").exists() && !data.join("trustmesh.db").exists(), "nothing was written");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    refused(&root.join("l"), &["--listen", &port], &["--listen", &port]);
    refused(&root.join("h"), &["--http-listen", &port], &["--http-listen"]);

    let held = root.join("held");
    let _first = Server::start(&held, &[]);
    let other_socket = root.join("held-2.sock");
    refused(&held, &["--socket", other_socket.to_str().unwrap()], &["another trustmesh process"]);

    // A key-encryption key that is garbage, or readable by others.
    let data = made(&root.join("k"));
    let kek = data.join("kek");
    let good = fs::read(&kek).unwrap();
    fs::set_permissions(&kek, fs::Permissions::from_mode(0o644)).unwrap();
    refused(&data, &[], &["kek", "0600"]);
    fs::write(&kek, b"not a key\n").unwrap();
    fs::set_permissions(&kek, fs::Permissions::from_mode(0o600)).unwrap();
    refused(&data, &[], &["kek"]);
    fs::write(&kek, &good).unwrap();
    let mut again = Server::start(&data, &[]);
    again.stop();
}
