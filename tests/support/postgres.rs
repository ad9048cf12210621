//! A throwaway PostgreSQL server for the tests.
//!
//! One server per test process, started on first use from the Debian
//! `postgresql` package binaries (`/usr/lib/postgresql/<ver>/bin`) in a temp
//! directory. It listens only on a Unix socket in that directory (no TCP), and
//! each test gets its own database from [`fresh_database`], so tests run in
//! parallel.
//!
//! PostgreSQL refuses to run as root; when the tests do, the server runs as
//! the user `trustmesh-test` (created by `scripts/install-test-deps.sh`).
//!
//! The server dies with the test process, also when a test fails or the
//! process is killed: it is started by a small shell whose stdin is a pipe from
//! this process. The kernel closes that pipe when the process exits; the shell
//! then stops the server (SIGTERM: its clients died with this process) and
//! removes the directory.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use parking_lot::Mutex;

const USER: &str = "trustmesh-test";
const READY: &str = "database system is ready to accept connections";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const SETUP_HINT: &str = "run scripts/install-test-deps.sh (as root) first";

/// Run as `sh -c WATCHDOG _ DIR BIN_DIR` with stdin piped from this process:
/// creates the cluster, starts the server, and once stdin closes (this
/// process exited) stops it and removes `DIR`. The log pipe (stderr) is left
/// to initdb and postgres, so its end of file means the server is gone.
/// Settings: Unix socket in `DIR` only; no durability (a throwaway server —
/// durability is tested on SQLite).
const WATCHDOG: &str = r#"dir=$1 bin=$2
"$bin/initdb" -U postgres -A trust -E UTF8 --no-locale --no-sync -D "$dir/data" >&2 || { rm -rf "$dir"; exit 1; }
"$bin/postgres" -D "$dir/data" -k "$dir" -c listen_addresses= -c max_connections=300 -c lc_messages=C \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off &
pid=$!
exec 2>/dev/null
read -r _ || true
kill -TERM "$pid"
wait "$pid"
rm -rf "$dir"
"#;

/// The running server: its socket directory and the pipe that keeps it alive.
pub struct Server {
    pub socket_dir: PathBuf,
    /// Never written to; dropped only when the process exits.
    _keepalive: Mutex<(Child, ChildStdin)>,
    log: Arc<Mutex<String>>,
}

/// Creates an empty database `t_<n>` on the shared server and returns its URL
/// (`postgres://postgres@/t_<n>?host=<socket dir>`). Panics with the reason
/// (and the server log) when PostgreSQL cannot be started.
pub async fn fresh_database() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let server = server();
    let name = format!("t_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let admin = server.url("postgres");
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server at {admin}: {e}\n{}", server.log()));
    let task = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}\n{}", server.log()));
    drop(client);
    let _ = task.await;
    server.url(&name)
}

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    match SERVER.get_or_init(Server::start) {
        Ok(server) => server,
        Err(reason) => panic!("cannot start the test PostgreSQL server: {reason}"),
    }
}

impl Server {
    /// The URL of database `db` over the Unix socket.
    pub fn url(&self, db: &str) -> String {
        socket_url(&self.socket_dir, db)
    }

    /// What the server printed so far (for failure messages).
    pub fn log(&self) -> String {
        self.log.lock().clone()
    }

    fn start() -> Result<Server, String> {
        let (dir, mut child) = launch(WATCHDOG, "trustmesh-pg-watchdog")?;
        let (Some(stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
            return Err("postgres started without pipes".into());
        };
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || drain(BufReader::new(stderr), &sink, &ready_tx));
        let server = Server { socket_dir: dir, _keepalive: Mutex::new((child, stdin)), log };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(true) => Ok(server),
            Ok(false) => Err(format!("initdb or postgres failed:\n{}", server.log())),
            Err(_) => Err(format!("postgres not ready after {START_TIMEOUT:?}:\n{}", server.log())),
        }
    }
}

/// Runs `sh -c script name DIR BIN_DIR` as the user PostgreSQL runs as (see
/// the module docs), stdin and stderr piped: `DIR` is a new temp directory
/// (`<name>-*`) that user owns, `BIN_DIR` where `initdb` and `postgres` are.
pub fn launch(script: &str, name: &str) -> Result<(PathBuf, Child), String> {
    let bin = bin_dir()?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir()
        .map_err(|e| format!("cannot create a temp directory: {e}"))?
        .keep();
    let owner = if running_as_root()? { Some(unprivileged_user()?) } else { None };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("cannot chown {} to {USER}: {e}", dir.display()))?;
    }
    let child = as_owner(owner, Path::new("/bin/sh"))
        .args(["-c", script, name])
        .arg(&dir)
        .arg(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    Ok((dir, child))
}

/// The URL of database `db` of the server whose socket is in `socket_dir`.
pub fn socket_url(socket_dir: &Path, db: &str) -> String {
    format!("postgres://postgres@/{db}?host={}", socket_dir.display())
}

/// Copies the server's stderr into `log`; sends `true` once it is ready,
/// `false` if it exits first.
fn drain(stderr: impl BufRead, log: &Mutex<String>, ready: &mpsc::Sender<bool>) {
    const KEEP: usize = 64 * 1024;
    for line in stderr.lines() {
        let Ok(line) = line else { break };
        let mut log = log.lock();
        if log.len() < KEEP {
            let _ = writeln!(log, "{line}");
        }
        if line.contains(READY) {
            let _ = ready.send(true);
        }
    }
    // Only postgres (and initdb before it) write to the pipe: end of file
    // means it exited.
    let _ = ready.send(false);
}

/// The newest `/usr/lib/postgresql/<ver>/bin` with `initdb` and `postgres`.
fn bin_dir() -> Result<PathBuf, String> {
    let root = Path::new("/usr/lib/postgresql");
    let missing = || format!("PostgreSQL server binaries not found in {}/<version>/bin; {SETUP_HINT}", root.display());
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|_| missing())?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(missing)
}

fn running_as_root() -> Result<bool, String> {
    let out = Command::new("id").arg("-u").output().map_err(|e| format!("cannot run id: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The uid and gid of `trustmesh-test`.
fn unprivileged_user() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id").args([flag, USER]).output().map_err(|e| format!("cannot run id: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().map_err(|_| {
            format!("tests run as root, so PostgreSQL must run as user {USER}, which is missing; {SETUP_HINT}")
        })
    };
    Ok((id("-u")?, id("-g")?))
}

/// `program`, run as `owner` when given (through `setpriv`), with a clean
/// environment.
fn as_owner(owner: Option<(u32, u32)>, program: &Path) -> Command {
    let mut cmd = match owner {
        Some((uid, gid)) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}")).arg("--clear-groups").arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.env_clear().env("PATH", "/usr/bin:/bin").env("LC_ALL", "C").current_dir("/");
    cmd
}
