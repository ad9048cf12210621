//! A root whose key stays offline: trustmesh cannot sign its CRL, so the
//! operator signs it with openssl where the key lives and imports it. Without
//! it a chain cannot be checked against CRLs at all (Envoy, like `openssl
//! verify -crl_check_all`, wants a CRL from every CA in the chain); with it a
//! valid leaf verifies and a revoked one is refused. Bad imports are refused
//! with a clear reason and change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::openssl::{openssl, openssl_intermediate, openssl_ok, openssl_root, pem_blocks};
use support::process::poll;
use support::server::{Server, pki_init_import};

/// `openssl ca -gencrl` for the offline root: CRL number `number`, valid
/// for `seconds`, listing nothing.
fn root_crl(d: &Path, root: &Path, key: &Path, number: u32, seconds: u32) -> PathBuf {
    let ca = d.join(format!("ca-{number}"));
    fs::create_dir_all(&ca).unwrap();
    fs::write(ca.join("index.txt"), "").unwrap();
    fs::write(ca.join("crlnumber"), format!("{number:02X}\n")).unwrap();
    let config = ca.join("ca.cnf");
    fs::write(
        &config,
        format!(
            "[ca]\ndefault_ca = root\n[root]\ndatabase = {db}\ncrlnumber = {num}\ndefault_md = sha256\n\
             certificate = {cert}\nprivate_key = {key}\ncrl_extensions = crl_ext\n[crl_ext]\n\
             authorityKeyIdentifier = keyid:always\n",
            db = ca.join("index.txt").display(),
            num = ca.join("crlnumber").display(),
            cert = root.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    let out = d.join(format!("root-{number}.crl"));
    let secs = seconds.to_string();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    openssl_ok(&["ca", "-config", &p(&config), "-gencrl", "-crlsec", &secs, "-out", &p(&out)]);
    out
}

fn import(s: &Server, file: &Path) -> std::process::Output {
    s.cli(&["pki", "crl", "import", "--file", file.to_str().unwrap()])
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `openssl verify -crl_check_all` of `leaf` against the bundle and every
/// published CRL; the output (success or not).
fn verify_with_crls(s: &Server, d: &Path, leaf: &Path) -> (bool, String) {
    let crls = d.join("published.crl");
    fs::write(&crls, pem_blocks(&String::from_utf8(s.get("/pki/crl").1).unwrap(), "X509 CRL").concat()).unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let out = openssl(&["verify", "-crl_check_all", "-CAfile", &p(&s.bundle_path()), "-CRLfile", &p(&crls), &p(leaf)]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn published_crl_count(s: &Server) -> usize {
    pem_blocks(&String::from_utf8(s.get("/pki/crl").1).unwrap(), "X509 CRL").len()
}

fn wait_for_crl_count(s: &Server, n: usize) {
    poll(std::time::Duration::from_secs(2), || (published_crl_count(s) == n).then_some(()));
    assert_eq!(published_crl_count(s), n, "published CRLs");
}

#[test]
fn an_offline_roots_crl_is_imported_published_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let (root, root_key) = openssl_root(d);
    let (chain, ikey) = openssl_intermediate(d, &root, &root_key);
    let out = pki_init_import(&data, &chain, &ikey);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut s = Server::start(&data, &[]);
    let (good, _) = s.generate(d, "good", "spiffe://example.org/svc/good", &[]);
    let (bad, _) = s.generate(d, "bad", "spiffe://example.org/svc/bad", &[]);
    let serial = s.json(&["pki", "cert", "list", "--spiffe-id", "spiffe://example.org/svc/bad"])[0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok(&["pki", "cert", "revoke", &serial, "--reason", "keyCompromise"]);

    // Without the root's CRL nothing can be checked: not even a valid leaf.
    let online = published_crl_count(&s);
    let (ok, text) = verify_with_crls(&s, d, &good);
    assert!(!ok && text.contains("unable to get certificate CRL"), "{text}");

    let crl = root_crl(d, &root, &root_key, 2, 86_400);
    let out = import(&s, &crl);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("number 2"), "{}", String::from_utf8_lossy(&out.stdout));
    wait_for_crl_count(&s, online + 1);
    let (ok, text) = verify_with_crls(&s, d, &good);
    assert!(ok, "a valid leaf with every CRL: {text}");
    let (ok, text) = verify_with_crls(&s, d, &bad);
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let audit = s.json(&["audit", "list"]);
    assert!(audit.as_array().unwrap().iter().any(|a| a["action"] == "import_crl" && a["outcome"] == "ok"), "{audit}");

    // Replayed, or older: refused, the imported one stays.
    let again = import(&s, &crl);
    assert!(!again.status.success() && stderr(&again).contains("not above the imported CRL's 2"), "{}", stderr(&again));
    let older = root_crl(d, &root, &root_key, 1, 86_400);
    assert!(stderr(&import(&s, &older)).contains("replayed or older"));

    // Expired by the time it arrives: refused.
    let short = root_crl(d, &root, &root_key, 3, 1);
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let expired = import(&s, &short);
    assert!(!expired.status.success() && stderr(&expired).contains("expired"), "{}", stderr(&expired));

    // A CRL trustmesh signs itself (the issuing CA's key is online): refused.
    let own = d.join("own.crl");
    fs::write(&own, s.get("/pki/crl?format=der").1).unwrap();
    let refused = import(&s, &own);
    assert!(stderr(&refused).contains("signs the CRLs of \"Imported Issuing CA\" itself"), "{}", stderr(&refused));

    // Another root's CRL: not a CA of this trust domain.
    let other = d.join("other");
    fs::create_dir_all(&other).unwrap();
    let (other_root, other_key) = openssl_root(&other);
    let stranger = root_crl(&other, &other_root, &other_key, 9, 86_400);
    let refused = import(&s, &stranger);
    assert!(stderr(&refused).contains("signature does not verify"), "{}", stderr(&refused));

    // Not a CRL, or too large: clear errors.
    let garbage = d.join("garbage.crl");
    fs::write(&garbage, b"-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n").unwrap();
    assert!(stderr(&import(&s, &garbage)).contains("not an acceptable CRL: not a DER CRL"));
    let certificate = import(&s, &root);
    assert!(
        stderr(&certificate).contains("expected an X509 CRL PEM block, found CERTIFICATE"),
        "{}",
        stderr(&certificate)
    );
    let huge = d.join("huge.crl");
    fs::write(&huge, vec![b'A'; 2 * 1024 * 1024]).unwrap();
    let too_big = import(&s, &huge);
    assert!(!too_big.status.success() && stderr(&too_big).contains("more than the 1048576 accepted"));

    // Only admins import.
    let node = s.ok(&["token", "mint", "node", "node-a"]);
    let out = s.cli_cmd().args(["--token", node.trim(), "pki", "crl", "import", "--file"]).arg(&crl).output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("permission denied"), "{}", stderr(&out));

    // Durable: after a restart the imported CRL is published again at once.
    s.stop();
    let s = Server::start(&data, &[]);
    assert_eq!(published_crl_count(&s), online + 1);
    let (ok, text) = verify_with_crls(&s, d, &good);
    assert!(ok, "{text}");
}
