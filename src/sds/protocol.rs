//! The vocabulary of the per-stream xDS state machines ([`super::sotw`],
//! [`super::delta`]): what a stream can see ([`Catalog`]), what it tells the
//! adapter to log ([`Notice`]), the request limits and their errors.
//!
//! Everything here is pure: no tonic, no tokio, no clock. A stream is driven
//! by two kinds of input — a request from the client, and "the state changed"
//! (a new [`Catalog`]) — and answers with replies to send and notices to log.

use crate::domain::text;
use std::fmt;
use std::sync::Arc;

use prost::bytes::Bytes;

/// The type URL of SDS secrets.
pub const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Most resource names one stream may track per type (and one request may carry).
pub const MAX_NAMES: usize = 1_000;
/// Longest resource name accepted.
pub const MAX_NAME_BYTES: usize = 2_048;
/// Most distinct type URLs one stream may use.
pub const MAX_TYPES: usize = 16;
/// Longest type URL accepted.
pub const MAX_TYPE_URL_BYTES: usize = 512;

/// One resource ready to send: encoded once, shared by every stream that
/// holds it. `any` is an encoded `google.protobuf.Any`; `version` is derived
/// from those bytes, so equal content has equal versions on every stream and
/// across server restarts (what delta's `initial_resource_versions` needs).
///
/// The bytes are also kept framed as both response types carry them, so a
/// response is written as a few small per-stream fields plus one copy of a
/// shared frame, with no protobuf encoding per stream: `delta` is the whole
/// `resources` field of a `DeltaDiscoveryResponse` (tag, length, and the
/// `Resource` with version, `Any` and name, in field order), and `sotw` the
/// `resources` field of a `DiscoveryResponse` (tag, length, `Any`) — the
/// middle of the same buffer, as is `any`. One allocation per resource.
pub struct Encoded {
    pub name: String,
    pub version: String,
    pub any: Bytes,
    pub(crate) delta: Bytes,
    pub(crate) sotw: Bytes,
}

/// Hex digits of [`Encoded::version`].
const VERSION_LEN: usize = 16;

impl Encoded {
    pub fn new(name: impl Into<String>, any: Bytes) -> Self {
        Self::build(name.into(), any.len(), |buf| buf.extend_from_slice(&any))
    }

    /// Frames an `Any` of `any_len` bytes that `write` appends to the buffer
    /// (so the encoder writes straight into the shared frame, with no
    /// intermediate copy of what may be a private key).
    pub(crate) fn build(name: String, any_len: usize, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        use super::wire::{put_varint, varint_len};
        let any_field = 1 + varint_len(any_len) + any_len;
        let resource_len = 2 + VERSION_LEN + any_field + 1 + varint_len(name.len()) + name.len();
        let mut buf = Vec::with_capacity(1 + varint_len(resource_len) + resource_len);
        buf.push(0x12); // DeltaDiscoveryResponse.resources (2)
        put_varint(&mut buf, resource_len as u64);
        buf.extend_from_slice(&[0x0a, VERSION_LEN as u8]); // Resource.version (1), filled in below
        let version_at = buf.len();
        buf.extend_from_slice(&[b'0'; VERSION_LEN]);
        let sotw_at = buf.len();
        buf.push(0x12); // Resource.resource (2), DiscoveryResponse.resources (2)
        put_varint(&mut buf, any_len as u64);
        let any_at = buf.len();
        write(&mut buf);
        let any_end = buf.len();
        buf.push(0x1a); // Resource.name (3)
        put_varint(&mut buf, name.len() as u64);
        buf.extend_from_slice(name.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &buf[any_at..any_end]);
        let version = hex::encode(&digest.as_ref()[..VERSION_LEN / 2]);
        buf[version_at..version_at + VERSION_LEN].copy_from_slice(version.as_bytes());
        // The callers pass the writer's own `encoded_len`.
        debug_assert_eq!(any_end - any_at, any_len, "Encoded::build: the writer disagrees with any_len");
        let delta = Bytes::from(buf);
        Self { name, version, any: delta.slice(any_at..any_end), sotw: delta.slice(sotw_at..any_end), delta }
    }
}

/// Never shows the bytes: a certificate secret carries a private key.
impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoded")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("bytes", &self.any.len())
            .finish()
    }
}

/// What a catalog says about one name.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<Encoded>),
    /// No resource for this name, and why (not entitled, unknown name, …).
    Missing(String),
}

/// What one stream can see at one moment. A new catalog is a "state changed"
/// event; streams diff what they hold against it.
pub trait Catalog: Send + Sync {
    /// Whether this type URL is served at all.
    fn serves(&self, type_url: &str) -> bool;
    /// The resource named `name` of this type, or why there is none.
    fn lookup(&self, type_url: &str, name: &str) -> Lookup;
    /// The names a wildcard subscription of this type covers.
    fn wildcard(&self, type_url: &str) -> Vec<String>;
}

/// A name the stream cannot have, reported to the client (`resource_errors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceFailure {
    pub name: String,
    pub reason: String,
}

/// `error_detail` of a NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    pub code: i32,
    pub message: String,
}

/// What happened, for the adapter to log (with `type_url`, `nonce`,
/// `resource` fields). Returned as data so tests can assert on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Ack {
        type_url: String,
        nonce: String,
        version: String,
    },
    Nack {
        type_url: String,
        nonce: String,
        detail: ErrorDetail,
    },
    /// A request answering a response that is not the latest one sent.
    StaleNonce {
        type_url: String,
        nonce: String,
    },
    /// A requested name that gets no resource (reported once per reason).
    Unavailable {
        type_url: String,
        name: String,
        reason: String,
    },
    /// A type URL this server does not serve.
    UnknownType {
        type_url: String,
    },
}

/// Requests that end the stream (gRPC `InvalidArgument`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("{field} lists {count} resource names, more than the limit of {limit}")]
    TooManyNames { field: &'static str, count: usize, limit: usize },
    #[error("resource name {prefix:?}… is {len} bytes, more than the limit of {limit}")]
    NameTooLong { prefix: String, len: usize, limit: usize },
    #[error("type_url is empty: the aggregated stream needs a type URL on every request")]
    EmptyTypeUrl,
    #[error("type_url {prefix:?}… is {len} bytes, more than the limit of {limit}")]
    TypeUrlTooLong { prefix: String, len: usize, limit: usize },
    #[error("more than {limit} type URLs on one stream")]
    TooManyTypes { limit: usize },
}

/// Replies to send and notices to log, in order.
#[derive(Debug)]
pub struct Step<R> {
    pub replies: Vec<R>,
    pub notices: Vec<Notice>,
}

impl<R> Default for Step<R> {
    fn default() -> Self {
        Self { replies: Vec::new(), notices: Vec::new() }
    }
}

/// What a stream believes the client holds for one name.
#[derive(Debug, Clone)]
pub(crate) enum Held {
    /// We sent this resource.
    Sent(Arc<Encoded>),
    /// The client said it has this version (delta `initial_resource_versions`).
    Version(String),
    /// We reported that the name is unavailable, for this reason.
    Failed(String),
}

impl Held {
    pub(crate) fn matches(&self, lookup: &Lookup) -> bool {
        match (self, lookup) {
            (Held::Sent(held), Lookup::Found(now)) => Arc::ptr_eq(held, now) || held.version == now.version,
            (Held::Version(v), Lookup::Found(now)) => *v == now.version,
            (Held::Failed(a), Lookup::Missing(b)) => a == b,
            _ => false,
        }
    }

    pub(crate) fn from_lookup(lookup: &Lookup) -> Self {
        match lookup {
            Lookup::Found(e) => Held::Sent(e.clone()),
            Lookup::Missing(reason) => Held::Failed(reason.clone()),
        }
    }

    pub(crate) fn is_resource(&self) -> bool {
        !matches!(self, Held::Failed(_))
    }
}

/// Checks one list of names against the limits.
pub(crate) fn check_names(field: &'static str, names: &[String]) -> Result<(), ProtocolError> {
    if names.len() > MAX_NAMES {
        return Err(ProtocolError::TooManyNames { field, count: names.len(), limit: MAX_NAMES });
    }
    names.iter().try_for_each(|n| check_name(n))
}

pub(crate) fn check_name(name: &str) -> Result<(), ProtocolError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(ProtocolError::NameTooLong {
            prefix: text::shorten(name, 64),
            len: name.len(),
            limit: MAX_NAME_BYTES,
        });
    }
    Ok(())
}

pub(crate) fn check_type_url(type_url: &str) -> Result<(), ProtocolError> {
    if type_url.is_empty() {
        return Err(ProtocolError::EmptyTypeUrl);
    }
    if type_url.len() > MAX_TYPE_URL_BYTES {
        return Err(ProtocolError::TypeUrlTooLong {
            prefix: text::shorten(type_url, 64),
            len: type_url.len(),
            limit: MAX_TYPE_URL_BYTES,
        });
    }
    Ok(())
}

/// The names a subscription covers right now, in name order, each looked up
/// once. A wildcard over an unserved type resolves to the single name `*`,
/// so the failure is reported. `wildcard` is what [`wildcard_names`] returned.
///
/// Runs on every stream at every change: it borrows the names instead of
/// copying them (one allocation, the result).
pub(crate) fn resolve<'a>(
    catalog: &dyn Catalog,
    type_url: &str,
    explicit: impl Iterator<Item = &'a String>,
    wildcard: Option<&'a [String]>,
) -> Vec<(&'a str, Lookup)> {
    let mut names: Vec<&'a str> = explicit.map(String::as_str).collect();
    if let Some(more) = wildcard {
        names.extend(more.iter().map(String::as_str));
        names.sort_unstable();
        names.dedup();
    }
    names.into_iter().map(|n| (n, catalog.lookup(type_url, n))).collect()
}

/// The names a wildcard subscription of `type_url` covers (`*` alone for a
/// type that is not served), for [`resolve`].
pub(crate) fn wildcard_names(catalog: &dyn Catalog, type_url: &str) -> Vec<String> {
    if catalog.serves(type_url) { catalog.wildcard(type_url) } else { vec!["*".to_string()] }
}

/// Whether the desired names (sorted by [`resolve`]) include `name`.
pub(crate) fn covers(desired: &[(&str, Lookup)], name: &str) -> bool {
    desired.binary_search_by(|(n, _)| (*n).cmp(name)).is_ok()
}

/// Whether a request's `response_nonce` is the nonce `sent` (written in
/// decimal; 0 is "nothing sent yet" and matches nothing). Compared without
/// formatting: it runs on every ACK.
pub(crate) fn nonce_is(nonce: &str, sent: u64) -> bool {
    let b = nonce.as_bytes();
    sent != 0
        && !b.is_empty()
        && b.len() <= 20
        && b[0] != b'0'
        && b.iter().all(u8::is_ascii_digit)
        && nonce.parse::<u64>() == Ok(sent)
}

/// A catalog given as data, for the state-machine tests.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Default, Clone)]
    pub(crate) struct Fake {
        pub resources: BTreeMap<String, Lookup>,
    }

    impl Fake {
        /// `spec`: `name=content` (found) or `name!reason` (missing).
        pub(crate) fn of(spec: &[&str]) -> Arc<dyn Catalog> {
            let mut resources = BTreeMap::new();
            for s in spec {
                if let Some((name, reason)) = s.split_once('!') {
                    resources.insert(name.to_string(), Lookup::Missing(reason.to_string()));
                } else if let Some((name, content)) = s.split_once('=') {
                    let e = Encoded::new(name, Bytes::from(content.as_bytes().to_vec()));
                    resources.insert(name.to_string(), Lookup::Found(Arc::new(e)));
                }
            }
            Arc::new(Fake { resources })
        }
    }

    impl Catalog for Fake {
        fn serves(&self, type_url: &str) -> bool {
            type_url == SECRET_TYPE
        }
        fn lookup(&self, type_url: &str, name: &str) -> Lookup {
            if !self.serves(type_url) {
                return Lookup::Missing(format!("type URL {type_url} is not served"));
            }
            self.resources.get(name).cloned().unwrap_or_else(|| Lookup::Missing(format!("unknown name {name}")))
        }
        fn wildcard(&self, _type_url: &str) -> Vec<String> {
            self.resources.iter().filter(|(_, l)| matches!(l, Lookup::Found(_))).map(|(n, _)| n.clone()).collect()
        }
    }

    /// The content a reply carries for `name`, as the fake encoded it.
    pub(crate) fn content(e: &Encoded) -> String {
        format!("{}={}", e.name, String::from_utf8_lossy(&e.any))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_content_and_debug_hides_bytes() {
        let a = Encoded::new("x", Bytes::from_static(b"secret-key-material"));
        let b = Encoded::new("x", Bytes::from_static(b"secret-key-material"));
        let c = Encoded::new("x", Bytes::from_static(b"other"));
        assert_eq!(a.version, b.version);
        assert_ne!(a.version, c.version);
        assert_eq!(a.version.len(), 16);
        assert!(!format!("{a:?}").contains("secret-key"));
        assert_eq!(a.any, Bytes::from_static(b"secret-key-material"));
    }

    #[test]
    fn frames_decode_as_both_response_types() {
        use crate::sds::wire::{DeltaDiscoveryResponse, DiscoveryResponse};
        use prost::Message as _;
        let name = "n".repeat(200); // two-byte lengths
        let any = Bytes::from(vec![7u8; 300]);
        let e = Encoded::new(name.clone(), any.clone());
        let delta = DeltaDiscoveryResponse::decode(e.delta.clone()).unwrap();
        assert_eq!(delta.resources.len(), 1);
        assert_eq!(delta.resources[0].name, name);
        assert_eq!(delta.resources[0].version, e.version);
        assert_eq!(delta.resources[0].resource, any);
        let sotw = DiscoveryResponse::decode(e.sotw.clone()).unwrap();
        assert_eq!(sotw.resources, vec![any]);
    }

    #[test]
    fn nonces_compare_exactly() {
        assert!(nonce_is("17", 17));
        assert!(!nonce_is("017", 17));
        assert!(!nonce_is("+17", 17));
        assert!(!nonce_is("18", 17));
        assert!(!nonce_is("", 0));
        assert!(!nonce_is("0", 0));
        assert!(!nonce_is("99999999999999999999999", 17));
        assert!(nonce_is(&u64::MAX.to_string(), u64::MAX));
    }

    #[test]
    fn limits_name_the_value() {
        let many: Vec<String> = (0..=MAX_NAMES).map(|i| i.to_string()).collect();
        let e = check_names("resource_names", &many).unwrap_err();
        assert_eq!(e.to_string(), "resource_names lists 1001 resource names, more than the limit of 1000");
        let long = vec!["a".repeat(MAX_NAME_BYTES + 1)];
        assert!(check_names("resource_names", &long).unwrap_err().to_string().contains("2049 bytes"));
        assert_eq!(check_type_url(""), Err(ProtocolError::EmptyTypeUrl));
        assert!(check_type_url(&"t".repeat(600)).is_err());
        assert!(check_type_url(SECRET_TYPE).is_ok());
    }
}
