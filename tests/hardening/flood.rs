//! Thousands of half-open connections once exhausted the process's file
//! descriptors and stalled every listener. Now each listener sheds what is
//! over its budget (per uid on the local socket), closes connections whose
//! first request never comes, and the API port and open streams carry on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::support::my_uid;
use crate::support::process::poll;
use crate::support::server::{Server, metric_with, try_http_get};
use crate::support::socket;
use crate::tmp;

/// The `ready` event of the server's log.
fn ready_event(s: &Server) -> serde_json::Value {
    s.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "ready")
        .expect("a ready event")
}

/// Whether a process of another uid gets an HTTP/2 answer on the socket.
fn served_as_nobody(socket: &std::path::Path) -> bool {
    let script = "import socket,sys\n\
                  s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n\
                  s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00')\n\
                  print(len(s.recv(64)))\n";
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(crate::support::venv_python())
        .args(["-c", script])
        .arg(socket)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse::<usize>().is_ok_and(|n| n > 0)
}

/// Every serial the DER CRLs list, lowercase hex without leading zeros.
fn crl_serials(crls: &[Vec<u8>]) -> Vec<String> {
    use x509_parser::prelude::FromDer;
    crls.iter()
        .flat_map(|der| {
            let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
            crl.iter_revoked_certificates()
                .map(|r| hex::encode(r.raw_serial()).trim_start_matches('0').to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_flood_of_silent_connections_is_shed_while_the_api_and_open_streams_keep_working() {
    let dir = tmp();
    // Another uid must reach the socket beside the data directory.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let launcher = ["prlimit", "--nofile=1024:1024", "--"];
    let s = Server::try_start_under(&launcher, &data, &["--header-timeout", "10"]).unwrap();
    let ready = ready_event(&s);
    let http_max = ready["max_connections_http"].as_u64().unwrap() as usize;
    let per_uid = ready["max_connections_socket_per_uid"].as_u64().unwrap() as usize;
    assert!(http_max < 200 && per_uid < 200, "budgets from the 1024 descriptors: {ready}");
    let socket = Server::socket_path(&data);
    let id = "spiffe://example.org/svc/flood";
    s.ok(&["entry", "create", "--spiffe-id", id, "--selector", &format!("unix:uid:{}", my_uid())]);

    // A Workload API stream opened before the flood.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut stream = rt.block_on(async {
        let mut client = socket::workload_client(&socket, true).await;
        let request = trustmesh::proto::spiffe::X509svidRequest {};
        let mut stream = client.fetch_x509svid(request).await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap();
        stream
    });

    // Half-sent requests on the plaintext port, silent connections on the socket.
    let flood_started = Instant::now();
    let http: Vec<TcpStream> = (0..http_max + 100)
        .map(|_| {
            let mut t = TcpStream::connect(s.http).unwrap();
            let _ = t.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n");
            t
        })
        .collect();
    let local: Vec<UnixStream> = (0..per_uid + 100).map(|_| UnixStream::connect(&socket).unwrap()).collect();

    // While the flood holds: the API port answers, another uid is served on
    // the socket, and the open stream gets a revocation.
    s.ok(&["pki", "status"]);
    assert!(served_as_nobody(&socket), "another uid is served on the socket");
    s.generate(dir.path(), "victim", "spiffe://example.org/svc/victim", &[]);
    let serial = s.json(&["pki", "cert", "list", "--spiffe-id", "spiffe://example.org/svc/victim"])[0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok(&["pki", "cert", "revoke", &serial]);
    let pushed = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), stream.message()).await });
    let pushed = pushed.expect("the open stream got the revocation").unwrap().unwrap();
    assert!(crl_serials(&pushed.crl).contains(&serial.trim_start_matches('0').to_string()), "{serial}");
    assert!(flood_started.elapsed() < Duration::from_secs(10), "all of it within the first-request time");

    // The silent connections are closed once their first request is late,
    // and the plaintext port answers again.
    let status = poll(Duration::from_secs(20), || (try_http_get(s.http, "/ready").ok()?.0 == 200).then_some(()));
    assert!(status.is_some(), "/ready answers again after the flood is shed");
    let mut closed = 0;
    for mut c in http.into_iter().take(20) {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        if matches!(c.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 20, "the server closed the half-sent requests");
    drop(local);

    // Counted and logged, a line per interval rather than per connection.
    let metrics = String::from_utf8(s.get("/metrics").1).unwrap();
    let shed = |listener, reason| {
        metric_with(&metrics, "trustmesh_connections_shed_total", &[("listener", listener), ("reason", reason)])
    };
    assert!(shed("http", "listener_full").is_some_and(|n| n >= 100.0), "{metrics}");
    assert!(shed("http", "first_request_timeout").is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(shed("socket", "peer_full").is_some_and(|n| n >= 100.0), "{metrics}");
    let lines = s.log().lines().filter(|l| l.contains("connection shed")).count();
    assert!((1..=12).contains(&lines), "{lines} log lines about shed connections");
}
