//! Connecting to a trustmesh server: the address, the trust bundle and the
//! token default to what `serve` wrote in the data directory, so a CLI on the
//! same host needs no flags.

use std::path::PathBuf;
use std::time::Duration;

use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::output::OutputFormat;
use crate::proto::admin::v1::admin_client::AdminClient;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Address of the trustmesh API port.
    #[arg(long, global = true, env = "TRUSTMESH_SERVER", default_value = "https://127.0.0.1:4020")]
    pub server: String,
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
    pub async fn connect(&self) -> Result<Admin, String> {
        let ca_path = self.args.ca_file.clone().unwrap_or_else(|| self.data_dir.join("ca-bundle.pem"));
        let ca = std::fs::read(&ca_path)
            .map_err(|e| format!("cannot read the CA bundle {} ({e}); pass --ca-file", ca_path.display()))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let (Some(cert), Some(key)) = (&self.args.client_cert, &self.args.client_key) {
            let cert = std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
            let key = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let endpoint = Channel::from_shared(self.args.server.clone())
            .map_err(|e| format!("--server {:?}: {e}", self.args.server))?
            .tls_config(tls)
            .map_err(|e| format!("TLS configuration: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach trustmesh at {}: {}", self.args.server, source_chain(&e)))?;
        let token = self.token()?;
        let token = match token {
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

/// One line from a gRPC failure.
pub fn status_line(status: &tonic::Status) -> String {
    let msg = status.message();
    if msg.is_empty() { format!("{:?}", status.code()) } else { msg.to_string() }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
