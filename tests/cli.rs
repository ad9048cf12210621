//! End-to-end: the real binary, the real CLI, openssl as the verifier.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;

use serde_json::{Value, json};
use support::mode;
use support::openssl::{make_csr, openssl, openssl_ok, pem_blocks};
use support::server::{self, Server, metric};

const TD: &str = "example.org";

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn audit(s: &Server) -> Vec<Value> {
    s.json(&["audit", "list"]).as_array().unwrap().clone()
}

/// The last audit record, which must be a refusal naming `needle`.
fn assert_refusal_audited(s: &Server, needle: &str) {
    let records = audit(s);
    let last = records.last().expect("an audit record");
    assert!(last["outcome"] == "denied" || last["outcome"] == "error", "last audit record is not a refusal: {last}");
    assert!(
        last["reason"].as_str().unwrap().to_lowercase().contains(&needle.to_lowercase()),
        "audit reason {:?} does not mention {needle:?}",
        last["reason"]
    );
}

fn still_serving(s: &Server) {
    let status = s.json(&["pki", "status"]);
    assert_eq!(status["health"], "HEALTHY", "{status}");
}

#[test]
fn first_start_creates_hierarchy_and_restart_keeps_it() {
    let dir = tmp();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, &[]);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("kek")), 0o600);
    assert_eq!(mode(&data.join("admin.token")), 0o600);
    let bundle = fs::read_to_string(s.bundle_path()).unwrap();
    assert_eq!(pem_blocks(&bundle, "CERTIFICATE").len(), 3, "root + Services CA + Transport CA");
    let status = s.json(&["pki", "status"]);
    assert_eq!(status["trust_domain"], TD);
    assert_eq!(status["root"]["algorithm"], "EC-P384");
    let mut roles: Vec<&str> =
        status["intermediates"].as_array().unwrap().iter().map(|c| c["role"].as_str().unwrap()).collect();
    roles.sort_unstable();
    assert_eq!(roles, ["profiles", "services", "transport"], "the profiles CA is not in the bundle");
    let root = status["root"]["fingerprint"].as_str().unwrap().to_string();
    assert!(s.ok(&["pki", "status"]).contains("PKI Status: HEALTHY"));
    // The root is self-signed P-384 with the trust domain's SPIFFE ID.
    let root_pem = &pem_blocks(&bundle, "CERTIFICATE")[0];
    fs::write(dir.path().join("root.pem"), root_pem).unwrap();
    let text = openssl_ok(&["x509", "-in", dir.path().join("root.pem").to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains("URI:spiffe://example.org"), "{text}");
    assert!(text.contains("CA:TRUE"));
    let token = fs::read_to_string(data.join("admin.token")).unwrap();
    let log = s.log();
    for event in ["CA initialized", "PKI initialized", "ready"] {
        assert!(log.contains(event), "missing {event:?} in log:\n{log}");
    }
    s.stop();

    let s = Server::start(&data, &[]);
    let again = s.json(&["pki", "status"]);
    assert_eq!(again["root"]["fingerprint"].as_str().unwrap(), root, "root regenerated on restart");
    assert_eq!(fs::read_to_string(data.join("admin.token")).unwrap(), token, "admin token rewritten");
    assert!(!s.log().contains("CA initialized"), "nothing may be regenerated on restart");
    // The old admin token, passed explicitly, still works.
    let out = s.cli_cmd().args(["--token", token.trim(), "pki", "status"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn second_serve_on_the_same_directory_is_refused() {
    let dir = tmp();
    let _s = Server::start(dir.path(), &[]);
    let (log, why) = match Server::try_start(dir.path(), &[]) {
        Ok(_) => panic!("a second server started on the same data directory"),
        Err(e) => e,
    };
    assert!(why.contains("exited"), "{why}");
    assert!(log.contains("another trustmesh process is using data directory"), "{log}");
}

#[test]
fn bad_configuration_exits_64_before_binding() {
    let dir = tmp();
    for (args, needle) in [
        (vec!["--trust-domain", "Upper.Example"], "--trust-domain"),
        (vec!["--svid-ttl", "soon"], "--svid-ttl"),
        (vec!["--database-url", "mysql://db"], "--database-url"),
    ] {
        let out = std::process::Command::new(server::BIN)
            .arg("--data-dir")
            .arg(dir.path().join("never"))
            .arg("serve")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(!dir.path().join("never").exists(), "bad config must stop before touching the data directory");
    }
}

/// Checks the X.509-SVID profile of a PEM certificate with openssl.
fn assert_svid_profile(cert: &std::path::Path, spiffe_id: &str) {
    let text = openssl_ok(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
    assert_eq!(text.matches("URI:spiffe://").count(), 1, "exactly one SPIFFE URI SAN:\n{text}");
    assert!(text.contains(&format!("URI:{spiffe_id}")), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("TLS Web Server Authentication") && text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    let serial = openssl_ok(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"]);
    let hex = serial.trim().trim_start_matches("serial=").trim_start_matches('0');
    assert!(hex.len() * 4 >= 128, "serial {hex} has fewer than 128 bits");
}

fn not_after_within(cert: &std::path::Path, max_seconds: i64) {
    let out = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-checkend", &max_seconds.to_string()]);
    assert!(!out.status.success(), "notAfter is later than {max_seconds}s from now");
    let out =
        openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-checkend", &(max_seconds - 120).to_string()]);
    assert!(out.status.success(), "notAfter is earlier than expected");
}

#[test]
fn signed_and_generated_certificates_pass_openssl() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let bundle = s.bundle_path();
    for (i, kind) in ["ec", "ec384", "rsa2048", "ed25519"].iter().enumerate() {
        let id = format!("spiffe://{TD}/svc/csr-{i}");
        let csr = make_csr(dir.path(), &format!("k{i}"), kind, &[&id]);
        let token = s.bootstrap_token(&format!("svc-{i}"), &[&id], &["--single-use"]);
        let cert = dir.path().join(format!("k{i}.pem"));
        let out = s
            .cli_cmd()
            .args(["--token", &token, "pki", "cert", "sign-csr", "--csr"])
            .arg(&csr)
            .args(["--spiffe-id", &id, "--ttl-hours", "2", "--output-cert"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
        let pem = fs::read_to_string(&cert).unwrap();
        assert_eq!(pem_blocks(&pem, "CERTIFICATE").len(), 2, "leaf followed by its intermediate");
        let verified = openssl_ok(&["verify", "-CAfile", bundle.to_str().unwrap(), cert.to_str().unwrap()]);
        assert!(verified.contains("OK"), "{verified}");
        assert_svid_profile(&cert, &id);
        not_after_within(&cert, 2 * 3600 + 60);
        if kind.starts_with("rsa") {
            let text = openssl_ok(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
            assert!(text.contains("Key Encipherment"), "RSA leaf needs keyEncipherment");
        }
    }
    let id = format!("spiffe://{TD}/gateway/gateway-a");
    let (cert, key) = (dir.path().join("gw.pem"), dir.path().join("gw.key"));
    let out = s
        .cli_cmd()
        .args([
            "pki",
            "cert",
            "generate",
            "--common-name",
            "gateway-a",
            "--spiffe-id",
            &id,
            "--dns-name",
            "gw.example.org",
            "--ttl-hours",
            "24",
            "--output-cert",
        ])
        .arg(&cert)
        .arg("--output-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[ok] Certificate generated"));
    assert_eq!(mode(&key), 0o600);
    openssl_ok(&["verify", "-CAfile", bundle.to_str().unwrap(), cert.to_str().unwrap()]);
    assert_svid_profile(&cert, &id);
    not_after_within(&cert, 24 * 3600 + 60);
    let text = openssl_ok(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains("DNS:gw.example.org"));
    // The key matches the certificate.
    let pubkey_cert = openssl_ok(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
    let pubkey_key = openssl_ok(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert_eq!(pubkey_cert, pubkey_key);
    let listed = s.json(&["pki", "cert", "list", "--spiffe-id", &id]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["status"], "active");
}

#[test]
fn revoked_serial_is_listed_in_a_verifiable_crl() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let id = format!("spiffe://{TD}/svc/revoke-me");
    s.generate(dir.path(), "c", &id, &["--ttl-hours", "1"]);
    let serial = s.json(&["pki", "cert", "list", "--spiffe-id", &id])[0]["serial"].as_str().unwrap().to_string();
    let before = String::from_utf8(s.get("/pki/crl").1).unwrap();
    assert!(!before.to_lowercase().contains(&serial));
    let revoked = s.json(&["pki", "cert", "revoke", &serial, "--reason", "keyCompromise"]);
    assert_eq!(revoked["status"], "revoked");
    // The command returns once the revocation is durable; the new CRLs are
    // published right after it (within a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let body = loop {
        let (code, body) = s.get("/pki/crl");
        assert_eq!(code, 200);
        let body = String::from_utf8(body).unwrap();
        if body != before || std::time::Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let crls = pem_blocks(&body, "X509 CRL");
    assert!(crls.len() >= 2, "one CRL per CA with an online key");
    let bundle = s.bundle_path();
    let mut listed = false;
    for (i, crl) in crls.iter().enumerate() {
        let f = dir.path().join(format!("crl{i}.pem"));
        fs::write(&f, crl).unwrap();
        let out = openssl(&[
            "crl",
            "-in",
            f.to_str().unwrap(),
            "-CAfile",
            bundle.to_str().unwrap(),
            "-verify",
            "-noout",
            "-text",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.contains("verify OK"), "CRL {i} does not verify: {stderr}");
        let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
        if text.contains(&serial.to_uppercase()) {
            listed = true;
            assert!(text.contains("KEY COMPROMISE"), "{text}");
        }
    }
    assert!(listed, "serial {serial} not in any CRL");
    // DER form of the Services CA's CRL.
    let (code, der) = s.get("/pki/crl?format=der");
    assert_eq!(code, 200);
    let f = dir.path().join("crl.der");
    fs::write(&f, der).unwrap();
    let text = openssl_ok(&["crl", "-inform", "DER", "-in", f.to_str().unwrap(), "-noout", "-text"]);
    assert!(text.to_uppercase().contains(&serial.to_uppercase()));
    // Revoking again is reported, not an error; an unknown serial is.
    let again = s.ok(&["pki", "cert", "revoke", &serial]);
    assert!(again.contains("already revoked"), "{again}");
    let err = s.fails(&["pki", "cert", "revoke", "0102030405060708090a0b0c0d0e0f1011"]);
    assert!(err.contains("no certificate with serial"), "{err}");
    assert!(s.fails(&["pki", "cert", "revoke", "not-hex"]).contains("serial"));
    // The listed record says so too.
    assert_eq!(s.json(&["pki", "cert", "list", "--spiffe-id", &id])[0]["status"], "revoked");
}

#[test]
fn http_endpoints_answer() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    assert_eq!(s.get("/health").0, 200);
    assert_eq!(s.get("/ready").0, 200);
    let (code, bundle) = s.get("/pki/ca/bundle");
    assert_eq!(code, 200);
    assert_eq!(String::from_utf8(bundle).unwrap(), fs::read_to_string(s.bundle_path()).unwrap());
    let (code, jwks) = s.get("/pki/jwks");
    assert_eq!(code, 200);
    let jwks: Value = serde_json::from_slice(&jwks).unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(s.get("/pki/crl?format=xml").0, 400);
    assert_eq!(s.get("/nope").0, 404);
    // Issue and deny something so the issuance and revocation metrics exist.
    s.generate(dir.path(), "m", "spiffe://example.org/m/one", &[]);
    s.ok(&["pki", "identity", "deny", "spiffe://example.org/m/one", "--reason", "metrics"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let metrics = loop {
        let metrics = String::from_utf8(s.get("/metrics").1).unwrap();
        if metric(&metrics, "trustmesh_pki_deny_list_size") == Some(1.0) || std::time::Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    for name in [
        "trustmesh_pki_cert_issued_total",
        "trustmesh_pki_csr_sign_duration_seconds",
        "trustmesh_pki_ca_expiry_seconds",
        "trustmesh_pki_active_cert_count",
        "trustmesh_pki_deny_list_size",
        "trustmesh_pki_crl_build_duration_seconds_count",
        "trustmesh_pki_crl_size_bytes",
        "trustmesh_pki_crl_next_update_seconds",
    ] {
        assert!(metrics.contains(name), "metric {name} missing:\n{metrics}");
    }
    assert!(metrics.contains("algorithm=\"EC-P256\""), "{metrics}");
    for (name, value) in [
        ("trustmesh_pki_deny_list_size", 1.0),
        ("trustmesh_pki_cert_revoked_total", 1.0),
        ("trustmesh_pki_identity_denied_total", 1.0),
    ] {
        assert_eq!(metric(&metrics, name), Some(value), "{name}:\n{metrics}");
    }
    assert!(metric(&metrics, "trustmesh_pki_crl_size_bytes").is_some_and(|b| b > 100.0), "{metrics}");
}

/// The value of an unlabelled (but for the OpenTelemetry scope) Prometheus sample.
#[test]
fn bad_csrs_are_refused_audited_and_the_server_keeps_serving() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let d = dir.path();
    let id = format!("spiffe://{TD}/svc/bad");
    let good = make_csr(d, "good", "ec", &[&id]);
    let good_pem = fs::read_to_string(&good).unwrap();
    let der = d.join("good.der");
    openssl_ok(&["req", "-in", good.to_str().unwrap(), "-outform", "DER", "-out", der.to_str().unwrap()]);
    let der_bytes = fs::read(&der).unwrap();

    let garbage = d.join("garbage.csr");
    fs::write(&garbage, b"this is not a certificate request at all").unwrap();
    let truncated = d.join("truncated.csr");
    fs::write(&truncated, &der_bytes[..der_bytes.len() / 2]).unwrap();
    let wrong_label = d.join("label.csr");
    fs::write(&wrong_label, good_pem.replace("CERTIFICATE REQUEST", "PRIVATE KEY")).unwrap();
    // Flip one bit of the signature (the last bytes of the DER).
    let mut bad_sig = der_bytes.clone();
    let n = bad_sig.len();
    bad_sig[n - 3] ^= 0x01;
    let bad_sig_path = d.join("badsig.csr");
    fs::write(&bad_sig_path, &bad_sig).unwrap();
    let no_uri = make_csr(d, "nouri", "ec", &[]);
    let two_uris = make_csr(d, "twouri", "ec", &[&id, &format!("spiffe://{TD}/svc/other")]);
    let foreign = make_csr(d, "foreign", "ec", &["spiffe://other.org/svc/bad"]);
    let rsa1024 = make_csr(d, "rsa1024", "rsa1024", &[&id]);
    let someone_else = format!("spiffe://{TD}/svc/someone-else");

    let cases: Vec<(&std::path::Path, &str, &str)> = vec![
        (&garbage, &id, "csr"),
        (&truncated, &id, "csr"),
        (&wrong_label, &id, "PRIVATE KEY"),
        (&bad_sig_path, &id, "signature"),
        (&no_uri, &id, "uri"),
        (&two_uris, &id, "uri"),
        (&foreign, "spiffe://other.org/svc/bad", "trust domain"),
        (&rsa1024, &id, "1024"),
        (&good, "spiffe://example.org/svc/../bad", "dot segments"),
        (&good, "spiffe://Example.org/svc/bad", "lowercase"),
        (&good, &someone_else, "asks for"),
    ];
    for (csr, want_id, needle) in cases {
        let out = d.join("never.pem");
        let err = s.fails(&[
            "pki",
            "cert",
            "sign-csr",
            "--csr",
            csr.to_str().unwrap(),
            "--spiffe-id",
            want_id,
            "--output-cert",
            out.to_str().unwrap(),
        ]);
        assert!(err.to_lowercase().contains(&needle.to_lowercase()), "{csr:?}: {err}");
        assert!(!out.exists(), "nothing written on failure");
        assert_refusal_audited(&s, needle);
        still_serving(&s);
    }
    // After all that, the good CSR still signs.
    let out = d.join("good.pem");
    s.ok(&[
        "pki",
        "cert",
        "sign-csr",
        "--csr",
        good.to_str().unwrap(),
        "--spiffe-id",
        &id,
        "--output-cert",
        out.to_str().unwrap(),
    ]);
    openssl_ok(&["verify", "-CAfile", s.bundle_path().to_str().unwrap(), out.to_str().unwrap()]);
}

#[test]
fn oversized_request_is_refused() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let big = dir.path().join("big.csr");
    fs::write(&big, vec![b'A'; 1024 * 1024 + 512]).unwrap();
    let err = s.fails(&[
        "pki",
        "cert",
        "sign-csr",
        "--csr",
        big.to_str().unwrap(),
        "--spiffe-id",
        "spiffe://example.org/a/b",
        "--output-cert",
        "/dev/null",
    ]);
    assert!(err.contains("1 MiB"), "{err}");
    assert_refusal_audited(&s, "1 MiB");
    still_serving(&s);
}

/// Signs arbitrary claims with the server's real token key, as an attacker who
/// stole it could not but a test with the data directory can.
fn forge(data: &std::path::Path, claims: Value) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = trustmesh::store::open(&format!("sqlite://{}", data.join("trustmesh.db").display())).await.unwrap();
        let kek = trustmesh::ca::Kek::from_file_contents(&fs::read_to_string(data.join("kek")).unwrap()).unwrap();
        let key = store.signing_keys().await.unwrap().into_iter().find(|k| k.purpose == "token").unwrap();
        let der = kek.open(&key.sealed_key, key.kid.as_bytes()).unwrap();
        let signer = trustmesh::token::Es256Signer::from_pkcs8(key.kid.clone(), &der).unwrap();
        signer.sign(&claims).unwrap()
    })
}

fn b64(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

#[test]
fn bad_tokens_are_refused_and_audited() {
    let dir = tmp();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let base = json!({
        "iss": "trustmesh/example.org", "sub": "ops", "aud": "trustmesh", "iat": now, "nbf": now,
        "exp": now + 600, "jti": "t-1", "principal": "admin"
    });
    let with = |patch: Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // The forge works: a well-formed token is accepted.
    let good = forge(&data, base.clone());
    assert!(s.cli_cmd().args(["--token", &good, "pki", "status"]).output().unwrap().status.success());

    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(serde_json::to_vec(&with(json!({"sub": "root"}))).unwrap().as_slice()),
        parts[2]
    );
    let alg_none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let hs256 = {
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, fs::read_to_string(s.bundle_path()).unwrap().as_bytes());
        let tag = ring::hmac::sign(&key, format!("{header}.{}", parts[1]).as_bytes());
        format!("{header}.{}.{}", parts[1], b64(tag.as_ref()))
    };
    let cases = vec![
        (forge(&data, with(json!({"exp": now - 3600, "iat": now - 7200, "nbf": now - 7200}))), "expired"),
        (forge(&data, with(json!({"nbf": now + 3600, "iat": now + 3600}))), "not valid before"),
        (tampered, "signature"),
        (alg_none, "none"),
        (hs256, "hs256"),
        (forge(&data, with(json!({"aud": "someone-else"}))), "audience"),
        (forge(&data, with(json!({"iss": "evil"}))), "issuer"),
        (
            forge(&data, with(json!({"cnf": {"x5t#S256": "Rvc6LtXrtcjJsf0zZacc2MCETnUOWu59cz3H4ohh4-o"}}))),
            "certificate",
        ),
        ("not.a.jwt".to_string(), "token"),
    ];
    for (token, needle) in cases {
        let out = s.cli_cmd().args(["--token", &token, "pki", "status"]).output().unwrap();
        assert!(!out.status.success(), "{needle}: accepted");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("unauthenticated") && err.contains(needle), "{needle}: {err}");
        let last = audit(&s).last().cloned().unwrap();
        assert_eq!(last["actor"], "anonymous");
        assert!(last["reason"].as_str().unwrap().to_lowercase().contains(needle), "{needle}: {last}");
        still_serving(&s);
    }

    // A replayed single-use bootstrap token.
    let id = format!("spiffe://{TD}/svc/once");
    let csr = make_csr(dir.path(), "once", "ec", &[&id]);
    let token = s.bootstrap_token("once", &[&id], &["--single-use"]);
    let sign = |t: &str| {
        s.cli_cmd()
            .args([
                "--token",
                t,
                "pki",
                "cert",
                "sign-csr",
                "--csr",
                csr.to_str().unwrap(),
                "--spiffe-id",
                &id,
                "--output-cert",
                dir.path().join("once.pem").to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    assert!(sign(&token).status.success());
    let replay = sign(&token);
    assert!(!replay.status.success());
    assert!(String::from_utf8_lossy(&replay.stderr).contains("already used"));
    assert_refusal_audited(&s, "already used");

    // A token bound to another certificate, presented with a real client certificate.
    let (cert, key) = s.generate(dir.path(), "client", "spiffe://example.org/ops/laptop", &[]);
    let bound_elsewhere =
        s.ok(&["token", "mint", "admin", "ops", "--cert-fingerprint", "Rvc6LtXrtcjJsf0zZacc2MCETnUOWu59cz3H4ohh4-o"]);
    let out = s
        .cli_cmd()
        .args([
            "--token",
            bound_elsewhere.trim(),
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
            "pki",
            "status",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).to_lowercase().contains("mismatch")
            || String::from_utf8_lossy(&out.stderr).to_lowercase().contains("does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bound to the certificate actually presented: accepted.
    let der = openssl_ok(&["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"]);
    let _ = der;
    let der_bytes = openssl(&["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"]).stdout;
    let thumb = b64(ring::digest::digest(&ring::digest::SHA256, &der_bytes).as_ref());
    let bound_here = s.ok(&["token", "mint", "admin", "ops", "--cert-fingerprint", &thumb]);
    let out = s
        .cli_cmd()
        .args([
            "--token",
            bound_here.trim(),
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
            "pki",
            "status",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without the certificate the bound token is refused.
    let out = s.cli_cmd().args(["--token", bound_here.trim(), "pki", "status"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn policy_and_deny_list_are_enforced_at_issuance() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let d = dir.path();
    let id = format!("spiffe://{TD}/orchestrator/node-a");
    let csr = make_csr(d, "node-a", "ec", &[&id]);
    let out_cert = d.join("node-a.pem");
    let sign_with = |token: &str, want: &str| {
        s.cli_cmd()
            .args([
                "--token",
                token,
                "pki",
                "cert",
                "sign-csr",
                "--csr",
                csr.to_str().unwrap(),
                "--spiffe-id",
                want,
                "--output-cert",
                out_cert.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    // A node token may sign its own identity (last segment = node id) ...
    let node = s.ok(&["token", "mint", "node", "node-a"]).trim().to_string();
    let out = sign_with(&node, &id);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // ... but not admin actions, and not someone else's identity.
    let out = s.cli_cmd().args(["--token", &node, "pki", "identity", "deny", &id, "--reason", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    assert_refusal_audited(&s, "permission");
    let other = s.ok(&["token", "mint", "node", "node-b"]).trim().to_string();
    let out = sign_with(&other, &id);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    // A bootstrap token for another identity is refused by policy.
    let boot = s.bootstrap_token("elsewhere", &["spiffe://example.org/svc/elsewhere"], &[]);
    assert!(!sign_with(&boot, &id).status.success());

    // Deny: the existing certificate is revoked and the next signing refused.
    let denied = s.json(&["pki", "identity", "deny", &id, "--reason", "Key compromise — incident #1234"]);
    assert_eq!(denied.as_array().unwrap().len(), 1, "the issued certificate is revoked: {denied}");
    let listed = s.ok(&["pki", "identity", "list-denied"]);
    assert!(listed.contains(&id) && listed.contains("incident #1234"), "{listed}");
    let out = sign_with(&node, &id);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("denied") && err.contains("incident #1234"), "{err}");
    assert_refusal_audited(&s, "denied");
    assert!(s.log().contains("identity is on the deny list"));
    // Allow again: signing works, the old serial stays revoked.
    s.ok(&["pki", "identity", "allow", &id]);
    assert!(sign_with(&node, &id).status.success());
    let certs = s.json(&["pki", "cert", "list", "--spiffe-id", &id]);
    let statuses: Vec<&str> = certs.as_array().unwrap().iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert!(statuses.contains(&"revoked") && statuses.contains(&"active"), "{statuses:?}");
    still_serving(&s);
}

#[test]
fn server_log_never_contains_keys_or_tokens() {
    let dir = tmp();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, &[]);
    let d = dir.path();
    let id = format!("spiffe://{TD}/svc/secret-check");
    let (_, key) = s.generate(d, "s", &id, &[]);
    let token = s.bootstrap_token("secret-check", &[&id], &[]);
    let csr = make_csr(d, "sc", "ec", &[&id]);
    let out = s
        .cli_cmd()
        .args([
            "--token",
            &token,
            "pki",
            "cert",
            "sign-csr",
            "--csr",
            csr.to_str().unwrap(),
            "--spiffe-id",
            &id,
            "--output-cert",
            d.join("sc.pem").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let serial = s.json(&["pki", "cert", "list", "--spiffe-id", &id])[0]["serial"].as_str().unwrap().to_string();
    s.ok(&["pki", "cert", "revoke", &serial]);
    s.ok(&["pki", "identity", "deny", &id, "--reason", "test"]);
    let _ = s.cli_cmd().args(["--token", "garbage.token.value", "pki", "status"]).output();
    s.stop();
    let log = s.log();
    let admin_token = fs::read_to_string(data.join("admin.token")).unwrap();
    let kek = fs::read_to_string(data.join("kek")).unwrap();
    let key_pem = fs::read_to_string(&key).unwrap();
    let key_body: String = key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let secrets = [
        ("admin token", admin_token.trim().to_string()),
        ("admin token signature", admin_token.trim().rsplit('.').next().unwrap().to_string()),
        ("bootstrap token", token.clone()),
        ("bootstrap token signature", token.rsplit('.').next().unwrap().to_string()),
        ("KEK", kek.trim().to_string()),
        ("generated private key", key_body.chars().take(40).collect()),
    ];
    assert!(log.lines().count() > 10, "the log was captured");
    for (what, secret) in secrets {
        assert!(secret.len() > 20);
        assert!(!log.contains(&secret), "{what} appears in the server log");
    }
    assert!(!log.contains("PRIVATE KEY"));
}

#[test]
fn policy_check_explains_allow_and_deny() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(server::BIN).args(["policy", "check"]).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, _) = run(&[
        "--principal",
        "Node::\"node-a\"",
        "--action",
        "sign_csr",
        "--resource",
        "spiffe://example.org/orchestrator/node-a",
    ]);
    assert!(ok);
    assert!(out.contains("ALLOW") && out.contains("node-own-identity"), "{out}");
    let (ok, out, _) = run(&[
        "--principal",
        "Node::\"node-a\"",
        "--action",
        "sign_csr",
        "--resource",
        "spiffe://example.org/orchestrator/node-b",
    ]);
    assert!(ok);
    assert!(out.contains("DENY"), "{out}");
    let (ok, out, _) =
        run(&["--principal", "Admin::\"ops\"", "--action", "deny_identity", "--resource", "spiffe://example.org/x/y"]);
    assert!(ok && out.contains("ALLOW") && out.contains("admin-all"), "{out}");
    let out = std::process::Command::new(server::BIN)
        .args([
            "--output",
            "json",
            "policy",
            "check",
            "--principal",
            "Bootstrap::\"svc\"",
            "--spiffe-id",
            "spiffe://example.org/svc/a",
            "--action",
            "sign_csr",
            "--resource",
            "spiffe://example.org/svc/a",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "ALLOW");
    assert_eq!(v["policy_ids"], json!(["bootstrap-minted-for"]));
    // A custom policy directory changes the decision.
    let dir = tmp();
    fs::write(dir.path().join("only.cedar"), "@id(\"nodes-never\")\nforbid(principal is Trustmesh::Node, action, resource);\n@id(\"admins\")\npermit(principal is Trustmesh::Admin, action, resource);\n").unwrap();
    let (ok, out, _) = run(&[
        "--policy-dir",
        dir.path().to_str().unwrap(),
        "--principal",
        "Node::\"node-a\"",
        "--action",
        "sign_csr",
        "--resource",
        "spiffe://example.org/orchestrator/node-a",
    ]);
    assert!(ok && out.contains("DENY") && out.contains("nodes-never"), "{out}");
    let (ok, _, err) =
        run(&["--principal", "Nobody::\"x\"", "--action", "sign_csr", "--resource", "spiffe://example.org/a"]);
    assert!(!ok && err.starts_with("error: "), "{err}");
}

fn fingerprint_of(cert: &std::path::Path) -> String {
    let out = openssl_ok(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-fingerprint", "-sha256"]);
    out.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase()
}

#[test]
fn pki_init_imports_a_root_and_refuses_a_second_init() {
    let dir = tmp();
    let d = dir.path();
    let data = d.join("data");
    let (cert, key) = support::openssl::openssl_root(d);
    let run = |args: &[&str]| {
        std::process::Command::new(server::BIN).arg("--data-dir").arg(&data).args(args).output().unwrap()
    };
    let out = run(&["pki", "init", "--import-cert", cert.to_str().unwrap(), "--import-key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["pki", "init"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already initialized"));
    let s = Server::start(&data, &[]);
    let status = s.json(&["pki", "status"]);
    assert_eq!(status["root"]["fingerprint"].as_str().unwrap(), fingerprint_of(&cert));
    let (leaf, _) = s.generate(d, "leaf", "spiffe://example.org/svc/x", &[]);
    openssl_ok(&[
        "verify",
        "-CAfile",
        cert.to_str().unwrap(),
        "-untrusted",
        leaf.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
}

#[test]
fn pki_init_imports_an_intermediate_and_keeps_the_root_offline() {
    let dir = tmp();
    let d = dir.path();
    let data = d.join("data");
    let (root, root_key) = support::openssl::openssl_root(d);
    let (chain, ikey) = support::openssl::openssl_intermediate(d, &root, &root_key);
    // A key that does not match is refused.
    let out = server::pki_init_import(&data, &chain, &root_key);
    assert!(!out.status.success(), "a mismatched key was accepted");
    let out = server::pki_init_import(&data, &chain, &ikey);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = Server::start(&data, &[]);
    let status = s.json(&["pki", "status"]);
    assert_eq!(status["root"]["fingerprint"].as_str().unwrap(), fingerprint_of(&root));
    assert_eq!(status["root"]["key_online"], false);
    let err = s.fails(&["pki", "ca", "create-intermediary", "--common-name", "New CA"]);
    assert!(err.contains("offline"), "{err}");
    // A rotation step that needs the root key names the root whose key is missing.
    let err = s.fails(&["pki", "ca", "prepare", "--role", "services"]);
    assert!(err.contains("offline") && err.contains(status["root"]["common_name"].as_str().unwrap()), "{err}");
    let (leaf, _) = s.generate(d, "leaf", "spiffe://example.org/svc/x", &[]);
    openssl_ok(&["verify", "-CAfile", s.bundle_path().to_str().unwrap(), leaf.to_str().unwrap()]);
}

#[test]
fn the_local_socket_has_the_spec_modes_and_survives_a_crash() {
    let dir = tmp();
    let data = dir.path().join("data");
    let socket = Server::socket_path(&data);
    let mut s = Server::start(&data, &[]);
    assert_eq!(mode(&socket), 0o777);
    assert_eq!(mode(socket.parent().unwrap()), 0o755);
    assert!(s.log().contains(socket.to_str().unwrap()), "the ready line names the socket");
    // Another server may not steal a live socket.
    let other = dir.path().join("other");
    let (log, _) = match Server::try_start(&other, &["--socket", socket.to_str().unwrap()]) {
        Ok(_) => panic!("a second server took over a live socket"),
        Err(e) => e,
    };
    assert!(log.contains("another process is listening"), "{log}");
    // A crash leaves the socket file behind; the next start replaces it.
    s.kill();
    assert!(socket.exists());
    let s = Server::start(&data, &[]);
    assert_eq!(mode(&socket), 0o777);
    assert!(s.log().contains("removing a stale socket"));
}
