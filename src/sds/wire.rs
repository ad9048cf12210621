//! The xDS messages as trustmesh reads and writes them. Wire-compatible with
//! `envoy.service.discovery.v3` (same field numbers), with two differences
//! from the generated types:
//!
//! - requests keep the `node` as undecoded bytes: Envoy may send its whole
//!   node (~61 KB, 516 extensions) on every request, ACKs included, and only
//!   the first request's node is ever decoded ([`parse_node`]);
//! - responses carry resources as already-encoded `Any` bytes shared by every
//!   stream ([`Encoded`](super::protocol::Encoded)).
//!
//! The streams do not build these response structs: [`encode_sotw`] and
//! [`encode_delta`] write a reply straight into its gRPC frame — the few
//! per-stream fields (version, nonce, type URL) by hand, each resource as the
//! frame [`Encoded`](super::protocol::Encoded) prepared once — so a push costs
//! no protobuf encoding, no allocation and one copy of the shared bytes per
//! stream. The structs remain for `FetchSecrets` and as the clients' view.

use crate::domain::text;
use prost::Message as _;
use prost::bytes::{BufMut, Bytes};

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{ResourceError, ResourceName};
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::delta::{DeltaReply, DeltaRequest as DeltaInput};
use super::protocol::{ErrorDetail, ResourceFailure};
use super::resources::ValidatorMode;
use super::sotw::{SotwReply, SotwRequest as SotwInput};

/// The node metadata key that switches a node to `trusted_ca` + `crl`.
pub const DISABLE_SPIFFE_VALIDATION: &str = "disable_spiffe_cert_validation";

/// `envoy.service.discovery.v3.DiscoveryRequest`, node undecoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryRequest {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub node: Bytes,
    #[prost(string, repeated, tag = "3")]
    pub resource_names: Vec<String>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "6")]
    pub error_detail: Option<RpcStatus>,
}

/// `envoy.service.discovery.v3.DeltaDiscoveryRequest`, node undecoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaDiscoveryRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub node: Bytes,
    #[prost(string, tag = "2")]
    pub type_url: String,
    #[prost(string, repeated, tag = "3")]
    pub resource_names_subscribe: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub resource_names_unsubscribe: Vec<String>,
    #[prost(btree_map = "string, string", tag = "5")]
    pub initial_resource_versions: std::collections::BTreeMap<String, String>,
    #[prost(string, tag = "6")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "7")]
    pub error_detail: Option<RpcStatus>,
}

/// `envoy.service.discovery.v3.DiscoveryResponse`, resources pre-encoded.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct DiscoveryResponse {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
    #[prost(message, optional, tag = "6")]
    pub control_plane: Option<ControlPlane>,
    #[prost(message, repeated, tag = "7")]
    pub resource_errors: Vec<ResourceError>,
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct DeltaDiscoveryResponse {
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<Resource>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
    #[prost(string, repeated, tag = "6")]
    pub removed_resources: Vec<String>,
    #[prost(message, optional, tag = "7")]
    pub control_plane: Option<ControlPlane>,
    #[prost(message, repeated, tag = "9")]
    pub resource_errors: Vec<ResourceError>,
}

/// `envoy.service.discovery.v3.Resource`, the `Any` pre-encoded.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct Resource {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub resource: Bytes,
    #[prost(string, tag = "3")]
    pub name: String,
}

macro_rules! debug_without_bytes {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), " { .. }"))
            }
        }
    )*};
}
debug_without_bytes!(DiscoveryResponse, DeltaDiscoveryResponse, Resource);

/// The parts of `envoy.config.core.v3.Node` trustmesh reads; everything else
/// (extensions, build version, …) is skipped unparsed.
#[derive(Clone, PartialEq, prost::Message)]
struct NodeFields {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    cluster: String,
    #[prost(message, optional, tag = "3")]
    metadata: Option<Struct>,
}

/// What the first request says about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub validator: ValidatorMode,
    /// Metadata that was present but not understood (ignored), for the log.
    pub ignored: Option<String>,
}

/// Decodes the node of a first request. No node is an anonymous node that
/// gets the default (SPIFFE) validator.
pub fn parse_node(bytes: &Bytes) -> Result<NodeInfo, prost::DecodeError> {
    let node = <NodeFields as prost::Message>::decode(bytes.clone())?;
    let mut validator = ValidatorMode::Spiffe;
    let mut ignored = None;
    if let Some(value) = node.metadata.as_ref().and_then(|m| m.fields.get(DISABLE_SPIFFE_VALIDATION)) {
        match &value.kind {
            Some(Kind::BoolValue(true)) => validator = ValidatorMode::TrustedCa,
            Some(Kind::BoolValue(false)) => {}
            Some(Kind::StringValue(s)) if s == "true" => validator = ValidatorMode::TrustedCa,
            Some(Kind::StringValue(s)) if s == "false" => {}
            _ => ignored = Some(format!("{DISABLE_SPIFFE_VALIDATION} is not a boolean; using the SPIFFE validator")),
        }
    }
    // Node ids end up in logs: keep them bounded.
    Ok(NodeInfo { id: text::shorten(&node.id, 256), cluster: text::shorten(&node.cluster, 256), validator, ignored })
}

impl DiscoveryRequest {
    pub fn into_input(self, default_type: Option<&str>) -> SotwInput {
        SotwInput {
            type_url: typed(self.type_url, default_type),
            version_info: self.version_info,
            resource_names: self.resource_names,
            response_nonce: self.response_nonce,
            error_detail: self.error_detail.map(detail),
        }
    }
}

impl DeltaDiscoveryRequest {
    pub fn into_input(self, default_type: Option<&str>) -> DeltaInput {
        DeltaInput {
            type_url: typed(self.type_url, default_type),
            subscribe: self.resource_names_subscribe,
            unsubscribe: self.resource_names_unsubscribe,
            initial_resource_versions: self.initial_resource_versions,
            response_nonce: self.response_nonce,
            error_detail: self.error_detail.map(detail),
        }
    }
}

/// On the SDS endpoints the type URL is implicit.
fn typed(type_url: String, default_type: Option<&str>) -> String {
    match default_type {
        Some(t) if type_url.is_empty() => t.to_string(),
        _ => type_url,
    }
}

fn detail(s: RpcStatus) -> ErrorDetail {
    ErrorDetail { code: s.code, message: s.message }
}

/// `control_plane.identifier` of every response.
const CONTROL_PLANE: &str = concat!("trustmesh ", env!("CARGO_PKG_VERSION"));

pub fn control_plane() -> ControlPlane {
    ControlPlane { identifier: CONTROL_PLANE.to_string() }
}

impl From<SotwReply> for DiscoveryResponse {
    fn from(r: SotwReply) -> Self {
        Self {
            version_info: r.version_info.to_string(),
            resources: r.resources.iter().map(|e| e.any.clone()).collect(),
            type_url: r.type_url.to_string(),
            nonce: r.nonce.to_string(),
            control_plane: Some(control_plane()),
            resource_errors: errors(r.failures),
        }
    }
}

impl From<DeltaReply> for DeltaDiscoveryResponse {
    fn from(r: DeltaReply) -> Self {
        Self {
            system_version_info: r.system_version_info.to_string(),
            resources: r
                .resources
                .iter()
                .map(|e| Resource { version: e.version.clone(), resource: e.any.clone(), name: e.name.clone() })
                .collect(),
            type_url: r.type_url.to_string(),
            nonce: r.nonce.to_string(),
            removed_resources: r.removed,
            control_plane: Some(control_plane()),
            resource_errors: errors(r.failures),
        }
    }
}

/// Bytes [`encode_sotw`] writes, or a little more.
pub fn sotw_len(r: &SotwReply) -> usize {
    r.resources.iter().map(|e| e.sotw.len()).sum::<usize>() + SMALL_FIELDS
}

/// Bytes [`encode_delta`] writes, or a little more (removals and errors aside).
pub fn delta_len(r: &DeltaReply) -> usize {
    r.resources.iter().map(|e| e.delta.len()).sum::<usize>() + SMALL_FIELDS
}

/// Appends `r` as a `DiscoveryResponse`, fields in number order.
pub fn encode_sotw(r: &SotwReply, buf: &mut impl BufMut) {
    put_decimal(buf, 1, r.version_info);
    r.resources.iter().for_each(|e| buf.put_slice(&e.sotw));
    put_field(buf, 4, r.type_url.as_bytes());
    put_decimal(buf, 5, r.nonce);
    put_control_plane(buf, 6);
    put_errors(buf, 7, &r.failures);
}

/// Appends `r` as a `DeltaDiscoveryResponse`, fields in number order.
pub fn encode_delta(r: &DeltaReply, buf: &mut impl BufMut) {
    put_decimal(buf, 1, r.system_version_info);
    r.resources.iter().for_each(|e| buf.put_slice(&e.delta));
    put_field(buf, 4, r.type_url.as_bytes());
    put_decimal(buf, 5, r.nonce);
    r.removed.iter().for_each(|name| put_field(buf, 6, name.as_bytes()));
    put_control_plane(buf, 7);
    put_errors(buf, 9, &r.failures);
}

/// Room for the fields besides the resources (version, type URL, nonce,
/// control plane), so a reply is written into one allocation.
const SMALL_FIELDS: usize = 256;

/// A base-128 varint.
pub(crate) fn put_varint(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Bytes [`put_varint`] writes for `v`.
pub(crate) fn varint_len(v: usize) -> usize {
    let bits = usize::BITS - (v | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

/// A length-delimited field (string, bytes, message) with a one-byte tag.
fn put_field(buf: &mut impl BufMut, field: u8, bytes: &[u8]) {
    buf.put_u8(field << 3 | 2);
    put_varint(buf, bytes.len() as u64);
    buf.put_slice(bytes);
}

/// A string field holding `n` in decimal, formatted on the stack.
fn put_decimal(buf: &mut impl BufMut, field: u8, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put_field(buf, field, &digits[at..]);
}

fn put_control_plane(buf: &mut impl BufMut, field: u8) {
    let id = CONTROL_PLANE.as_bytes();
    buf.put_u8(field << 3 | 2);
    put_varint(buf, (1 + varint_len(id.len()) + id.len()) as u64);
    put_field(buf, 1, id); // ControlPlane.identifier
}

/// `resource_errors` (rare: encoded with prost, allocating).
fn put_errors(buf: &mut impl BufMut, field: u8, failures: &[ResourceFailure]) {
    for e in errors(failures.to_vec()) {
        buf.put_u8(field << 3 | 2);
        buf.put_slice(&e.encode_length_delimited_to_vec());
    }
}

/// `resource_errors`: code NOT_FOUND (5) with the reason, per name.
pub fn errors(failures: Vec<ResourceFailure>) -> Vec<ResourceError> {
    failures
        .into_iter()
        .map(|f| ResourceError {
            resource_name: Some(ResourceName { name: f.name, dynamic_parameter_constraints: None }),
            error_detail: Some(RpcStatus {
                code: tonic::Code::NotFound as i32,
                message: f.reason,
                details: Vec::new(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::bytes::Bytes;

    use super::*;
    use crate::sds::protocol::Encoded;

    fn encoded(name: &str, content: &[u8]) -> Arc<Encoded> {
        Arc::new(Encoded::new(name, Bytes::from(content.to_vec())))
    }

    fn failures() -> Vec<ResourceFailure> {
        vec![ResourceFailure { name: "ALL".into(), reason: "x".repeat(300) }]
    }

    /// The hand-written responses decode exactly as the prost structs they replace.
    #[test]
    fn replies_decode_as_the_xds_messages() {
        let resources = vec![encoded("default", &[1; 2000]), encoded("ROOTCA", b"bundle")];
        for (version, nonce) in [(0, 1), (7, 300), (u64::MAX, u64::MAX)] {
            let sotw = SotwReply {
                type_url: Arc::from(crate::sds::SECRET_TYPE),
                version_info: version,
                nonce,
                resources: resources.clone(),
                failures: failures(),
            };
            let mut buf = Vec::new();
            encode_sotw(&sotw, &mut buf);
            assert_eq!(DiscoveryResponse::decode(buf.as_slice()).unwrap(), DiscoveryResponse::from(sotw));

            let delta = DeltaReply {
                type_url: Arc::from(crate::sds::SECRET_TYPE),
                system_version_info: version,
                nonce,
                resources: resources.clone(),
                removed: vec!["gone".into(), String::new()],
                failures: failures(),
            };
            let mut buf = Vec::new();
            encode_delta(&delta, &mut buf);
            assert_eq!(DeltaDiscoveryResponse::decode(buf.as_slice()).unwrap(), DeltaDiscoveryResponse::from(delta));
        }
    }

    #[test]
    fn varints_have_the_length_they_are_written_with() {
        for v in [0usize, 1, 127, 128, 16_383, 16_384, 1 << 28, usize::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v as u64);
            assert_eq!(buf.len(), varint_len(v), "{v}");
        }
    }
}
