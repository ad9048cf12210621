//! `trustmesh agent` settings (SPEC §12). Each flag has a
//! `TRUSTMESH_AGENT_*` variable; `--server` and `--data-dir` are the CLI's
//! global flags, read here from `TRUSTMESH_AGENT_SERVER` /
//! `TRUSTMESH_AGENT_DATA_DIR` first, and the data directory defaults to
//! `./trustmesh-agent`, not the server's.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{ConfigError, DEFAULT_SOCKET, socket_addr};
use crate::domain::NodeId;

/// The agent's data directory unless `--data-dir` says otherwise.
pub const DEFAULT_AGENT_DATA_DIR: &str = "./trustmesh-agent";
/// The agent's HTTP port (health, readiness, metrics).
pub const DEFAULT_AGENT_HTTP: &str = "127.0.0.1:4031";

#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentArgs {
    /// This node's name: the subject of its join token, and the last segment of its node SVID
    /// spiffe://<td>/trustmesh/agent/<node>.
    #[arg(long, env = "TRUSTMESH_AGENT_NODE_ID")]
    pub node_id: Option<String>,
    /// The server's CA bundle (PEM), for the first contact only; afterwards the agent trusts the bundle the
    /// server pushes.
    #[arg(long, env = "TRUSTMESH_AGENT_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// File holding a join token (`trustmesh token mint join NODE`): needed while the node has no valid node SVID.
    #[arg(long, env = "TRUSTMESH_AGENT_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Local socket for the Workload API and SDS served to this node's workloads and proxies.
    #[arg(long, env = "TRUSTMESH_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Listen address of the agent's HTTP port (/health, /ready, /metrics).
    #[arg(long, env = "TRUSTMESH_AGENT_HTTP_LISTEN", default_value = DEFAULT_AGENT_HTTP)]
    pub http_listen: String,
}

/// `agent` settings after validation.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub servers: Vec<String>,
    pub node: NodeId,
    pub data_dir: PathBuf,
    pub trust_bundle: Option<PathBuf>,
    pub join_token_file: Option<PathBuf>,
    pub socket: PathBuf,
    pub http_listen: SocketAddr,
}

impl AgentConfig {
    /// `servers` and `data_dir` as the global flags gave them (`None`: not given).
    pub fn from_args(
        args: &AgentArgs,
        servers: Option<&[String]>,
        data_dir: Option<PathBuf>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        const SERVER: &str = "--server/TRUSTMESH_AGENT_SERVER";
        let servers: Vec<String> = match env("TRUSTMESH_AGENT_SERVER") {
            Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect(),
            None => servers.map(<[String]>::to_vec).unwrap_or_default(),
        };
        if servers.is_empty() {
            return Err(ConfigError::new(SERVER, "name at least one server, e.g. --server https://ca.internal:4020"));
        }
        for s in &servers {
            if !s.starts_with("https://") || s.len() > 512 {
                return Err(ConfigError::new(
                    SERVER,
                    format!("{:?} is not an https:// URL", crate::domain::text::shorten(s, 64)),
                ));
            }
        }
        let node = args
            .node_id
            .as_deref()
            .ok_or_else(|| ConfigError::new("--node-id/TRUSTMESH_AGENT_NODE_ID", "is required"))
            .and_then(|n| {
                NodeId::parse(n).map_err(|e| ConfigError::new("--node-id/TRUSTMESH_AGENT_NODE_ID", e.to_string()))
            })?;
        let data_dir = env("TRUSTMESH_AGENT_DATA_DIR")
            .map(PathBuf::from)
            .or(data_dir)
            .unwrap_or_else(|| DEFAULT_AGENT_DATA_DIR.into());
        if !args.socket.is_absolute() || args.socket.starts_with(&data_dir) {
            return Err(ConfigError::new(
                "--socket/TRUSTMESH_AGENT_SOCKET",
                format!("{} must be an absolute path outside the data directory", args.socket.display()),
            ));
        }
        Ok(Self {
            servers,
            node,
            data_dir,
            trust_bundle: args.trust_bundle.clone(),
            join_token_file: args.join_token_file.clone(),
            socket: args.socket.clone(),
            http_listen: socket_addr("--http-listen/TRUSTMESH_AGENT_HTTP_LISTEN", &args.http_listen)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(node: Option<&str>) -> AgentArgs {
        AgentArgs {
            node_id: node.map(str::to_string),
            socket: DEFAULT_SOCKET.into(),
            http_listen: DEFAULT_AGENT_HTTP.into(),
            ..AgentArgs::default()
        }
    }

    #[test]
    fn defaults_are_the_spec() {
        let servers = ["https://127.0.0.1:4020".to_string()];
        let c = AgentConfig::from_args(&args(Some("node-a")), Some(&servers), None, |_| None).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./trustmesh-agent"));
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:4031");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.node.as_str(), "node-a");
    }

    #[test]
    fn agent_variables_come_first() {
        let servers = ["https://a:4020".to_string()];
        let env = |k: &str| match k {
            "TRUSTMESH_AGENT_SERVER" => Some("https://b:4020, https://c:4020".to_string()),
            "TRUSTMESH_AGENT_DATA_DIR" => Some("/var/lib/agent".to_string()),
            _ => None,
        };
        let c = AgentConfig::from_args(&args(Some("n")), Some(&servers), Some("/d".into()), env).unwrap();
        assert_eq!(c.servers, ["https://b:4020", "https://c:4020"]);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/agent"));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let servers = ["https://a:4020".to_string()];
        let http = ["http://a:4020".to_string()];
        for (a, s, needle) in [
            (args(None), &servers[..], "--node-id"),
            (args(Some("a/b")), &servers[..], "--node-id"),
            (args(Some("n")), &http[..], "--server"),
            (args(Some("n")), &[][..], "--server"),
            (AgentArgs { http_listen: "x".into(), ..args(Some("n")) }, &servers[..], "--http-listen"),
            (AgentArgs { socket: "rel.sock".into(), ..args(Some("n")) }, &servers[..], "--socket"),
        ] {
            let err = AgentConfig::from_args(&a, Some(s), None, |_| None).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
