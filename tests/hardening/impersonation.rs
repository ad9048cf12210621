//! Impersonating the API server: a certificate that names `localhost` does
//! not make a process the server, and TLS failures say why.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::openssl::make_csr_with_sans;
use crate::support::process::poll;
use crate::support::server::{BIN, Server};
use crate::tmp;

/// A TLS server that is not trustmesh: it presents `cert` (with its chain)
/// and counts what clients send it after a handshake completes.
struct Impostor {
    port: u16,
    handshakes_failed: Arc<AtomicUsize>,
    bytes_received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Impostor {
    fn start(cert: &Path, key: &Path) -> Impostor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(&std::fs::read(cert).unwrap()).map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_slice(&std::fs::read(key).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (failed, received, stop) = (Arc::default(), Arc::default(), Arc::<AtomicBool>::default());
        let thread = {
            let (failed, received, stop): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicBool>) =
                (Arc::clone(&failed), Arc::clone(&received), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut tcp, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    tcp.set_nonblocking(false).unwrap();
                    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
                    if conn.complete_io(&mut tcp).is_err() || conn.is_handshaking() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = tls.read(&mut buf) {
                        received.fetch_add(n, Ordering::Relaxed);
                    }
                }
            })
        };
        Impostor { port, handshakes_failed: failed, bytes_received: received, stop, thread: Some(thread) }
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The CLI of `s`'s data directory (its bundle and admin token) dialling `server`.
fn cli_at(s: &Server, server: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&s.data_dir)
        .args(["--server", server])
        .args(args)
        .env_remove("TRUSTMESH_TOKEN")
        .output()
        .unwrap()
}

/// A bootstrap token holder asked for `DNS:localhost` to serve TLS as the
/// API server and collect the admin token the CLI sends. Both halves are
/// closed: the token gets no DNS SAN without a policy that allows it, and the
/// CLI accepts only the server's own identity, whatever name it dialled.
#[test]
fn a_certificate_that_names_localhost_cannot_impersonate_the_api_server() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let evil = "spiffe://example.org/svc/evil";
    let out = dir.path().join("evil.pem");

    // A bootstrap token may have its identity signed, but no DNS name with it.
    let token = s.bootstrap_token("evil", &[evil], &[]);
    let csr = make_csr_with_sans(dir.path(), "evil", "ec", &[&format!("URI:{evil}"), "DNS:localhost"]);
    let sign = |csr: &Path| {
        let mut args = vec!["--token", &token, "pki", "cert", "sign-csr", "--spiffe-id", evil];
        args.extend(["--csr", csr.to_str().unwrap(), "--output-cert", out.to_str().unwrap()]);
        s.cli(&args)
    };
    let refused = sign(&csr);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("use_dns_name") && err.contains("localhost"), "{err}");
    let plain = make_csr_with_sans(dir.path(), "plain", "ec", &[&format!("URI:{evil}")]);
    assert!(sign(&plain).status.success(), "the same token without the DNS name is allowed");

    // Nobody, an admin included, gets the server's identity from a CA.
    let err = s.fails(&[
        "pki",
        "cert",
        "generate",
        "--spiffe-id",
        "spiffe://example.org/trustmesh/server",
        "--output-cert",
        dir.path().join("x.pem").to_str().unwrap(),
        "--output-key",
        dir.path().join("x.key").to_str().unwrap(),
    ]);
    assert!(err.contains("/trustmesh/"), "{err}");

    // An admin may issue DNS:localhost to a workload; serving TLS with it
    // still does not make a process the API server.
    let (cert, key) = s.generate(dir.path(), "rogue", evil, &["--dns-name", "localhost"]);
    let impostor = Impostor::start(&cert, &key);
    let answer = cli_at(&s, &format!("https://localhost:{}", impostor.port), &["pki", "status"]);
    let err = String::from_utf8_lossy(&answer.stderr);
    assert!(!answer.status.success(), "the CLI talked to the impostor");
    assert!(err.contains("not the trustmesh server") && err.contains(evil), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        poll(Duration::from_secs(5), || { (impostor.handshakes_failed.load(Ordering::Relaxed) > 0).then_some(()) })
            .is_some()
    );
    assert_eq!(impostor.bytes_received.load(Ordering::Relaxed), 0, "the impostor received application data");

    // The real server answers under any name it is dialled by.
    for host in ["localhost", "127.0.0.1"] {
        let answer = cli_at(&s, &format!("https://{host}:{}", s.api.port()), &["pki", "status"]);
        assert!(answer.status.success(), "{host}: {}", String::from_utf8_lossy(&answer.stderr));
    }
}

/// TLS failures name their cause: an unknown CA, an identity mismatch.
#[test]
fn tls_failures_in_the_cli_name_their_cause() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let other = tmp();
    let o = Server::start(&other.path().join("data"), &[]);
    // The bundle of another trustmesh: the server's CA is unknown to it.
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&s.data_dir)
        .args(["--server", &format!("https://127.0.0.1:{}", s.api.port())])
        .arg("--ca-file")
        .arg(o.bundle_path())
        .args(["pki", "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown CA"), "{err}");

    // A client certificate from another CA: the server refuses the handshake.
    let (cert, key) = o.generate(dir.path(), "foreign", "spiffe://example.org/svc/foreign", &[]);
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&s.data_dir)
        .args(["--server", &format!("https://127.0.0.1:{}", s.api.port())])
        .arg("--client-cert")
        .arg(&cert)
        .arg("--client-key")
        .arg(&key)
        .args(["pki", "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("client certificate is not signed by a CA of the server's bundle"), "{err}");
}
