//! The read-only HTTP endpoints, served on both listeners:
//! `/health`, `/ready`, `/metrics`, `/pki/ca/bundle`, `/pki/crl`, `/pki/jwks`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::issuer::Issuer;

#[derive(Clone)]
pub struct HttpState {
    pub issuer: Arc<Issuer>,
    /// Renders the Prometheus text of `/metrics` (the telemetry pipeline, wired by `app`).
    pub metrics: MetricsRenderer,
}

/// Produces the Prometheus text exposition.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/pki/ca/bundle", get(bundle))
        .route("/pki/crl", get(crl))
        .route("/pki/jwks", get(jwks))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

/// Ready once the CA is loaded (the issuer exists) and the database answers.
async fn ready(State(s): State<HttpState>) -> Response {
    match s.issuer.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], (s.metrics)()).into_response()
}

async fn bundle(State(s): State<HttpState>) -> Response {
    pem_response(s.issuer.snapshot().bundle_pem.clone())
}

#[derive(Debug, Deserialize)]
struct CrlQuery {
    format: Option<String>,
    /// Fingerprint of the issuing CA (DER form only; default: the active Services CA).
    issuer: Option<String>,
}

async fn crl(State(s): State<HttpState>, Query(q): Query<CrlQuery>) -> Response {
    let snapshot = s.issuer.snapshot();
    match q.format.as_deref() {
        None | Some("pem") => pem_response(snapshot.crl_pem.clone()),
        Some("der") => {
            let wanted = q.issuer.or_else(|| snapshot.services().map(|c| c.fingerprint.clone())).unwrap_or_default();
            match snapshot.crl_of(&wanted) {
                Some(crl) => ([(header::CONTENT_TYPE, "application/pkix-crl")], crl.der.clone()).into_response(),
                None => (StatusCode::NOT_FOUND, format!("no CRL for issuer {wanted:?}\n")).into_response(),
            }
        }
        Some(other) => (StatusCode::BAD_REQUEST, format!("format {other:?} is not pem or der\n")).into_response(),
    }
}

async fn jwks(State(s): State<HttpState>) -> Response {
    axum::Json(s.issuer.snapshot().jwks.clone()).into_response()
}

fn pem_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], body).into_response()
}
