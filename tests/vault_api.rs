//! The OpenBao-compatible PKI API (SPEC §15) end to end, with real clients:
//! the PyPI hvac client, unmodified, and `cryptography` for keys and CSRs
//! (`tests/vault_py/*.py`, run by the `.venv` Python that
//! `scripts/install-test-deps.sh` builds; they fail, never skip, without
//! it), openssl as the independent verifier, the trustmesh CLI, and a real
//! Envoy of the mesh that must refuse a profile certificate.
//!
//! nextest runs each test in its own process, so each test starts one
//! `trustmesh serve` and runs every script it needs against that one server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::envoy::bootstrap::server_bootstrap;
use support::envoy::http::Upstream;
use support::envoy::{Envoy, envoy_bin};
use support::openssl::{crl_serials_of, mtls_get, normalize_serial, openssl_ok, openssl_verify, pem_blocks};
use support::process::{poll, wait_or_kill};
use support::server::{Server, entry_for};
use support::{mode, venv_python};

/// The tenant service's node token may use these profiles and revoke; nothing else.
const CMK_POLICY: &str = r#"
@id("cmk-tenant-profiles")
permit (
  principal == Trustmesh::Node::"cmk-api",
  action == Trustmesh::Action::"use_profile",
  resource is Trustmesh::Profile
)
when {
  resource == Trustmesh::Profile::"pki/tenant-client" ||
  resource == Trustmesh::Profile::"pki_client_certs/openkcm-client-cert-role"
};

@id("cmk-revokes")
permit (principal == Trustmesh::Node::"cmk-api", action == Trustmesh::Action::"revoke_certificate", resource);
"#;

/// `trustmesh serve` with two mounts and the embedded policies plus [`CMK_POLICY`].
fn start(dir: &Path) -> Server {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/policy/default.cedar");
    std::fs::copy(default, policies.join("default.cedar")).unwrap();
    std::fs::write(policies.join("cmk.cedar"), CMK_POLICY).unwrap();
    let policy_dir = policies.to_str().unwrap();
    Server::start(&dir.join("data"), &["--policy-dir", policy_dir, "--pki-mount", "pki,pki_client_certs"])
}

fn admin_token(s: &Server) -> String {
    std::fs::read_to_string(s.data_dir.join("admin.token")).unwrap().trim().to_string()
}

/// Runs `tests/vault_py/<script>` against `s` (two minutes at most) with
/// the admin token and `env`; its files go to `out`.
fn run_py(s: &Server, script: &str, out: &Path, env: &[(&str, &str)]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vault_py").join(script);
    let mut cmd = Command::new(venv_python());
    cmd.arg(&path)
        .env("VAULT_ADDR", format!("https://{}", s.api))
        .env("VAULT_CACERT", s.bundle_path())
        .env("VAULT_TOKEN", admin_token(s))
        .env("OUT", out)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    wait_or_kill(&mut child, Duration::from_secs(120));
    let result = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    assert!(
        result.status.success() && stdout.trim_end().ends_with("ok"),
        "{script} failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        result.status,
        s.log_tail(30)
    );
}

fn audit(s: &Server) -> Vec<Value> {
    s.json(&["audit", "list", "--limit", "5000"]).as_array().unwrap().clone()
}

/// Audit records of `action` with `outcome` whose reason or target mentions `needle`.
fn audited(records: &[Value], action: &str, outcome: &str, needle: &str) -> usize {
    records
        .iter()
        .filter(|r| r["action"] == action && r["outcome"] == outcome)
        .filter(|r| format!("{} {}", r["target"], r["reason"]).contains(needle))
        .count()
}

/// The server is still serving, and nothing it logged is a panic or a secret.
fn healthy_and_discreet(s: &Server, secrets: &[&str]) {
    assert_eq!(s.json(&["pki", "status"])["health"], "HEALTHY");
    let log = s.log();
    assert!(!log.contains("panicked"), "{}", s.log_tail(40));
    for secret in secrets {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    assert!(!log.contains("PRIVATE KEY"), "a private key reached the log");
}

/// hvac's PKI flow (role, issue, sign, read, list, revoke, CRL, CA chain,
/// delete), checked again with openssl; then bad input of every kind, each
/// refused as Vault refuses it and audited.
#[test]
fn hvac_against_trustmesh_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    run_py(&s, "hvac_flow.py", &out, &[]);

    // openssl: both certificates chain to the CA chain hvac read; the
    // revoked one is in the CRL, the other is not.
    let result: Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let chain = out.join("chain.pem");
    let crl = std::fs::read_to_string(out.join("crl.pem")).unwrap();
    let crls = pem_blocks(&crl, "X509 CRL");
    let listed = crl_serials_of(&out, &crls[0]);
    assert!(listed.contains(&normalize_serial(result["revoked"].as_str().unwrap())), "{listed:?}");
    assert!(!listed.contains(&normalize_serial(result["signed"].as_str().unwrap())));
    // The SVID revoked through the PKI API is in the mesh's CRLs when revoke answered.
    let svid = normalize_serial(result["svid"].as_str().unwrap());
    assert!(s.crl_serials(&out).contains(&svid), "the mesh's CRLs miss the SVID revoked through /v1");
    let text = openssl_ok(&["crl", "-in", out.join("crl.pem").to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains("trustmesh Profiles CA"), "the mount's CRL is the profiles CA's first: {text}");
    for (name, revoked) in [("issued", true), ("signed", false)] {
        let leaf = std::fs::read_to_string(out.join(format!("{name}.pem"))).unwrap();
        let ok = openssl_ok(&[
            "verify",
            "-CAfile",
            chain.to_str().unwrap(),
            out.join(format!("{name}.pem")).to_str().unwrap(),
        ]);
        assert!(ok.contains(": OK"), "{ok}");
        let (valid, text) = openssl_verify(&out, name, &[leaf], &chain, &crl);
        assert_eq!(valid, !revoked, "{name}: {text}");
        if revoked {
            assert!(text.contains("certificate revoked"), "{text}");
        }
    }

    let node = s.ok(&["token", "mint", "node", "cmk-api"]).trim().to_string();
    let once = s.ok(&["token", "mint", "node", "cmk-api", "--single-use"]).trim().to_string();
    run_py(&s, "bad_input.py", &out, &[("NODE_TOKEN", &node), ("SINGLE_USE_TOKEN", &once)]);

    let records = audit(&s);
    for (action, outcome, needle) in [
        ("issue_certificate", "error", "unknown role: nope"),
        ("issue_certificate", "error", "not allowed by this role"),
        ("issue_certificate", "denied", "anonymous"),
        ("use_profile", "denied", "pki/web"),
        ("manage_profiles", "denied", "pki/tenant-client"),
        ("sign_csr", "denied", "already used"),
        ("pki_api", "error", "failed to parse JSON"),
        ("pki_api", "error", "larger than"),
        ("pki_api", "error", "unsupported path"),
        ("pki_api", "error", "unsupported operation"),
        ("sign_csr", "error", "at least 2048 bits"),
        ("sign_csr", "error", "proof of possession"),
        ("revoke_certificate", "ok", ""),
        ("manage_profiles", "ok", "deleted"),
        ("read_profiles", "ok", "pki/web-clients"),
        ("read_certificates", "ok", "certificates listed"),
    ] {
        let found = match needle {
            "anonymous" => records.iter().filter(|r| r["actor"] == "anonymous" && r["outcome"] == outcome).count(),
            _ => audited(&records, action, outcome, needle),
        };
        assert!(found > 0, "no {outcome} audit record of {action} mentioning {needle:?}");
    }
    healthy_and_discreet(&s, &[&admin_token(&s), &node, &once]);
}

/// Seed 003: a tenant profile on the mount `pki_client_certs`, a tenant
/// service with a node token, issue, renew ahead of expiry, test the new
/// certificate with a TLS handshake, revoke the old one; the audit trail
/// holds every step. The same profiles from the CLI.
#[test]
fn seed_003_tenant_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let node = s.ok(&["token", "mint", "node", "cmk-api"]).trim().to_string();
    run_py(&s, "seed003.py", &out, &[("NODE_TOKEN", &node)]);
    assert_eq!(mode(&out.join("tenant-1.key")), 0o600);

    let serials: Value = serde_json::from_str(&std::fs::read_to_string(out.join("seed003.json")).unwrap()).unwrap();
    let (old, new) =
        (normalize_serial(serials["old"].as_str().unwrap()), normalize_serial(serials["new"].as_str().unwrap()));
    let records = audit(&s);
    let tenant = "tenant-acme-corp-12345";
    let issued: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "issue_certificate" && r["outcome"] == "ok" && r["target"] == tenant)
        .collect();
    assert_eq!(issued.len(), 2, "both certificates of the tenant are audited: {issued:?}");
    assert!(issued.iter().all(|r| r["actor"] == "Node::\"cmk-api\""), "{issued:?}");
    assert!(issued.iter().any(|r| r["reason"].as_str().unwrap().contains(&new)));
    let revocation = records.iter().find(|r| r["action"] == "revoke_certificate" && r["outcome"] == "ok").unwrap();
    assert_eq!(normalize_serial(revocation["target"].as_str().unwrap()), old);
    assert!(s.crl_serials(dir.path()).is_empty(), "the mesh's CRLs do not list a tenant certificate");

    // The same profiles through the CLI.
    let listed = s.ok(&["pki", "profile", "list", "--mount", "pki_client_certs"]);
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["keystore-server", "openkcm-client-cert-role"]);
    let shown = s.json(&["pki", "profile", "show", "openkcm-client-cert-role", "--mount", "pki_client_certs"]);
    assert_eq!((shown["key_type"].as_str(), shown["client_flag"].as_bool()), (Some("ec"), Some(true)));
    let tenant_profile = ["--profile", "pki_client_certs/openkcm-client-cert-role", "--common-name"];
    let (cert, key) = s.generate_with(dir.path(), "globex", &[&tenant_profile[..], &["tenant-globex"]].concat());
    assert_eq!(mode(&key), 0o600);
    let chain = out.join("chain.pem");
    let ok = openssl_ok(&["verify", "-CAfile", chain.to_str().unwrap(), cert.to_str().unwrap()]);
    assert!(ok.contains(": OK"), "{ok}");
    let text = openssl_ok(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-subject", "-ext", "extendedKeyUsage"]);
    assert!(text.contains("CN = tenant-globex") && text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("Server Authentication"), "{text}");
    let refused = s.try_generate(dir.path(), "acme", &[&tenant_profile[..], &["acme"]].concat()).unwrap_err();
    assert!(refused.contains("common name acme not allowed"), "{refused}");
    s.ok(&[
        "pki",
        "profile",
        "create",
        "short",
        "--key-type",
        "ed25519",
        "--ttl",
        "10m",
        "--allow-any-name",
        "--client-only",
    ]);
    assert!(s.ok(&["pki", "profile", "delete", "short"]).contains("deleted"));
    assert!(s.fails(&["pki", "profile", "show", "short"]).contains("no profile pki/short"));

    // The mesh's bundle does not hold the profiles CA; pki status shows it.
    let bundle = std::fs::read_to_string(s.bundle_path()).unwrap();
    assert_eq!(pem_blocks(&bundle, "CERTIFICATE").len(), 3, "root, Services CA, Transport CA");
    let status = s.json(&["pki", "status"]);
    let roles: Vec<&str> =
        status["intermediates"].as_array().unwrap().iter().filter_map(|c| c["role"].as_str()).collect();
    assert!(roles.contains(&"profiles"), "{status}");
    healthy_and_discreet(&s, &[&admin_token(&s), &node]);
}

const SERVER_ID: &str = "spiffe://example.org/test/envoy-server";
const CLIENT_ID: &str = "spiffe://example.org/test/client";

/// A certificate issued under a profile without a SPIFFE ID comes from the
/// profiles CA, which no bundle or CRL set of the mesh holds: a mesh Envoy
/// refuses it at the handshake, with the SPIFFE validator and with
/// `trusted_ca` + `crl` alike, while it takes an SVID for the same listener.
#[test]
fn a_mesh_envoy_refuses_a_profile_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    entry_for(&s, SERVER_ID, &envoy_bin());
    let upstream = Upstream::start();
    let listener = format!("mtls_in:0:{CLIENT_ID}");
    let envoys: Vec<(&str, Envoy)> =
        [("spiffe", &[][..]), ("trusted_ca+crl", &["--disable-spiffe-cert-validation"][..])]
            .into_iter()
            .map(|(mode, extra)| {
                let node = format!("envoy-{}", mode.replace('+', "-"));
                (mode, Envoy::start(&server_bootstrap(&s, &node, SERVER_ID, &listener, upstream.port(), extra)))
            })
            .collect();

    s.ok(&support::fixtures::TENANT_PROFILE);
    let (tenant_cert, tenant_key) =
        s.generate_with(dir.path(), "tenant", &["--profile", "tenant", "--common-name", "tenant-acme"]);
    let (svid_cert, svid_key) = s.generate(dir.path(), "svid", CLIENT_ID, &[]);
    let issuer = openssl_ok(&["x509", "-in", tenant_cert.to_str().unwrap(), "-noout", "-issuer"]);
    assert!(issuer.contains("trustmesh Profiles CA"), "{issuer}");

    for (mode, envoy) in &envoys {
        let addr = envoy.listener_addr("mtls_in");
        let wait = |what: &str| {
            poll(Duration::from_secs(20), || mtls_get(addr, &svid_cert, &svid_key, "/").ok())
                .unwrap_or_else(|| panic!("{mode}: {what}\n{}", envoy.diagnostics()))
        };
        let status = wait("the SVID is never accepted");
        assert!(status.contains(" 200"), "{mode}: {status}");
        let before = envoy.sum("listener.127.0.0.1_", ".ssl.fail_verify_error");
        let refused = mtls_get(addr, &tenant_cert, &tenant_key, "/");
        assert!(refused.is_err(), "{mode}: the profile certificate was accepted: {refused:?}");
        envoy.wait_until("a verify error", Duration::from_secs(5), |e| {
            e.sum("listener.127.0.0.1_", ".ssl.fail_verify_error") > before
        });
    }
    assert_eq!(upstream.requests(), envoys.len(), "only the SVID's requests reached the backend");
}
