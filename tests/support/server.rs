//! Runs the real `trustmesh` binary for end-to-end tests: a server on
//! ephemeral loopback ports in a temp data directory, the CLI against it, and
//! what it publishes (metrics, CRLs, the plaintext HTTP port). Servers are
//! stopped on drop, also when a test fails.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::openssl::{crl_serials_of, pem_blocks};
use super::process::terminate;
use super::{last_lines, my_uid};

pub const BIN: &str = env!("CARGO_BIN_EXE_trustmesh");

pub struct Server {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub http: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `trustmesh serve` on `data_dir` and waits for its `ready` line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::try_start(data_dir, extra).unwrap_or_else(|(log, why)| panic!("server did not start: {why}\n{log}"))
    }

    /// Like `start`, but returns the log and reason when the server exits or hangs.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Server, (String, String)> {
        Self::try_start_under(&[], data_dir, extra)
    }

    /// `trustmesh serve` run by `launcher` (e.g. `prlimit --nofile=512:512 --`).
    pub fn try_start_under(launcher: &[&str], data_dir: &Path, extra: &[&str]) -> Result<Server, (String, String)> {
        let mut child = serve_command(launcher, data_dir, extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trustmesh serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, SocketAddr)>();
        for stream in
            [Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stdout.take().unwrap())]
        {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    {
                        let mut l = log.lock();
                        l.push_str(&line);
                        l.push('\n');
                    }
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["message"] == "ready"
                    {
                        let api = v["listen"].as_str().and_then(|s| s.parse().ok());
                        let http = v["http_listen"].as_str().and_then(|s| s.parse().ok());
                        if let (Some(a), Some(h)) = (api, http) {
                            let _ = tx.send((a, h));
                        }
                    }
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((api, http)) = rx.recv_timeout(Duration::from_millis(50)) {
                return Ok(Server { child: Some(child), data_dir: data_dir.to_path_buf(), api, http, log });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                let text = log.lock().clone();
                return Err((text, format!("exited with {status}")));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let text = log.lock().clone();
                return Err((text, "no ready line within 60 s".into()));
            }
        }
    }

    /// The local socket a test server uses by default: beside (not inside) its data directory.
    pub fn socket_path(data_dir: &Path) -> PathBuf {
        let mut name = data_dir.as_os_str().to_owned();
        name.push("-socket");
        PathBuf::from(name).join("api.sock")
    }

    /// The CLI pointed at this server and data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_cmd().args(args).output().expect("run trustmesh cli")
    }

    pub fn cli_cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--server")
            .arg(format!("https://{}", self.api))
            .env_remove("TRUSTMESH_TOKEN")
            .stdin(Stdio::null());
        c
    }

    /// Runs the CLI, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "trustmesh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `pki cert generate` for `spiffe_id` into `<dir>/<name>.pem` and
    /// `<dir>/<name>.key` (plus any `extra` flags); returns both paths.
    pub fn generate(&self, dir: &Path, name: &str, spiffe_id: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        self.generate_with(dir, name, &[&["--spiffe-id", spiffe_id], extra].concat())
    }

    /// `pki cert generate` with `args` (`--profile P --common-name CN`, …)
    /// into `<dir>/<name>.pem` and `<dir>/<name>.key`; returns both paths.
    pub fn generate_with(&self, dir: &Path, name: &str, args: &[&str]) -> (PathBuf, PathBuf) {
        self.try_generate(dir, name, args).unwrap_or_else(|e| panic!("pki cert generate {args:?} failed: {e}"))
    }

    /// [`Server::generate_with`] that returns the CLI's one-line reason when it fails.
    pub fn try_generate(&self, dir: &Path, name: &str, args: &[&str]) -> Result<(PathBuf, PathBuf), String> {
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        let mut all = vec!["pki", "cert", "generate"];
        all.extend_from_slice(args);
        all.extend(["--output-cert", cert.to_str().unwrap(), "--output-key", key.to_str().unwrap()]);
        let out = self.cli(&all);
        if out.status.success() {
            Ok((cert, key))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Mints a bootstrap token for `ids` through the CLI (as an admin would).
    pub fn bootstrap_token(&self, subject: &str, ids: &[&str], extra: &[&str]) -> String {
        let mut args = vec!["token", "mint", "bootstrap", subject];
        for id in ids {
            args.extend(["--spiffe-id", id]);
        }
        args.extend_from_slice(extra);
        self.ok(&args).trim().to_string()
    }

    /// Runs the CLI with `--output json` and parses the result.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Runs the CLI, asserts a non-zero exit and a one-line reason; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "trustmesh {args:?} unexpectedly succeeded");
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "one-line reason expected, got: {err}");
        assert!(err.starts_with("error: "), "{err}");
        err
    }

    /// GET on the plaintext HTTP port: (status, body).
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        http_get(self.http, path)
    }

    pub fn log(&self) -> String {
        self.log.lock().clone()
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(&self.log(), lines)
    }

    /// Every CRL of `GET /pki/crl` (PEM blocks); asserts there is one.
    pub fn crls(&self) -> Vec<String> {
        let (code, body) = self.get("/pki/crl");
        assert_eq!(code, 200, "GET /pki/crl: {}", String::from_utf8_lossy(&body));
        let pem = String::from_utf8(body).unwrap();
        let crls = pem_blocks(&pem, "X509 CRL");
        assert!(!crls.is_empty(), "no CRL in GET /pki/crl: {pem}");
        crls
    }

    /// Every serial in every CRL this server publishes (normalized).
    pub fn crl_serials(&self, dir: &Path) -> BTreeSet<String> {
        self.crls().iter().flat_map(|c| crl_serials_of(dir, c)).collect()
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.data_dir.join("ca-bundle.pem")
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `trustmesh serve` command line the tests use: loopback ports the
/// kernel picks, JSON logs, a socket beside the data directory.
pub fn serve_command(launcher: &[&str], data_dir: &Path, extra: &[&str]) -> Command {
    let mut command = match launcher {
        [] => Command::new(BIN),
        [program, args @ ..] => {
            let mut c = Command::new(program);
            c.args(args).arg(BIN);
            c
        }
    };
    command.args(["serve", "--log-format", "json"]);
    for (flag, default) in [("--listen", "127.0.0.1:0"), ("--http-listen", "127.0.0.1:0")] {
        if !extra.contains(&flag) {
            command.args([flag, default]);
        }
    }
    if !extra.contains(&"--socket") {
        command.arg("--socket").arg(Server::socket_path(data_dir));
    }
    command.arg("--data-dir").arg(data_dir).args(extra).env("RUST_LOG", "info").env_remove("TRUSTMESH_TOKEN");
    command
}

/// Runs `trustmesh serve` that must fail to start; returns its exit code and
/// everything it printed. Killed (and the test failed) if it runs 30 s.
pub fn failed_start(data_dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = serve_command(&[], data_dir, extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trustmesh serve {extra:?} did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// The value of the first sample of `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    metric_with(text, name, &[])
}

/// The value of the sample of `name` whose labels include `labels`.
pub fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `trustmesh entry create` through `server` for the processes of this uid
/// run from `bin`: selectors `unix:uid:<me>` and `unix:path:<bin>`, so
/// processes started through different paths (see `envoy_alias`) get
/// different identities.
pub fn entry_for(server: &Server, spiffe_id: &str, bin: &Path) {
    entry_on(server, spiffe_id, bin, None);
}

/// [`entry_for`], bound to the agent of `node` when there is one.
pub fn entry_on(server: &Server, spiffe_id: &str, bin: &Path, node: Option<&str>) {
    let uid = format!("unix:uid:{}", my_uid());
    let path = format!("unix:path:{}", bin.display());
    let mut args = vec!["entry", "create", "--spiffe-id", spiffe_id, "--selector", &uid, "--selector", &path];
    if let Some(node) = node {
        args.extend(["--node", node]);
    }
    server.ok(&args);
}

/// A minimal HTTP/1.0 GET, enough for the read-only endpoints.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// [`http_get`] that reports a refused, reset or unanswered request.
pub fn try_http_get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no HTTP status")?;
    Ok((status, buf[split + 4..].to_vec()))
}

/// `trustmesh pki init --import-cert CERT --import-key KEY` on a data directory.
pub fn pki_init_import(data: &Path, cert: &Path, key: &Path) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(["pki", "init", "--import-cert", cert.to_str().unwrap(), "--import-key", key.to_str().unwrap()])
        .output()
        .unwrap()
}
