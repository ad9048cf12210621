//! Replicas of `trustmesh serve` on one PostgreSQL database: starting them
//! (each with its own data directory, ports and socket, all with the same
//! KEK file) and reading what each one publishes. Everything started here is
//! stopped on drop, also when a test fails.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::server::Server;

/// A KEK file (0600) for every replica of one database.
pub fn kek_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let (_, text) = trustmesh::ca::Kek::generate(&ring::rand::SystemRandom::new()).unwrap();
    let path = dir.join("shared.kek");
    let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    path
}

/// The arguments that make `trustmesh serve` a replica of `url`.
pub fn replica_args<'a>(url: &'a str, kek: &'a Path) -> [&'a str; 4] {
    ["--database-url", url, "--kek-file", kek.to_str().unwrap()]
}

/// Starts a replica named `name` (data directory `<dir>/<name>`).
pub fn replica(dir: &Path, name: &str, url: &str, kek: &Path) -> Server {
    Server::start(&dir.join(name), &replica_args(url, kek))
}

/// Runs `f` on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// One statement on a new connection (so it works across server restarts).
pub fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        let task = tokio::spawn(conn);
        let rows = client.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        drop(client);
        let _ = task.await;
        rows
    })
}

/// The backend pids of the change listeners on `url`'s database.
pub fn listener_pids(url: &str) -> BTreeSet<i32> {
    let sql = "SELECT pid FROM pg_stat_activity WHERE application_name = 'trustmesh-changes' \
               AND datname = current_database() AND pid <> pg_backend_pid()";
    query(url, sql).iter().map(|r| r.get::<_, i32>(0)).collect()
}

/// `pki cert generate` for `id` through `server`; returns the serial as
/// `pki cert list` prints it (each test identity has one certificate).
pub fn issue(server: &Server, dir: &Path, id: &str, extra: &[&str]) -> String {
    let name = id.rsplit('/').next().unwrap();
    server.generate(dir, name, id, extra);
    let list = server.json(&["pki", "cert", "list", "--include-expired", "--spiffe-id", id]);
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    items[0]["serial"].as_str().unwrap().to_string()
}

/// The SPIFFE IDs the Workload API on `socket` gives this test process (the
/// Rust `spiffe` crate), or why it gave none.
pub fn workload_ids(socket: &Path) -> Result<BTreeSet<String>, String> {
    block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display()))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let ctx = tokio::time::timeout(Duration::from_secs(5), client.fetch_x509_context())
            .await
            .map_err(|_| "no answer within 5 s".to_string())?
            .map_err(|e| format!("fetch: {e:?}"))?;
        Ok(ctx.svids().iter().map(|s| s.spiffe_id().to_string()).collect())
    })
}

/// The tail of a replica's log, for failure messages.
pub fn log_tail(name: &str, server: &Server) -> String {
    format!("--- replica {name} log tail ---\n{}\n", server.log_tail(40))
}
