//! Throwaway PostgreSQL servers for the tests, from one launcher.
//!
//! [`fresh_database`] gives each test an empty database of its own on a server
//! shared by the test process (started on first use, so tests run in
//! parallel); [`Server::start`] gives a test a server of its own that it can
//! [`Server::stop`] and [`Server::restart`] (the replicas' outage tests).
//! Either is started from the Debian `postgresql` package binaries
//! (`/usr/lib/postgresql/<ver>/bin`) in a temp directory and listens only on a
//! Unix socket there (no TCP); no durability (a throwaway server — durability
//! is tested on SQLite).
//!
//! PostgreSQL refuses to run as root; when the tests do, the server runs as
//! the user `trustmesh-test` (created by `scripts/install-test-deps.sh`).
//!
//! A server dies with its owner, also when a test fails or the process is
//! killed: it is run by a small shell whose stdin is a pipe from this
//! process. End of input (the [`Server`] dropped, or the process gone — the
//! shared server is never dropped, the kernel closes its pipe at exit) stops
//! it (fast shutdown: every client is disconnected) and removes the directory.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::process::wait_or_kill;

const USER: &str = "trustmesh-test";
const READY: &str = "database system is ready to accept connections";
/// What the script prints each time the server process has exited.
const EXITED: &str = "trustmesh-test: postgres exited";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const SETUP_HINT: &str = "run scripts/install-test-deps.sh (as root) first";

/// Run as `sh -c SCRIPT _ DIR BIN_DIR`, stdin piped from this process:
/// creates the cluster in `DIR/data` and starts the server; the line `stop`
/// stops it (fast shutdown), `start` starts it again on the same data and
/// socket. End of input stops it and removes `DIR`. Each time the server
/// exits, for whatever reason, the script prints [`EXITED`].
const SCRIPT: &str = r#"dir=$1 bin=$2
"$bin/initdb" -U postgres -A trust -E UTF8 --no-locale --no-sync -D "$dir/data" >&2 || { rm -rf "$dir"; exit 1; }
start() {
    { "$bin/postgres" -D "$dir/data" -k "$dir" -c listen_addresses= -c max_connections=300 -c lc_messages=C \
          -c fsync=off -c synchronous_commit=off -c full_page_writes=off
      echo "trustmesh-test: postgres exited" >&2; } &
    pid=$!
}
stop() {
    kill -INT "$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)" 2>/dev/null
    wait "$pid"
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

/// A running server: its socket directory, the pipe that controls it, and
/// what it printed.
pub struct Server {
    pub socket_dir: PathBuf,
    control: Mutex<Option<(Child, ChildStdin)>>,
    log: Arc<Log>,
}

/// Creates an empty database `t_<n>` on the shared server and returns its URL
/// (`postgres://postgres@/t_<n>?host=<socket dir>`). Panics with the reason
/// (and the server log) when PostgreSQL cannot be started.
pub async fn fresh_database() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let server = shared();
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

/// The server shared by this test process, started on first use and never
/// stopped before the process exits.
pub fn shared() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    match SERVER.get_or_init(Server::try_start) {
        Ok(server) => server,
        Err(reason) => panic!("cannot start the test PostgreSQL server: {reason}"),
    }
}

impl Server {
    /// Creates a cluster in a new temp directory and starts a server of the
    /// caller's own; returns once it accepts connections.
    pub fn start() -> Server {
        Self::try_start().unwrap_or_else(|reason| panic!("cannot start a test PostgreSQL server: {reason}"))
    }

    /// The URL of database `db` over the Unix socket.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@/{db}?host={}", self.socket_dir.display())
    }

    /// What the server printed so far (for failure messages).
    pub fn log(&self) -> String {
        self.log.state.lock().text.clone()
    }

    /// Fast shutdown; returns once the server has exited.
    pub fn stop(&self) {
        let exited = self.log.state.lock().exited;
        self.send("stop");
        self.wait("the server to exit", STOP_TIMEOUT, |s| s.exited > exited, |_| false)
            .unwrap_or_else(|reason| panic!("{reason}"));
    }

    /// Starts the server again; returns once it accepts connections.
    pub fn restart(&self) {
        let (ready, exited) = {
            let state = self.log.state.lock();
            (state.ready, state.exited)
        };
        self.send("start");
        self.wait("the server to accept connections", START_TIMEOUT, |s| s.ready > ready, |s| s.exited > exited)
            .unwrap_or_else(|reason| panic!("{reason}"));
    }

    fn try_start() -> Result<Server, String> {
        let (dir, mut child) = launch()?;
        let (Some(stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
            return Err("postgres started without pipes".into());
        };
        let log = Arc::new(Log::default());
        let sink = Arc::clone(&log);
        std::thread::spawn(move || sink.drain(BufReader::new(stderr)));
        let server = Server { socket_dir: dir, control: Mutex::new(Some((child, stdin))), log };
        server.wait("the server to accept connections", START_TIMEOUT, |s| s.ready > 0, |s| s.exited > 0)?;
        Ok(server)
    }

    fn send(&self, command: &str) {
        let mut control = self.control.lock();
        let Some((_, stdin)) = control.as_mut() else { panic!("the test PostgreSQL server is gone") };
        writeln!(stdin, "{command}").and_then(|()| stdin.flush()).unwrap_or_else(|e| panic!("{command}: {e}"));
    }

    /// Waits until `done` holds for the log; an error with the log if
    /// `failed` holds first, the script ends or `timeout` passes.
    fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&LogState) -> bool,
        failed: impl Fn(&LogState) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.log.state.lock();
        loop {
            if done(&state) {
                return Ok(());
            }
            if failed(&state) || state.closed {
                return Err(format!("the test PostgreSQL server exited while waiting for {what}:\n{}", state.text));
            }
            if self.log.changed.wait_until(&mut state, deadline).timed_out() {
                return Err(format!("no {what} within {timeout:?}:\n{}", state.text));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some((mut child, stdin)) = self.control.lock().take() else { return };
        // End of input: the script stops the server and removes its directory.
        drop(stdin);
        wait_or_kill(&mut child, STOP_TIMEOUT);
    }
}

/// What the script and the server print (stderr), with the events counted as
/// they arrive; `changed` is notified on every line and at the end.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    /// The first [`Log::KEEP`] bytes, for failure messages.
    text: String,
    ready: usize,
    exited: usize,
    /// The script's end of the pipe is closed: it exited.
    closed: bool,
}

impl Log {
    const KEEP: usize = 64 * 1024;

    fn drain(&self, stderr: impl BufRead) {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            let mut state = self.state.lock();
            if state.text.len() < Self::KEEP {
                let _ = writeln!(state.text, "{line}");
            }
            state.ready += usize::from(line.contains(READY));
            state.exited += usize::from(line.contains(EXITED));
            self.changed.notify_all();
        }
        self.state.lock().closed = true;
        self.changed.notify_all();
    }
}

/// Runs [`SCRIPT`] as the user PostgreSQL runs as (see the module docs),
/// stdin and stderr piped, in a new temp directory `trustmesh-pg-*` that user
/// owns.
fn launch() -> Result<(PathBuf, Child), String> {
    let bin = bin_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("trustmesh-pg-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp directory: {e}"))?
        .keep();
    let owner = if running_as_root()? { Some(unprivileged_user()?) } else { None };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("cannot chown {} to {USER}: {e}", dir.display()))?;
    }
    let child = as_owner(owner, Path::new("/bin/sh"))
        .args(["-c", SCRIPT, "trustmesh-pg"])
        .arg(&dir)
        .arg(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    Ok((dir, child))
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
