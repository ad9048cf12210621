//! Listeners and accept loops: the TLS API port, the plaintext HTTP port and
//! the local Unix socket. Each connection is served by hyper with one router;
//! what the transport knows about the peer travels as a request extension
//! (`attest::TlsPeer` on the TLS port, `attest::UnixPeer` on the socket).
//! What the local socket's clients send passes through `authority::FilteredStream`
//! first, so grpc-core clients' `:authority` does not cost them their request.
//! `client.rs` is the other end of the TLS port: how the CLI dials it.

mod authority;
pub mod client;
mod unix;

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::attest::{TlsPeer, UnixPeer};

pub use authority::{AuthorityFilter, FilterError, FilteredStream, MAX_HEADER_BLOCK};
pub use unix::{SocketError, bind_unix};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the TLS port until `shutdown` turns true.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let certificate =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
            let service = router.layer(axum::Extension(TlsPeer { certificate }));
            serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Serves a plaintext TCP port until `shutdown` turns true.
pub async fn serve_tcp(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let router = router.clone();
        tokio::spawn(async move {
            serve_connection(TokioIo::new(tcp), router).await;
        });
    }
}

/// Serves the local socket until `shutdown` turns true. The kernel's peer
/// credentials of each connection are attached to its requests; its request
/// headers go through [`FilteredStream`].
pub async fn serve_unix(listener: UnixListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let peer = match stream.peer_cred() {
            Ok(c) => UnixPeer { pid: c.pid(), uid: c.uid(), gid: c.gid() },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; connection dropped");
                continue;
            }
        };
        let service = router.clone().layer(axum::Extension(peer));
        tokio::spawn(async move {
            serve_connection(TokioIo::new(FilteredStream::new(stream)), service).await;
        });
    }
}

async fn serve_connection<I>(io: I, router: Router)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Envoy keeps one long-lived HTTP/2 connection with one stream per SDS
    // resource (or one ADS stream); allow many without flow-control stalls.
    builder.http2().max_concurrent_streams(Some(10_000));
    if let Err(e) = builder.serve_connection(io, service).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
