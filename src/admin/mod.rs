//! The admin server: gRPC admin service and HTTPS on one TLS port, and the
//! plaintext read-only HTTP listener. The only module (with the future SDS and
//! Workload API servers) that touches tonic, axum and sockets.

mod grpc;
mod http;
mod tls;

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::issuer::{Issuer, MAX_REQUEST_BYTES};
use crate::proto::admin::v1::admin_server::AdminServer;

pub use grpc::status;
pub use http::{HttpState, MetricsRenderer};
pub use tls::ServerTls;

/// gRPC messages above this are refused by the transport; CSRs above
/// [`MAX_REQUEST_BYTES`] are refused (and audited) by the service.
const MAX_GRPC_MESSAGE: usize = 4 * MAX_REQUEST_BYTES;

/// The router of the TLS port: the admin gRPC service and the HTTP endpoints.
pub fn tls_router(issuer: Arc<Issuer>, metrics: MetricsRenderer) -> Router {
    let admin = AdminServer::new(grpc::AdminService::new(issuer.clone())).max_decoding_message_size(MAX_GRPC_MESSAGE);
    let grpc = tonic::service::Routes::new(admin).prepare().into_axum_router();
    grpc.merge(http::routes(HttpState { issuer, metrics }))
}

/// The router of the plaintext port.
pub fn http_router(issuer: Arc<Issuer>, metrics: MetricsRenderer) -> Router {
    http::routes(HttpState { issuer, metrics })
}

/// Serves the TLS port until `shutdown` turns true.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerTls>,
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
        let acceptor = tls.acceptor();
        let router = router.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let peer = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
            let service = router.layer(axum::Extension(crate::attest::TlsPeer { certificate: peer }));
            serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Serves the plaintext HTTP port until `shutdown` turns true.
pub async fn serve_http(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
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

async fn serve_connection<I>(io: I, router: Router)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection(io, service).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
