//! Attestation: turning how a caller connected into the selectors it holds
//! (SPEC §3). Transports put the raw peer facts into request extensions
//! ([`UnixPeer`], [`TlsPeer`]); the servers ask this module what they prove.

/// Kernel peer credentials of a local-socket connection (`SO_PEERCRED`),
/// taken when the connection was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixPeer {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
}

/// The client certificate (leaf DER) of a TLS connection, if one was presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPeer {
    pub certificate: Option<Vec<u8>>,
}
