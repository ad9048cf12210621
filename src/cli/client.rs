//! Connecting to a trustmesh server: the address, the trust bundle and the
//! token default to what `serve` wrote in the data directory, so a CLI on the
//! same host needs no flags.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::output::OutputFormat;
use crate::net::client::{ClientIdentity, ServerTrust};
use crate::proto::admin::v1::admin_client::AdminClient;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Address of the trustmesh API port (`trustmesh agent`: repeat for each replica, tried in turn).
    #[arg(
        long = "server",
        global = true,
        env = "TRUSTMESH_SERVER",
        default_value = "https://127.0.0.1:4020",
        value_delimiter = ',',
        action = clap::ArgAction::Append
    )]
    pub servers: Vec<String>,
    /// Bearer token [default: <data-dir>/admin.token if readable].
    #[arg(long, global = true, env = "TRUSTMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM bundle that signs the server's certificate [default: <data-dir>/ca-bundle.pem].
    #[arg(long, global = true, env = "TRUSTMESH_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) to present, for certificate-bound tokens.
    #[arg(long, global = true, env = "TRUSTMESH_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, global = true, env = "TRUSTMESH_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl ClientArgs {
    /// The server admin commands call: the first one named.
    pub fn server(&self) -> &str {
        self.servers.first().map_or("https://127.0.0.1:4020", String::as_str)
    }
}

pub struct Context {
    pub args: ClientArgs,
    pub data_dir: PathBuf,
    pub output: OutputFormat,
}

/// A connected admin client that adds the bearer token to every request.
pub struct Admin {
    pub client: AdminClient<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Context {
    /// Connects to the server, which must present the trustmesh server's own
    /// identity from the bundle ([`crate::net::client`]), whatever name `--server` dials.
    pub async fn connect(&self) -> Result<Admin, String> {
        let ca_path = self.args.ca_file.clone().unwrap_or_else(|| self.data_dir.join("ca-bundle.pem"));
        let ca = std::fs::read_to_string(&ca_path)
            .map_err(|e| format!("cannot read the CA bundle {} ({e}); pass --ca-file", ca_path.display()))?;
        let trust = ServerTrust::from_bundle_pem(&ca).map_err(|e| format!("{}: {e}", ca_path.display()))?;
        let identity = match (&self.args.client_cert, &self.args.client_key) {
            (Some(cert), Some(key)) => Some(client_identity(cert, key)?),
            _ => None,
        };
        let channel = crate::net::client::channel(self.args.server(), trust, identity).await?;
        let token = match self.token()? {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the token contains characters not allowed in a header".to_string())?,
            ),
            None => None,
        };
        let client = AdminClient::new(channel)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024);
        Ok(Admin { client, token })
    }

    fn token(&self) -> Result<Option<String>, String> {
        if let Some(t) = &self.args.token {
            return Ok(Some(t.trim().to_string()));
        }
        let path = self.data_dir.join("admin.token");
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t.trim().to_string())),
            Err(_) => Ok(None),
        }
    }
}

impl Admin {
    /// Wraps a message into a request carrying the token.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(t) = &self.token {
            request.metadata_mut().insert("authorization", t.clone());
        }
        request
    }
}

/// One line from a gRPC failure, with the transport's cause when the call
/// never reached the server.
pub fn status_line(status: &tonic::Status) -> String {
    use std::error::Error;
    let msg = status.message();
    let base = if msg.is_empty() { format!("{:?}", status.code()) } else { msg.to_string() };
    match status.source().map(crate::net::client::explain) {
        Some(cause) if cause.starts_with(&base) => cause,
        Some(cause) => format!("{base}: {cause}"),
        None => base,
    }
}

/// `--client-cert` (a PEM chain) and `--client-key` (a PEM private key).
fn client_identity(cert: &Path, key: &Path) -> Result<ClientIdentity, String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let chain = crate::ca::certs_from_pem(&read(cert)?)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes())
        .map_err(|e| format!("{}: no private key in PEM form ({e})", key.display()))?;
    Ok(ClientIdentity { chain, key })
}
