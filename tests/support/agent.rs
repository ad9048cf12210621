//! Runs the real `trustmesh agent` for end-to-end tests: a node agent of a
//! test server (`Server`), attested with a join token minted through it, on
//! its own data directory, Unix socket and a loopback HTTP port the kernel
//! picks. Agents are stopped on drop, also when a test fails.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::last_lines;
use super::process::terminate;
use super::server::{BIN, Server, http_get};

pub struct Agent {
    child: Option<Child>,
    pub node: String,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub http: SocketAddr,
    /// The command line it was started with (without the HTTP port), for restarts.
    args: Vec<String>,
    log: Arc<Mutex<String>>,
}

/// Where the files of agent `node` go under `dir`.
pub fn agent_paths(dir: &Path, node: &str) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(format!("agent-{node}")),
        dir.join(format!("agent-{node}-socket/api.sock")),
        dir.join(format!("{node}.join")),
    )
}

impl Agent {
    /// Mints a join token for `node` through `tm` and starts an agent of
    /// `tm` (and of `more` servers, replicas tried in turn) with it; returns
    /// once it has the server's state (ready).
    pub fn join(tm: &Server, more: &[&Server], node: &str, dir: &Path) -> Agent {
        let (data_dir, socket, token_file) = agent_paths(dir, node);
        let token = tm.json(&["token", "mint", "join", node]);
        std::fs::write(&token_file, token["token"].as_str().unwrap()).unwrap();
        let mut servers = vec![format!("https://{}", tm.api)];
        servers.extend(more.iter().map(|s| format!("https://{}", s.api)));
        let bundle = tm.bundle_path();
        let args = agent_args(&servers, &bundle, Some(&token_file), node, &data_dir, &socket);
        let agent = Self::try_start(node, &data_dir, &socket, args)
            .unwrap_or_else(|(log, why)| panic!("agent did not start: {why}\n{log}"));
        let ready = super::process::poll(Duration::from_secs(10), || (agent.ready().0 == 200).then_some(()));
        assert!(ready.is_some(), "agent {node} not ready within 10 s\n{}", agent.log_tail(30));
        agent
    }

    /// Starts `trustmesh agent ARGS` and waits for its `agent ready` line.
    pub fn try_start(node: &str, data_dir: &Path, socket: &Path, args: Vec<String>) -> Result<Agent, (String, String)> {
        let mut child = command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trustmesh agent");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        for stream in
            [Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stdout.take().unwrap())]
        {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    {
                        let mut l = log.lock();
                        l.push_str(&line);
                        l.push('\n');
                    }
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["message"] == "agent ready"
                        && let Some(http) = v["http_listen"].as_str().and_then(|s| s.parse().ok())
                    {
                        let _ = tx.send(http);
                    }
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(http) = rx.recv_timeout(Duration::from_millis(50)) {
                let (node, data_dir, socket) = (node.to_string(), data_dir.to_path_buf(), socket.to_path_buf());
                return Ok(Agent { child: Some(child), node, data_dir, socket, http, args, log });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err((log.lock().clone(), format!("exited with {status}")));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err((log.lock().clone(), "no ready line within 60 s".into()));
            }
        }
    }

    /// Stops it (SIGTERM) and starts it again with the same command line.
    pub fn restart(&mut self) {
        self.stop();
        let again = Self::try_start(&self.node, &self.data_dir, &self.socket, self.args.clone())
            .unwrap_or_else(|(log, why)| panic!("agent did not start again: {why}\n{log}"));
        *self = again;
    }

    pub fn log(&self) -> String {
        self.log.lock().clone()
    }

    pub fn log_tail(&self, n: usize) -> String {
        last_lines(&self.log(), n)
    }

    /// The log lines (JSON) whose message is `message`.
    pub fn events(&self, message: &str) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"].as_str().is_some_and(|m| m.starts_with(message)))
            .collect()
    }

    pub fn ready(&self) -> (u16, String) {
        let (status, body) = http_get(self.http, "/ready");
        (status, String::from_utf8_lossy(&body).to_string())
    }

    pub fn metrics(&self) -> String {
        String::from_utf8_lossy(&http_get(self.http, "/metrics").1).to_string()
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The command line of an agent of `servers` (JSON logs, a loopback HTTP
/// port the kernel picks).
pub fn agent_args(
    servers: &[String],
    bundle: &Path,
    token_file: Option<&Path>,
    node: &str,
    data_dir: &Path,
    socket: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = vec!["agent".into(), "--log-format".into(), "json".into()];
    for s in servers {
        args.extend(["--server".into(), s.clone()]);
    }
    args.extend(["--trust-bundle".into(), bundle.display().to_string(), "--node-id".into(), node.into()]);
    if let Some(f) = token_file {
        args.extend(["--join-token-file".into(), f.display().to_string()]);
    }
    args.extend([
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--socket".into(),
        socket.display().to_string(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    args
}

/// `trustmesh ARGS` with the agent's test environment.
pub fn command(args: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env("RUST_LOG", "info").env_remove("TRUSTMESH_SERVER").env_remove("TRUSTMESH_TOKEN");
    for (key, _) in std::env::vars() {
        if key.starts_with("TRUSTMESH_AGENT_") {
            c.env_remove(key);
        }
    }
    c
}

/// Runs `trustmesh agent ARGS` that must stop before it serves (logs as
/// text); returns its exit code and the `error:` lines it printed. Killed
/// (and the test failed) if it runs 30 s.
pub fn failed_agent(args: &[String]) -> (Option<i32>, Vec<String>) {
    let mut args = args.to_vec();
    if let Some(i) = args.iter().position(|a| a == "json") {
        args[i] = "pretty".into();
    }
    let mut child = command(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trustmesh {args:?} did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code(), stderr.lines().filter(|l| l.starts_with("error:")).map(str::to_string).collect())
}
