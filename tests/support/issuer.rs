//! A real issuing service on SQLite in a directory. The KEK is kept in
//! `<dir>/kek`, so starting again on the same directory loads the same CA (a
//! restart).

use std::path::Path;
use std::sync::Arc;

use trustmesh::ca::Kek;
use trustmesh::domain::{Clock, ManualClock, RandomSerials, TrustDomain};
use trustmesh::issuer::{Existing, InitParams, Issuer, IssuerConfig, IssuerParts};
use trustmesh::policy::PolicyEngine;
use trustmesh::store::Store;

/// Starts (or restarts) the issuer of trust domain example.org kept in `dir`,
/// on a manual clock.
pub async fn start(dir: &Path, clock: &ManualClock) -> (Arc<Issuer>, Arc<dyn Store>) {
    start_on(dir, Arc::new(clock.clone())).await
}

/// [`start`] on any clock (e.g. `SystemClock`).
pub async fn start_on(dir: &Path, clock: Arc<dyn Clock>) -> (Arc<Issuer>, Arc<dyn Store>) {
    let cfg = IssuerConfig::new(TrustDomain::parse("example.org").unwrap());
    start_configured(dir, clock, cfg, InitParams::default()).await
}

/// [`start_on`] with settings and, for a new PKI, a hierarchy of the test's
/// own (trust domain example.org).
pub async fn start_configured(
    dir: &Path,
    clock: Arc<dyn Clock>,
    cfg: IssuerConfig,
    init: InitParams,
) -> (Arc<Issuer>, Arc<dyn Store>) {
    let store = trustmesh::store::open(&format!("sqlite://{}", dir.join("t.db").display())).await.unwrap();
    let kek_text = match std::fs::read_to_string(dir.join("kek")) {
        Ok(text) => text,
        Err(_) => {
            let (_, text) = Kek::generate(&ring::rand::SystemRandom::new()).unwrap();
            std::fs::write(dir.join("kek"), text.as_bytes()).unwrap();
            text.to_string()
        }
    };
    let (issuer, _) = Issuer::start(IssuerParts {
        cfg,
        store: store.clone(),
        kek: Kek::from_file_contents(&kek_text).unwrap(),
        clock,
        serials: Arc::new(RandomSerials::default()),
        policy: PolicyEngine::embedded().unwrap(),
        init,
        existing: Existing::Load,
    })
    .await
    .unwrap()
    .spawn();
    (issuer, store)
}
