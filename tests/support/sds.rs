//! The SDS server in-process on a Unix socket in a temp dir, with a fake
//! identity source (tests publish identity sets and choose their versions,
//! `support::fixtures`) and a fake attestor (the caller names itself in
//! `x-test-caller`); xDS streams and requests of a test client.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use trustmesh::domain::{Selector, SelectorKind};
use trustmesh::sds::{CallerAttestor, SECRET_TYPE, SdsServer};
use trustmesh::trust::Acknowledgements;
use trustmesh::trust::TrustSnapshot;

use super::fixtures::{FakeSource, fake_svid, fake_trust, identity_set};

pub const ALICE: &str = "spiffe://example.org/alice";
pub const ALICE_ADMIN: &str = "spiffe://example.org/alice-admin";
pub const BOB: &str = "spiffe://example.org/bob";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// The selector of the caller named `name` (as [`HeaderAttestor`] attests
/// it), the name of its identities in the [`FakeSource`].
pub fn caller(name: &str) -> String {
    format!("token:sub:{name}")
}

/// The caller is whoever `x-test-caller` names (`token:sub:<name>`).
pub struct HeaderAttestor;

#[async_trait::async_trait]
impl CallerAttestor for HeaderAttestor {
    async fn selectors(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        _extensions: &http::Extensions,
    ) -> Result<BTreeSet<Selector>, Status> {
        let caller = metadata
            .get("x-test-caller")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("no x-test-caller header"))?;
        let selector =
            Selector::new(SelectorKind::TokenSub, caller).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(BTreeSet::from([selector]))
    }
}

/// The server on a fresh socket; alice holds two SVIDs, bob one.
pub struct Harness {
    pub source: Arc<FakeSource>,
    pub socket: PathBuf,
    /// Which trust revision each stream's client holds.
    pub acks: Arc<Acknowledgements>,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Harness {
    pub async fn start() -> Self {
        // No trust snapshot beside the identity sets' (the sender goes at once).
        let source = Arc::new(FakeSource::new(watch::channel(fake_trust(0, "none")).1));
        let t = fake_trust(1, "root-1");
        let alice = vec![fake_svid(ALICE, "a1"), fake_svid(ALICE_ADMIN, "aa1")];
        source.publish(&caller("alice"), identity_set(1, alice, t.clone()));
        source.publish(&caller("bob"), identity_set(1, vec![fake_svid(BOB, "b1")], t));
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sds.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let acks = Acknowledgements::new();
        let routes = SdsServer::new(source.clone(), Arc::new(HeaderAttestor), acks.clone()).routes();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
        });
        Self { source, socket, acks, _dir: dir, server }
    }

    /// A new HTTP/2 connection to the socket.
    pub async fn channel(&self) -> Channel {
        let path = self.socket.clone();
        Endpoint::try_from("http://sds.local")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await
            .unwrap()
    }

    /// Publishes a new trust bundle into every caller's set.
    pub fn publish_trust(&self, t: Arc<TrustSnapshot>) {
        for name in ["alice", "bob"] {
            self.source.update(&caller(name), |s| s.trust = t.clone());
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn with_caller<T>(caller: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if !caller.is_empty() {
        r.metadata_mut().insert("x-test-caller", caller.parse().unwrap());
    }
    r
}

const WAIT: Duration = Duration::from_secs(10);

/// One xDS stream of a test client: requests in, responses out.
pub struct XdsStream<Req, Resp> {
    tx: mpsc::Sender<Req>,
    rx: Streaming<Resp>,
}

/// A state-of-the-world stream (SDS or ADS).
pub type Sotw = XdsStream<DiscoveryRequest, DiscoveryResponse>;
/// A delta stream (SDS or ADS).
pub type Delta = XdsStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

impl<Req, Resp: std::fmt::Debug> XdsStream<Req, Resp> {
    pub async fn send(&self, r: Req) {
        assert!(self.tx.send(r).await.is_ok(), "the request stream closed");
    }

    pub async fn recv(&mut self) -> Resp {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// The status the server ended the stream with.
    pub async fn status(&mut self) -> Status {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Err(s)) => s,
            other => panic!("expected an error status, got {other:?}"),
        }
    }
}

/// What opening a stream returns: the server's response stream.
type Opened<Resp> = Result<tonic::Response<Streaming<Resp>>, Status>;

impl<Req, Resp> XdsStream<Req, Resp> {
    /// Opens a stream as `caller` with `call`, one of the generated clients'
    /// streaming methods.
    async fn open<F: Future<Output = Opened<Resp>>>(
        caller: &str,
        call: impl FnOnce(Request<ReceiverStream<Req>>) -> F,
    ) -> Result<Self, Status> {
        let (tx, rx) = mpsc::channel(16);
        let rx = call(with_caller(caller, ReceiverStream::new(rx))).await?.into_inner();
        Ok(Self { tx, rx })
    }
}

impl Sotw {
    pub async fn sds(channel: Channel, caller: &str) -> Result<Self, Status> {
        let mut client = SecretDiscoveryServiceClient::new(channel);
        Self::open(caller, |r| client.stream_secrets(r)).await
    }

    pub async fn ads(channel: Channel, caller: &str) -> Result<Self, Status> {
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        Self::open(caller, |r| client.stream_aggregated_resources(r)).await
    }
}

impl Delta {
    pub async fn sds(channel: Channel, caller: &str) -> Result<Self, Status> {
        let mut client = SecretDiscoveryServiceClient::new(channel);
        Self::open(caller, |r| client.delta_secrets(r)).await
    }

    pub async fn ads(channel: Channel, caller: &str) -> Result<Self, Status> {
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        Self::open(caller, |r| client.delta_aggregated_resources(r)).await
    }
}

/// A SotW secrets request.
pub fn req(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: SECRET_TYPE.into(),
        version_info: version.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// A delta secrets request.
pub fn delta(subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: SECRET_TYPE.into(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// A node with one metadata field.
pub fn node(id: &str, key: &str, value: Kind) -> Node {
    let fields = HashMap::from([(key.to_string(), Value { kind: Some(value) })]);
    Node { id: id.into(), cluster: "test".into(), metadata: Some(Struct { fields }), ..Default::default() }
}

pub fn secret(any: &Any) -> Secret {
    assert_eq!(any.type_url, SECRET_TYPE);
    Secret::decode(any.value.as_slice()).unwrap()
}

pub fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|a| secret(a).name).collect()
}

pub fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|x| x.name.clone()).collect()
}
