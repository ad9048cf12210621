//! Configuration: flags and environment variables read into typed values.
//! Bad configuration stops the process before any port is bound, with one
//! line naming the setting, and exit code 64 (EX_USAGE).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use time::Duration;

use crate::domain::TrustDomain;

mod agent;

pub use agent::{AgentArgs, AgentConfig, DEFAULT_AGENT_DATA_DIR};

/// Exit code for bad configuration (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;
/// Where the local socket is, unless `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/tmp/trustmesh/public/api.sock";

#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    /// `--flag` / `ENV_VAR` of the offending setting.
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: &str, message: impl Into<String>) -> Self {
        Self { setting: setting.to_string(), message: message.into() }
    }
}

/// `trustmesh serve` flags. Every one has an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Listen address of the TLS port: gRPC admin API, SignCsr and HTTPS.
    #[arg(long, env = "TRUSTMESH_LISTEN", default_value = "127.0.0.1:4020")]
    pub listen: String,
    /// Listen address of the plaintext read-only HTTP port (health, metrics, bundle, CRL, JWKS).
    #[arg(long, env = "TRUSTMESH_HTTP_LISTEN", default_value = "127.0.0.1:4021")]
    pub http_listen: String,
    /// Local socket for the Workload API and SDS (mode 0777 in a 0755 folder, outside the data directory).
    #[arg(long, env = "TRUSTMESH_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Trust domain of this CA (lowercase, e.g. example.org).
    #[arg(long, env = "TRUSTMESH_TRUST_DOMAIN", default_value = "example.org")]
    pub trust_domain: String,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://<data-dir>/trustmesh.db]
    #[arg(long, env = "TRUSTMESH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Key-encryption key file [default: <data-dir>/kek]. Replicas sharing a database share it.
    #[arg(long, env = "TRUSTMESH_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// Extra DNS names or IPs for the server's TLS certificate (besides localhost, 127.0.0.1, ::1).
    #[arg(long = "server-name", env = "TRUSTMESH_SERVER_NAMES", value_delimiter = ',')]
    pub server_names: Vec<String>,
    /// Directory of Cedar policies (*.cedar, optional schema.cedarschema) replacing the embedded defaults.
    #[arg(long, env = "TRUSTMESH_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// X.509-SVID lifetime, seconds.
    #[arg(long, env = "TRUSTMESH_SVID_TTL", default_value = "3600")]
    pub svid_ttl: String,
    /// JWT-SVID lifetime, seconds.
    #[arg(long, env = "TRUSTMESH_JWT_SVID_TTL", default_value = "300")]
    pub jwt_svid_ttl: String,
    /// Default bootstrap token lifetime, seconds.
    #[arg(long, env = "TRUSTMESH_BOOTSTRAP_TTL", default_value = "86400")]
    pub bootstrap_ttl: String,
    /// Longest certificate lifetime a request may ask for, seconds.
    #[arg(long, env = "TRUSTMESH_MAX_CERT_TTL", default_value = "7776000")]
    pub max_cert_ttl: String,
    /// CRL validity (nextUpdate - thisUpdate), seconds; CRLs are re-signed at half of it.
    #[arg(long, env = "TRUSTMESH_CRL_VALIDITY", default_value = "604800")]
    pub crl_validity: String,
    /// `auto`: prepare each intermediate's successor at half of its life and activate it once every connected
    /// proxy has acknowledged it; `manual`: only `pki ca prepare|activate` do.
    #[arg(long, env = "TRUSTMESH_CA_ROTATION", default_value = "manual")]
    pub ca_rotation: String,
    /// Seconds a new connection may take to complete its TLS handshake and send its first request headers.
    #[arg(long, env = "TRUSTMESH_HEADER_TIMEOUT", default_value = "10")]
    pub header_timeout: String,
    /// Seconds a connection may stay open with no request in flight (an open SDS or Workload API stream is one).
    #[arg(long, env = "TRUSTMESH_IDLE_TIMEOUT", default_value = "300")]
    pub idle_timeout: String,
    /// PKI mounts of the OpenBao-compatible API (/v1/<mount>/…), each with its own profiles.
    #[arg(long = "pki-mount", env = "TRUSTMESH_PKI_MOUNTS", value_delimiter = ',', default_value = "pki")]
    pub pki_mounts: Vec<String>,
}

/// `serve` settings after validation.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub kek_file: PathBuf,
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub socket: PathBuf,
    pub trust_domain: TrustDomain,
    pub server_names: Vec<String>,
    pub policy_dir: Option<PathBuf>,
    pub svid_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    pub bootstrap_ttl: Duration,
    pub max_cert_ttl: Duration,
    pub crl_validity: Duration,
    /// `--ca-rotation auto`.
    pub ca_rotation_auto: bool,
    /// `--kek-file` was given (the operator provisioned the KEK).
    pub kek_provisioned: bool,
    pub header_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub pki_mounts: Vec<String>,
}

impl ServeConfig {
    pub fn from_args(data_dir: &Path, args: &ServeArgs) -> Result<Self, ConfigError> {
        let trust_domain = TrustDomain::parse(&args.trust_domain)
            .map_err(|e| ConfigError::new("--trust-domain/TRUSTMESH_TRUST_DOMAIN", e.to_string()))?;
        let listen = socket_addr("--listen/TRUSTMESH_LISTEN", &args.listen)?;
        let http_listen = socket_addr("--http-listen/TRUSTMESH_HTTP_LISTEN", &args.http_listen)?;
        if listen == http_listen && listen.port() != 0 {
            return Err(ConfigError::new("--http-listen/TRUSTMESH_HTTP_LISTEN", "must differ from --listen"));
        }
        let database_url = match &args.database_url {
            Some(url) => {
                if !(url.starts_with("sqlite://") || url.starts_with("postgres://") || url.starts_with("postgresql://"))
                {
                    return Err(ConfigError::new(
                        "--database-url/TRUSTMESH_DATABASE_URL",
                        format!("{:?} is neither sqlite://PATH nor postgres://…", crate::store::redact_url(url)),
                    ));
                }
                url.clone()
            }
            None => format!("sqlite://{}", data_dir.join("trustmesh.db").display()),
        };
        for name in &args.server_names {
            let ok = !name.is_empty()
                && name.len() <= 253
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:*".contains(&b));
            if !ok {
                return Err(ConfigError::new(
                    "--server-name/TRUSTMESH_SERVER_NAMES",
                    format!("{name:?} is not a DNS name or IP"),
                ));
            }
        }
        let svid_ttl = seconds("--svid-ttl/TRUSTMESH_SVID_TTL", &args.svid_ttl, 10, 30 * 86_400)?;
        if !args.socket.is_absolute() || args.socket.starts_with(data_dir) {
            return Err(ConfigError::new(
                "--socket/TRUSTMESH_SOCKET",
                format!("{} must be an absolute path outside the data directory", args.socket.display()),
            ));
        }
        let max_cert_ttl = seconds("--max-cert-ttl/TRUSTMESH_MAX_CERT_TTL", &args.max_cert_ttl, 60, 3650 * 86_400)?;
        let mut pki_mounts = Vec::new();
        for mount in &args.pki_mounts {
            crate::domain::profile::check_mount(mount)
                .map_err(|e| ConfigError::new("--pki-mount/TRUSTMESH_PKI_MOUNTS", e))?;
            if !pki_mounts.contains(mount) {
                pki_mounts.push(mount.clone());
            }
        }
        if pki_mounts.is_empty() {
            return Err(ConfigError::new("--pki-mount/TRUSTMESH_PKI_MOUNTS", "name at least one mount"));
        }
        if svid_ttl > max_cert_ttl {
            return Err(ConfigError::new("--svid-ttl/TRUSTMESH_SVID_TTL", "must not exceed --max-cert-ttl"));
        }
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            kek_file: args.kek_file.clone().unwrap_or_else(|| data_dir.join("kek")),
            database_url,
            listen,
            http_listen,
            socket: args.socket.clone(),
            trust_domain,
            server_names: args.server_names.clone(),
            policy_dir: args.policy_dir.clone(),
            svid_ttl,
            jwt_svid_ttl: seconds("--jwt-svid-ttl/TRUSTMESH_JWT_SVID_TTL", &args.jwt_svid_ttl, 10, 86_400)?,
            bootstrap_ttl: seconds("--bootstrap-ttl/TRUSTMESH_BOOTSTRAP_TTL", &args.bootstrap_ttl, 60, 366 * 86_400)?,
            max_cert_ttl,
            crl_validity: seconds("--crl-validity/TRUSTMESH_CRL_VALIDITY", &args.crl_validity, 600, 90 * 86_400)?,
            ca_rotation_auto: match args.ca_rotation.as_str() {
                "auto" => true,
                "manual" => false,
                other => {
                    let shown = crate::domain::text::shorten(other, 32);
                    return Err(ConfigError::new(
                        "--ca-rotation/TRUSTMESH_CA_ROTATION",
                        format!("{shown:?} is not auto or manual"),
                    ));
                }
            },
            kek_provisioned: args.kek_file.is_some(),
            header_timeout: seconds("--header-timeout/TRUSTMESH_HEADER_TIMEOUT", &args.header_timeout, 1, 600)?
                .unsigned_abs(),
            idle_timeout: seconds("--idle-timeout/TRUSTMESH_IDLE_TIMEOUT", &args.idle_timeout, 1, 86_400)?
                .unsigned_abs(),
            pki_mounts,
        })
    }
}

fn socket_addr(setting: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::new(setting, format!("{value:?} is not an IP:port address")))
}

/// A whole number of seconds within `[min, max]`.
pub fn seconds(setting: &str, value: &str, min: i64, max: i64) -> Result<Duration, ConfigError> {
    let n: i64 = value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(setting, format!("{value:?} is not a whole number of seconds")))?;
    if !(min..=max).contains(&n) {
        return Err(ConfigError::new(setting, format!("{n} is outside {min}..={max} seconds")));
    }
    Ok(Duration::seconds(n))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ServeArgs,
    }

    fn parse(extra: &[&str]) -> Result<ServeConfig, ConfigError> {
        let mut argv = vec!["t"];
        argv.extend_from_slice(extra);
        let t = T::try_parse_from(argv).unwrap();
        ServeConfig::from_args(Path::new("/tmp/d"), &t.a)
    }

    #[test]
    fn defaults_are_the_spec() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:4020");
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:4021");
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.database_url, "sqlite:///tmp/d/trustmesh.db");
        assert_eq!(c.svid_ttl, Duration::hours(1));
        assert_eq!(c.kek_file, PathBuf::from("/tmp/d/kek"));
        assert_eq!(c.socket, PathBuf::from("/tmp/trustmesh/public/api.sock"), "SPEC §1");
        assert_eq!(c.pki_mounts, ["pki"], "SPEC §15");
        let two = parse(&["--pki-mount", "pki,pki_client_certs,pki"]).unwrap();
        assert_eq!(two.pki_mounts, ["pki", "pki_client_certs"]);
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (args, needle) in [
            (vec!["--trust-domain", "Bad.Org"], "--trust-domain"),
            (vec!["--listen", "nope"], "--listen"),
            (vec!["--svid-ttl", "abc"], "--svid-ttl"),
            (vec!["--svid-ttl", "5"], "--svid-ttl"),
            (vec!["--socket", "relative.sock"], "--socket"),
            (vec!["--socket", "/tmp/d/api.sock"], "--socket"),
            (vec!["--database-url", "mysql://x"], "--database-url"),
            (vec!["--http-listen", "127.0.0.1:4020"], "--http-listen"),
            (vec!["--header-timeout", "0"], "--header-timeout"),
            (vec!["--idle-timeout", "x"], "--idle-timeout"),
            (vec!["--pki-mount", "pki/x"], "--pki-mount"),
            (vec!["--pki-mount", ""], "--pki-mount"),
        ] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
