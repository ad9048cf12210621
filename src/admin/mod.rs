//! The admin server: the gRPC admin service, HTTPS and the OpenBao-compatible
//! PKI API (`vault/`) on one TLS port, and the plaintext read-only HTTP
//! listener. Like the other servers (`sds`,
//! `workload`, `telemetry`), it touches tonic and axum; the sockets are
//! `net`'s.

mod agent;
mod grpc;
mod grpc_cas;
mod grpc_profiles;
mod http;
mod tls;
mod vault;

use std::sync::Arc;

use axum::Router;

use crate::issuer::{Issuer, MAX_REQUEST_BYTES};
use crate::proto::admin::v1::admin_server::AdminServer;

pub use grpc::status;
pub use http::{HttpState, MetricsRenderer};
pub use tls::ServerTls;

/// gRPC messages above this are refused by the transport; CSRs above
/// [`MAX_REQUEST_BYTES`] are refused (and audited) by the service.
const MAX_GRPC_MESSAGE: usize = 4 * MAX_REQUEST_BYTES;

/// The router of the TLS port: the admin gRPC service, the other gRPC
/// services given in `grpc` (SDS), the HTTP endpoints and the
/// OpenBao-compatible PKI API (`/v1/…`).
pub fn tls_router(issuer: Arc<Issuer>, metrics: MetricsRenderer, grpc: tonic::service::Routes) -> Router {
    let admin = AdminServer::new(grpc::AdminService::new(issuer.clone())).max_decoding_message_size(MAX_GRPC_MESSAGE);
    let grpc = grpc.add_service(admin).add_service(agent::server(issuer.clone())).prepare().into_axum_router();
    grpc.merge(http::routes(HttpState { issuer: issuer.clone(), metrics })).merge(vault::routes(issuer))
}

/// The router of the plaintext port.
pub fn http_router(issuer: Arc<Issuer>, metrics: MetricsRenderer) -> Router {
    http::routes(HttpState { issuer, metrics })
}
