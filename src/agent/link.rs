//! The agent's link to the server: its node credentials, the bundle it
//! trusts the server with, and a channel to one of the `--server`
//! addresses (replicas), moved to the next one when a call fails.
//!
//! First contact is `Attest` with the join token, over TLS without a client
//! certificate, trusting `--trust-bundle`; every later call presents the
//! node SVID, trusting the bundle the server last pushed. The node SVID is
//! renewed at 50 % ± 10 % of its lifetime over mTLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use ring::rand::SystemRandom;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tonic::transport::Channel;

use super::disk::{Disk, NodeCredentials};
use crate::ca::{self, IssuedCertificate, KeyAlgorithm, PrivateKey};
use crate::domain::{NodeId, TrustDomain};
use crate::net::client::{ClientIdentity, ServerTrust};
use crate::proto::agent::v1 as pb;
use crate::proto::agent::v1::agent_client::AgentClient;
use crate::sync::MAX_STATE_BYTES;

/// The node SVID in use.
pub struct NodeSvid {
    pub key: PrivateKey,
    pub chain_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub serial: String,
}

impl NodeSvid {
    pub fn from_credentials(c: NodeCredentials) -> Result<Self, String> {
        let ders = ca::certs_from_pem(&c.chain_pem).map_err(|e| e.to_string())?;
        let leaf = ders.first().ok_or("the node SVID file holds no certificate")?;
        let cert = IssuedCertificate::from_der(leaf).map_err(|e| e.to_string())?;
        Ok(Self {
            key: c.key,
            chain_pem: c.chain_pem,
            not_before: cert.not_before,
            not_after: cert.not_after,
            serial: cert.serial.to_string(),
        })
    }

    fn identity(&self) -> Result<ClientIdentity, String> {
        let chain = ca::certs_from_pem(&self.chain_pem).map_err(|e| e.to_string())?;
        Ok(ClientIdentity {
            chain: chain.into_iter().map(CertificateDer::from).collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.pkcs8_der().to_vec())),
        })
    }
}

pub struct Link {
    servers: Vec<String>,
    pub node: NodeId,
    pub trust_domain: TrustDomain,
    disk: Arc<Disk>,
    svid: RwLock<Option<Arc<NodeSvid>>>,
    bundle: RwLock<String>,
    /// The server in use (index into `servers`) and a channel to it.
    channel: Mutex<Option<(usize, Channel)>>,
    next: AtomicUsize,
    /// Whether the last call or stream reached a server.
    connected: AtomicBool,
    /// SHA-256 of the last join token presented.
    last_token: Mutex<Option<Vec<u8>>>,
}

impl Link {
    pub fn new(servers: Vec<String>, node: NodeId, trust_domain: TrustDomain, disk: Arc<Disk>, bundle: String) -> Self {
        Self {
            servers,
            node,
            trust_domain,
            disk,
            svid: RwLock::new(None),
            bundle: RwLock::new(bundle),
            channel: Mutex::new(None),
            next: AtomicUsize::new(0),
            connected: AtomicBool::new(false),
            last_token: Mutex::new(None),
        }
    }

    /// Whether `token` differs from the last join token presented (and
    /// remembers it).
    pub fn new_token(&self, token: &str) -> bool {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().to_vec();
        self.last_token.lock().replace(digest.clone()) != Some(digest)
    }

    pub fn svid(&self) -> Option<Arc<NodeSvid>> {
        self.svid.read().clone()
    }

    pub fn set_svid(&self, svid: NodeSvid) {
        *self.svid.write() = Some(Arc::new(svid));
        // New credentials: the next call dials with them.
        *self.channel.lock() = None;
    }

    /// The bundle the server is trusted with.
    pub fn bundle(&self) -> String {
        self.bundle.read().clone()
    }

    /// The server pushed a bundle: trusted from now on, and kept on disk.
    pub fn set_bundle(&self, pem: &str) {
        if *self.bundle.read() == pem {
            return;
        }
        *self.bundle.write() = pem.to_string();
        if let Err(e) = self.disk.put_bundle(pem) {
            tracing::error!(error = %e, "cannot keep the pushed bundle");
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
    }

    /// The server in use, for logs.
    pub fn server(&self) -> &str {
        let i = self.next.load(Ordering::Acquire) % self.servers.len().max(1);
        self.servers.get(i).map_or("", String::as_str)
    }

    /// A client of the server in use, dialling the next server when no
    /// channel is open (each `--server` in turn).
    pub async fn client(&self) -> Result<AgentClient<Channel>, String> {
        if let Some((_, channel)) = self.channel.lock().as_ref() {
            return Ok(client(channel.clone()));
        }
        let svid = self.svid().ok_or("the node is not attested")?;
        let identity = svid.identity()?;
        let trust = ServerTrust::from_bundle_pem(&self.bundle())?;
        let i = self.next.load(Ordering::Acquire) % self.servers.len().max(1);
        let server = self.servers.get(i).ok_or("no --server given")?;
        match crate::net::client::channel(server, trust, Some(identity)).await {
            Ok(channel) => {
                *self.channel.lock() = Some((i, channel.clone()));
                Ok(client(channel))
            }
            Err(e) => {
                self.failed();
                Err(e)
            }
        }
    }

    /// The server in use failed: the next call dials the next one.
    pub fn failed(&self) {
        let mut current = self.channel.lock();
        let i = current.take().map_or_else(|| self.next.load(Ordering::Acquire), |(i, _)| i);
        self.next.store(i + 1, Ordering::Release);
        self.set_connected(false);
    }

    /// `Attest` with a join token, trying each server once; keeps the node
    /// key, SVID and the bundle it came with.
    pub async fn attest(&self, token: &str) -> Result<(), String> {
        self.new_token(token);
        let key = PrivateKey::generate(KeyAlgorithm::EcP256, &SystemRandom::new()).map_err(|e| e.to_string())?;
        let id = self.node.spiffe_id(&self.trust_domain).map_err(|e| e.to_string())?;
        let csr = ca::csr_der(&key, &id).map_err(|e| e.to_string())?;
        let mut last = String::from("no --server given");
        for server in &self.servers {
            let trust = ServerTrust::from_bundle_pem(&self.bundle())?;
            let channel = match crate::net::client::channel(server, trust, None).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let request =
                pb::AttestRequest { node_id: self.node.to_string(), join_token: token.to_string(), csr: csr.clone() };
            match client(channel).attest(request).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    return self.accept(key, reply);
                }
                // The server answered: another one would answer the same.
                Err(status) => return Err(format!("{server} refused the join token: {}", status.message())),
            }
        }
        Err(last)
    }

    /// A new node SVID for a new key, over mTLS with the current one.
    pub async fn renew(&self) -> Result<(), String> {
        let key = PrivateKey::generate(KeyAlgorithm::EcP256, &SystemRandom::new()).map_err(|e| e.to_string())?;
        let id = self.node.spiffe_id(&self.trust_domain).map_err(|e| e.to_string())?;
        let csr = ca::csr_der(&key, &id).map_err(|e| e.to_string())?;
        let mut client = self.client().await?;
        match client.renew_node_svid(pb::RenewNodeSvidRequest { csr }).await {
            Ok(reply) => self.accept(key, reply.into_inner()),
            Err(status) => {
                if status.code() == tonic::Code::Unavailable || status.code() == tonic::Code::Unknown {
                    self.failed();
                }
                Err(status.message().to_string())
            }
        }
    }

    fn accept(&self, key: PrivateKey, reply: pb::NodeSvid) -> Result<(), String> {
        let svid = NodeSvid::from_credentials(NodeCredentials { key, chain_pem: reply.chain_pem })?;
        let expected = self.node.spiffe_id(&self.trust_domain).map_err(|e| e.to_string())?;
        let leaf = ca::certs_from_pem(&svid.chain_pem).map_err(|e| e.to_string())?;
        let issued = leaf.first().map(|d| IssuedCertificate::from_der(d)).transpose().map_err(|e| e.to_string())?;
        if issued.and_then(|c| c.spiffe_id) != Some(expected.clone()) {
            return Err(format!("the server returned a node SVID that is not {expected}"));
        }
        ServerTrust::from_bundle_pem(&reply.bundle_pem).map_err(|e| format!("the bundle the server returned: {e}"))?;
        self.disk.put_node(&svid.key, &svid.chain_pem).map_err(|e| e.to_string())?;
        tracing::info!(node = %self.node, serial = %svid.serial, not_after = %svid.not_after, "Node SVID received");
        self.set_bundle(&reply.bundle_pem);
        self.set_svid(svid);
        Ok(())
    }
}

fn client(channel: Channel) -> AgentClient<Channel> {
    AgentClient::new(channel).max_decoding_message_size(MAX_STATE_BYTES)
}
