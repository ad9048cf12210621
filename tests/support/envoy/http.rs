//! Plain HTTP/1.1 on loopback: a client (one new connection per request,
//! `Connection: close`), the upstream server behind the server-side Envoy, and
//! a traffic generator that counts successes and failures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// GET `path` on a new connection with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> Result<Response, String> {
    request(addr, path, Duration::from_secs(10))
}

pub fn request(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read from {addr}: {e} (after {} bytes)", buf.len()))?;
    parse_response(&buf).map_err(|e| format!("{addr}{path}: {e}"))
}

fn parse_response(buf: &[u8]) -> Result<Response, String> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        format!("no complete HTTP response in {} bytes: {:?}", buf.len(), String::from_utf8_lossy(buf))
    })?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw = &buf[split + 4..];
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(raw)?
    } else if let Some(len) = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()) {
        if raw.len() < len {
            return Err(format!("body truncated: {} of {len} bytes", raw.len()));
        }
        raw[..len].to_vec()
    } else {
        raw.to_vec()
    };
    Ok(Response { status, headers, body: String::from_utf8_lossy(&body).to_string() })
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").ok_or("chunk size line missing")?;
        let size_text = String::from_utf8_lossy(&raw[..eol]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err("chunk truncated".into());
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub xfcc: Option<String>,
}

/// An HTTP/1.1 server on 127.0.0.1:0 (keep-alive, as Envoy pools upstream
/// connections) that answers every request with 200 and the request's
/// `x-forwarded-client-cert` header as the body: `xfcc=<value>` or `xfcc=`.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (stop3, seen3) = (stop2.clone(), seen2.clone());
                std::thread::spawn(move || serve_conn(conn, &stop3, &seen3));
            }
        });
        Upstream { addr, stop, seen, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().len()
    }
}

fn serve_conn(conn: TcpStream, stop: &AtomicBool, seen: &Mutex<Vec<Seen>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        // Request line and headers.
        let mut head = Vec::new();
        let mut line = String::new();
        loop {
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line == "\r\n" || line == "\n" {
                        break;
                    }
                    head.push(line.trim_end().to_string());
                    line.clear();
                }
                // A timeout keeps what was read of the line in `line`.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        if head.is_empty() {
            continue;
        }
        let path = head[0].split_whitespace().nth(1).unwrap_or("/").to_string();
        let header = |name: &str| {
            head[1..]
                .iter()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let xfcc = header("x-forwarded-client-cert");
        if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let body = format!("xfcc={}\n", xfcc.clone().unwrap_or_default());
        seen.lock().push(Seen { path, xfcc });
        let resp =
            format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A thread that calls a function at a fixed pace until halted (on drop at
/// the latest); a late call is followed at once by the next.
struct Paced {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Paced {
    fn start(interval: Duration, mut each: impl FnMut() + Send + 'static) -> Paced {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop2.load(Ordering::SeqCst) {
                each();
                next += interval;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Paced { stop, thread: Some(thread) }
    }

    /// Stops the thread (after its call in progress).
    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Requests on fresh connections through a proxy at a fixed pace, in a thread,
/// until stopped.
pub struct Traffic {
    pub ok: Arc<AtomicU64>,
    pub failures: Arc<Mutex<Vec<(Duration, String)>>>,
    paced: Paced,
}

#[derive(Debug)]
pub struct TrafficReport {
    pub ok: u64,
    /// (time since start, what went wrong)
    pub failures: Vec<(Duration, String)>,
}

impl Traffic {
    /// Sends `GET path` to `addr` every `interval`, one new connection each.
    /// A request counts as a success only with status 200.
    pub fn start(addr: SocketAddr, path: &str, interval: Duration) -> Traffic {
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (ok2, failures2) = (ok.clone(), failures.clone());
        let path = path.to_string();
        let start = Instant::now();
        let paced = Paced::start(interval, move || match request(addr, &path, Duration::from_secs(5)) {
            Ok(r) if r.status == 200 => {
                ok2.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => failures2.lock().push((start.elapsed(), format!("status {}: {}", r.status, r.body.trim()))),
            Err(e) => failures2.lock().push((start.elapsed(), e)),
        });
        Traffic { ok, failures, paced }
    }

    pub fn ok_count(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    pub fn failure_count(&self) -> usize {
        self.failures.lock().len()
    }

    pub fn stop(mut self) -> TrafficReport {
        self.paced.halt();
        TrafficReport { ok: self.ok.load(Ordering::SeqCst), failures: self.failures.lock().clone() }
    }
}

/// One request of a [`Probe`].
#[derive(Debug, Clone)]
pub struct Outcome {
    pub started: Instant,
    pub finished: Instant,
    /// The status, or what went wrong on the wire.
    pub result: Result<u16, String>,
    pub body: String,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self.result, Ok(200))
    }
}

/// When `outcomes` changed from serving to refusing after `since`: the first
/// outcome started at or after `since` that `refused` accepts.
pub fn first_refusal(outcomes: &[Outcome], since: Instant, refused: impl Fn(&Outcome) -> bool) -> Option<Outcome> {
    outcomes.iter().filter(|o| o.started >= since).find(|o| refused(o)).cloned()
}

/// A short text of the outcomes that are not 200, for assertion messages.
pub fn failures(outcomes: &[Outcome], origin: Instant) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| !o.is_ok())
        .map(|o| {
            let at = o.started.saturating_duration_since(origin);
            match &o.result {
                Ok(code) => format!("+{at:?}: {code} {}", o.body.trim()),
                Err(e) => format!("+{at:?}: {e}"),
            }
        })
        .collect()
}

/// Like [`Traffic`], but keeps every outcome with its times, so a test can
/// tell when behaviour changed (e.g. how long after a revocation the first
/// refusal came).
pub struct Probe {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    paced: Paced,
}

impl Probe {
    /// Sends `GET path` to `addr` every `interval`, one new connection each.
    pub fn start(addr: SocketAddr, path: &str, interval: Duration) -> Probe {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let outcomes2 = outcomes.clone();
        let path = path.to_string();
        let paced = Paced::start(interval, move || {
            let started = Instant::now();
            let (result, body) = match request(addr, &path, Duration::from_secs(5)) {
                Ok(r) => (Ok(r.status), r.body),
                Err(e) => (Err(e), String::new()),
            };
            outcomes2.lock().push(Outcome { started, finished: Instant::now(), result, body });
        });
        Probe { outcomes, paced }
    }

    /// The outcomes so far.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().clone()
    }

    /// Waits until `cond` holds for the outcomes so far; false after `timeout`.
    pub fn wait_for(&self, timeout: Duration, mut cond: impl FnMut(&[Outcome]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(&self.outcomes.lock()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the thread (after its request in flight) and returns every outcome.
    pub fn stop(mut self) -> Vec<Outcome> {
        self.paced.halt();
        self.outcomes()
    }
}
