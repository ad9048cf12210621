//! gRPC over a Unix socket: a channel, and a raw SPIFFE Workload API client
//! (trustmesh's generated one) for the byte-level checks the `spiffe` crate
//! does not expose.

use std::path::Path;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use trustmesh::proto::spiffe::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// The interceptor that adds (or not) the security header.
pub type Header = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
pub type Client = SpiffeWorkloadApiClient<InterceptedService<Channel, Header>>;

/// A gRPC channel to the socket at `path`.
pub async fn channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap()
}

/// A Workload API client of the socket at `path`; `header` adds
/// `workload.spiffe.io: true`.
pub async fn workload_client(path: &Path, header: bool) -> Client {
    let channel = channel(path).await;
    let with: Header = |mut req| {
        req.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
        Ok(req)
    };
    let without: Header = Ok;
    SpiffeWorkloadApiClient::with_interceptor(channel, if header { with } else { without })
}
