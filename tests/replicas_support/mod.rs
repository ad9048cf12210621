//! Replicas of `trustmesh serve` on one PostgreSQL database: starting them
//! (each with its own data directory, ports and socket, all with the same
//! KEK file), reading what each one publishes, and a PostgreSQL server of
//! this test's own that can be stopped and started again (the shared server
//! of `tests/support/postgres.rs` lives as long as the test process).
//! Everything started here is stopped on drop, also when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::support::postgres;
use crate::support::process::wait_or_kill;
use crate::support::server::Server;

/// A KEK file (0600) for every replica of one database.
pub fn kek_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let (_, text) = trustmesh::ca::Kek::generate().unwrap();
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
    let log = server.log();
    let lines: Vec<&str> = log.lines().collect();
    format!("--- replica {name} log tail ---\n{}\n", lines[lines.len().saturating_sub(40)..].join("\n"))
}

// ---------------------------------------------------------------------------
// A PostgreSQL server that can be stopped and started again.

const READY: &str = "database system is ready to accept connections";
const STOPPED: &str = "trustmesh-test: postgres stopped";

/// `sh -c SCRIPT _ DIR BIN_DIR`, stdin piped from this process: creates the
/// cluster and starts the server; the line `stop` stops it (fast shutdown:
/// every client is disconnected), `start` starts it again on the same data
/// and socket. End of input (this process exited or dropped the pipe) stops
/// it and removes `DIR`. Unix socket in `DIR` only; no durability.
const SCRIPT: &str = r#"dir=$1 bin=$2
"$bin/initdb" -U postgres -A trust -E UTF8 --no-locale --no-sync -D "$dir/data" >&2 || { rm -rf "$dir"; exit 1; }
start() {
    "$bin/postgres" -D "$dir/data" -k "$dir" -c listen_addresses= -c max_connections=100 -c lc_messages=C \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off &
    pid=$!
}
stop() {
    kill -INT "$pid" 2>/dev/null
    wait "$pid"
    echo "trustmesh-test: postgres stopped" >&2
}
start
while read -r command; do
    case $command in
        stop) stop ;;
        start) start ;;
    esac
done
stop
rm -rf "$dir"
"#;

pub struct Postgres {
    pub socket_dir: PathBuf,
    control: Mutex<Option<(Child, ChildStdin)>>,
    log: Arc<Mutex<String>>,
}

impl Postgres {
    /// Creates a cluster in a new temp directory and starts the server.
    pub fn start() -> Postgres {
        let (dir, mut child) = postgres::launch(SCRIPT, "trustmesh-pg-replicas").unwrap_or_else(|e| panic!("{e}"));
        let (stdin, stderr) = (child.stdin.take().unwrap(), child.stderr.take().unwrap());
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let pg = Postgres { socket_dir: dir, control: Mutex::new(Some((child, stdin))), log };
        pg.wait_for(READY, 1, Duration::from_secs(60));
        pg
    }

    /// The URL of database `db` over the Unix socket.
    pub fn url(&self, db: &str) -> String {
        postgres::socket_url(&self.socket_dir, db)
    }

    pub fn log(&self) -> String {
        self.log.lock().clone()
    }

    /// Fast shutdown; returns once the server has exited.
    pub fn stop(&self) {
        let stopped = self.count(STOPPED);
        self.send("stop");
        self.wait_for(STOPPED, stopped + 1, Duration::from_secs(30));
    }

    /// Starts the server again; returns once it accepts connections.
    pub fn restart(&self) {
        let ready = self.count(READY);
        self.send("start");
        self.wait_for(READY, ready + 1, Duration::from_secs(60));
    }

    fn send(&self, command: &str) {
        let mut control = self.control.lock();
        let (_, stdin) = control.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    fn count(&self, needle: &str) -> usize {
        self.log.lock().matches(needle).count()
    }

    fn wait_for(&self, needle: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < times {
            let exited = self.control.lock().as_mut().and_then(|(c, _)| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("the test PostgreSQL server exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "no {needle:?} within {timeout:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some((mut child, stdin)) = self.control.lock().take() else { return };
        // End of input: the script stops the server and removes its directory.
        drop(stdin);
        wait_or_kill(&mut child, Duration::from_secs(30));
    }
}
