//! Listeners and accept loops: the TLS API port, the plaintext HTTP port and
//! the local Unix socket. Each connection is served by hyper with one router;
//! what the transport knows about the peer travels as a request extension
//! (`attest::TlsPeer` on the TLS port, `attest::UnixPeer` on the socket).
//! What the local socket's clients send passes through `authority::FilteredStream`
//! first, so grpc-core clients' `:authority` does not cost them their request.
//! `client.rs` is the other end of the TLS port: how the CLI dials it.

mod activity;
mod authority;
pub mod client;
mod limits;
mod metrics;
mod unix;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::attest::{TlsPeer, UnixPeer};

use activity::{Activity, PeerFacts, Tracked};
pub use authority::{AuthorityFilter, FilterError, FilteredStream, MAX_HEADER_BLOCK};
pub use limits::{Gate, Limits, ListenerLimits};
pub use metrics::{Listener, ShedReason};
pub use unix::{SocketError, bind_unix, check_socket_path};

/// An HTTP/2 connection is pinged when silent this long, and closed when a
/// ping goes unanswered for [`KEEPALIVE_TIMEOUT`]: a proxy that vanished
/// without closing its connection frees its place.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection closed for idleness may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Pause after `accept` fails (out of descriptors): the loop must not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the TLS port until `shutdown` turns true.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    gate: Arc<Gate>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                gate.accept_failed(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(admission) = gate.admit(None) else { continue };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(gate.limits().first_request, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    gate.shed(ShedReason::FirstRequest, None);
                    return;
                }
            };
            let certificate =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
            let peer = PeerFacts::Tls(TlsPeer { certificate });
            serve_connection(TokioIo::new(stream), router, &gate, None, peer).await;
            drop(admission);
        });
    }
}

/// Serves a plaintext TCP port until `shutdown` turns true.
pub async fn serve_tcp(listener: TcpListener, router: Router, gate: Arc<Gate>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                gate.accept_failed(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(admission) = gate.admit(None) else { continue };
        let router = router.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            serve_connection(TokioIo::new(tcp), router, &gate, None, PeerFacts::None).await;
            drop(admission);
        });
    }
}

/// Serves the local socket until `shutdown` turns true. The kernel's peer
/// credentials of each connection are attached to its requests; its request
/// headers go through [`FilteredStream`].
pub async fn serve_unix(listener: UnixListener, router: Router, gate: Arc<Gate>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                gate.accept_failed(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let peer = match stream.peer_cred() {
            Ok(c) => UnixPeer { pid: c.pid(), uid: c.uid(), gid: c.gid() },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; connection dropped");
                continue;
            }
        };
        let Some(admission) = gate.admit(Some(peer.uid)) else { continue };
        let router = router.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(FilteredStream::new(stream));
            serve_connection(io, router, &gate, Some(peer.uid), PeerFacts::Unix(peer)).await;
            drop(admission);
        });
    }
}

/// Serves one connection until it ends, or until it has had no request in
/// flight for the gate's bounds (then it is shut down gracefully).
async fn serve_connection<I>(io: I, router: Router, gate: &Gate, peer: Option<u32>, facts: PeerFacts)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let limits = *gate.limits();
    let activity = Activity::new();
    let service = Tracked { inner: TowerToHyperService::new(router), activity: activity.clone(), peer: facts };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.first_request);
    // Envoy keeps one long-lived HTTP/2 connection with one stream per SDS
    // resource (or one ADS stream); allow many without flow-control stalls.
    // Frames up to 256 KiB: a client that sends its 61 KB node with every
    // xDS request may send each in one DATA frame instead of four.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(Some(10_000))
        .max_frame_size(256 * 1024)
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        reason = activity.idle(limits.first_request, limits.idle) => {
            match reason {
                ShedReason::FirstRequest => gate.shed(reason, peer),
                _ => gate.closed_idle(),
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
    }
}
