//! Certificates as text, checked by an independent implementation: PEM
//! blocks, serials in one normal form (so Envoy's `/certs`, openssl and
//! trustmesh's output compare equal), and `openssl` for keys, CSRs, offline
//! CAs, CRLs, chain verification and what a TLS server presents. Without
//! openssl a test fails (it never passes vacuously).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::process::wait_or_kill;

/// Runs openssl. Without openssl the test fails (it never passes vacuously).
pub fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed (the README's test command installs it)")
}

pub fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A self-signed P-256 certificate from `openssl req -x509` into `cert` and
/// `key`: `subject`, valid `days`, plus `extra` arguments (e.g. `-addext`).
pub fn openssl_self_signed(cert: &Path, key: &Path, subject: &str, days: &str, extra: &[&str]) {
    let mut args = vec!["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    args.extend(["-keyout", key.to_str().unwrap(), "-out", cert.to_str().unwrap(), "-subj", subject, "-days", days]);
    args.extend_from_slice(extra);
    openssl_ok(&args);
}

/// Makes a key (`ec`, `ec384`, `rsa2048`, `rsa1024`, `ed25519`) and a CSR with the given URI SANs.
pub fn make_csr(dir: &Path, name: &str, kind: &str, uris: &[&str]) -> PathBuf {
    let sans: Vec<String> = uris.iter().map(|u| format!("URI:{u}")).collect();
    make_csr_with_sans(dir, name, kind, &sans.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Like [`make_csr`], with subjectAltName entries as openssl writes them
/// (`URI:spiffe://…`, `DNS:name`).
pub fn make_csr_with_sans(dir: &Path, name: &str, kind: &str, sans: &[&str]) -> PathBuf {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let key_s = key.to_str().unwrap();
    match kind {
        "ec" => openssl_ok(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key_s]),
        "ec384" => openssl_ok(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", key_s]),
        "rsa2048" => openssl_ok(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key_s]),
        "rsa1024" => openssl_ok(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", key_s]),
        "ed25519" => openssl_ok(&["genpkey", "-algorithm", "ED25519", "-out", key_s]),
        other => panic!("unknown key kind {other}"),
    };
    let mut args = vec!["req", "-new", "-key", key_s, "-subj", "/O=test", "-out", csr.to_str().unwrap()];
    let san;
    if !sans.is_empty() {
        san = format!("subjectAltName={}", sans.join(","));
        args.push("-addext");
        args.push(&san);
    }
    openssl_ok(&args);
    csr
}

/// The serials one PEM CRL lists (normalized), as `openssl crl -text` prints
/// them (through a file in `dir`).
pub fn crl_serials_of(dir: &Path, crl: &str) -> BTreeSet<String> {
    let f = dir.join("one.crl.pem");
    std::fs::write(&f, crl).unwrap();
    let out = openssl(&["crl", "-in", f.to_str().unwrap(), "-noout", "-text"]);
    assert!(out.status.success(), "openssl crl -text: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number:"))
        .map(|s| normalize_serial(s.trim()))
        .collect()
}

/// A certificate serial as lower-case hex without leading zeros or colons, so
/// Envoy's `/certs`, openssl and trustmesh's output compare equal.
pub fn normalize_serial(s: &str) -> String {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_lowercase();
    hex.trim_start_matches('0').to_string()
}

/// Splits a PEM bundle into its blocks of the given label.
pub fn pem_blocks(pem: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(&begin) {
        let Some(stop) = rest[start..].find(&end) else { break };
        out.push(format!("{}\n", &rest[start..start + stop + end.len()]));
        rest = &rest[start + stop + end.len()..];
    }
    out
}

/// An offline root made with openssl: P-256, self-signed CA, SPIFFE trust
/// domain example.org. Returns (certificate, key).
pub fn openssl_root(d: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (d.join("offline-root.pem"), d.join("offline-root.key"));
    let extensions = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-addext",
        "subjectAltName=URI:spiffe://example.org",
    ];
    openssl_self_signed(&cert, &key, "/CN=Offline Root", "3650", &extensions);
    (cert, key)
}

/// An issuing CA signed by the offline root with openssl, for `pki init
/// --import-cert`. Returns (chain PEM: intermediate then root, intermediate key).
pub fn openssl_intermediate(d: &Path, root: &Path, root_key: &Path) -> (PathBuf, PathBuf) {
    let (ikey, icsr, icert) = (d.join("int.key"), d.join("int.csr"), d.join("int.pem"));
    let p = |p: &Path| p.to_str().unwrap().to_string();
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p(&ikey),
        "-out",
        &p(&icsr),
        "-subj",
        "/CN=Imported Issuing CA",
    ]);
    let ext = d.join("ext.cnf");
    std::fs::write(&ext, "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectAltName=URI:spiffe://example.org\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n").unwrap();
    openssl_ok(&[
        "x509",
        "-req",
        "-in",
        &p(&icsr),
        "-CA",
        &p(root),
        "-CAkey",
        &p(root_key),
        "-CAcreateserial",
        "-days",
        "365",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&icert),
    ]);
    let chain = d.join("chain.pem");
    let text = format!("{}{}", std::fs::read_to_string(&icert).unwrap(), std::fs::read_to_string(root).unwrap());
    std::fs::write(&chain, text).unwrap();
    (chain, ikey)
}

/// The serial of a PEM certificate, normalized (through a file in `dir`).
pub fn pem_serial(dir: &Path, pem: &str) -> String {
    let f = dir.join("serial-of.pem");
    std::fs::write(&f, pem).unwrap();
    pem_file_serial(&f)
}

/// The serial of a PEM certificate file, normalized.
pub fn pem_file_serial(path: &Path) -> String {
    let out = openssl_ok(&["x509", "-in", path.to_str().unwrap(), "-noout", "-serial"]);
    normalize_serial(out.trim().trim_start_matches("serial="))
}

/// The certificate chain a TLS server presents (PEM blocks, leaf first), as
/// `openssl s_client -showcerts` sees it, connecting with `cert`/`key`.
pub fn presented_chain(addr: SocketAddr, cert: &Path, key: &Path) -> Vec<String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-showcerts", "-cert"])
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl must be installed (the README's test command installs it)");
    wait_or_kill(&mut child, Duration::from_secs(10));
    let out = child.wait_with_output().unwrap();
    let chain = pem_blocks(&String::from_utf8_lossy(&out.stdout), "CERTIFICATE");
    assert!(!chain.is_empty(), "s_client to {addr} saw no certificate: {}", String::from_utf8_lossy(&out.stderr));
    chain
}

/// `openssl verify -crl_check` of `chain[0]` with the trust bundle as
/// CAs, the rest of `chain` as untrusted intermediates and `crl_pem` as CRLs:
/// (success, openssl's output).
pub fn openssl_verify(dir: &Path, name: &str, chain: &[String], bundle: &Path, crl_pem: &str) -> (bool, String) {
    let leaf = dir.join(format!("{name}-leaf.pem"));
    let untrusted = dir.join(format!("{name}-untrusted.pem"));
    let crl = dir.join(format!("{name}-crl.pem"));
    std::fs::write(&leaf, &chain[0]).unwrap();
    std::fs::write(&untrusted, chain[1..].concat()).unwrap();
    std::fs::write(&crl, crl_pem).unwrap();
    let mut args = vec!["verify", "-crl_check", "-CRLfile", crl.to_str().unwrap()];
    args.extend(["-CAfile", bundle.to_str().unwrap()]);
    if chain.len() > 1 {
        args.extend(["-untrusted", untrusted.to_str().unwrap()]);
    }
    args.push(leaf.to_str().unwrap());
    let out = openssl(&args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// One HTTP/1.1 GET over TLS with `openssl s_client`, presenting
/// `cert`/`key` (the server's certificate is not checked: the question is
/// whether the server takes the client's). The response's status line, or
/// what s_client said when there was none (a refused handshake).
pub fn mtls_get(addr: SocketAddr, cert: &Path, key: &Path, path: &str) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-quiet", "-ign_eof", "-cert"])
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl must be installed (the README's test command installs it)");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let _ = child.stdin.take().map(|mut stdin| stdin.write_all(request.as_bytes()));
    wait_or_kill(&mut child, Duration::from_secs(15));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find(|l| l.starts_with("HTTP/1.1 ")) {
        Some(status) => Ok(status.trim().to_string()),
        None => Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))),
    }
}
