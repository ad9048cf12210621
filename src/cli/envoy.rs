//! `trustmesh envoy bootstrap`: prints an Envoy v3 bootstrap that takes its
//! certificates and trust bundle from trustmesh over SDS (SPEC §6). The
//! generator is `sds::bootstrap`; this file turns flags into its input.
//!
//! The examples in `envoy/` are this command's output for the invocations in
//! [`EXAMPLES`]; a test regenerates them and fails on any difference
//! (`UPDATE_EXAMPLES=1 cargo test --lib cli::envoy` rewrites them).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::client::ClientArgs;
use super::output::OutputFormat;
use crate::domain::SpiffeId;
use crate::sds::bootstrap::{self, Bootstrap, Listener, SdsServer, Upstream};

/// The local socket `serve` listens on by default (SPEC §1).
use crate::config::DEFAULT_SOCKET;

#[derive(Debug, Subcommand)]
pub enum EnvoyCommand {
    /// Print an Envoy v3 bootstrap (YAML; JSON with --output json) whose
    /// certificates and trust bundle come from trustmesh over SDS.
    Bootstrap(BootstrapArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    /// Envoy node id (logged by trustmesh with every stream).
    #[arg(long)]
    pub node_id: String,
    /// Envoy node cluster.
    #[arg(long, default_value = "trustmesh")]
    pub cluster: String,
    /// Reach trustmesh over this local socket (callers attested by peer
    /// credentials) [default: /tmp/trustmesh/public/api.sock].
    #[arg(long, conflicts_with = "token_file")]
    pub socket: Option<PathBuf>,
    /// Reach trustmesh over the TLS port (--server, trusting --ca-file) with
    /// the bearer token in this file. The token is copied into the bootstrap:
    /// keep the output private.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Use delta xDS (DELTA_GRPC) instead of state of the world (GRPC).
    #[arg(long)]
    pub delta: bool,
    /// The SPIFFE ID whose certificate Envoy presents (SPIRE-style secret
    /// name) [default: the secret `default`, the caller's oldest entry].
    #[arg(long)]
    pub spiffe_id: Option<String>,
    /// Validation-context secret: ROOTCA, ALL or spiffe://<trust-domain>
    /// [default: spiffe://<trust domain of --spiffe-id>, or ROOTCA].
    #[arg(long)]
    pub validation: Option<String>,
    /// Validate peers with trusted_ca + crl instead of the SPIFFE validator
    /// (sets node metadata disable_spiffe_cert_validation: true).
    #[arg(long)]
    pub disable_spiffe_cert_validation: bool,
    /// Address inbound listeners bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: String,
    /// Inbound mTLS listener NAME:PORT:SPIFFE_ID[,SPIFFE_ID…] that requires a
    /// client certificate with one of these IDs (port 0: any free port).
    #[arg(long = "listener", value_name = "NAME:PORT:SPIFFE_IDS")]
    pub listeners: Vec<Listener>,
    /// Inbound mTLS listener NAME:PORT:SPIFFE_ID[,SPIFFE_ID…] that proxies raw
    /// TCP to --backend. Its connections are closed after 600 s (nothing
    /// pushed over xDS can cut an open TCP connection of a revoked peer).
    #[arg(long = "tcp-listener", value_name = "NAME:PORT:SPIFFE_IDS")]
    pub tcp_listeners: Vec<Listener>,
    /// Outbound route NAME:PORT:HOST:TARGET_PORT:SPIFFE_ID[,…]: plain HTTP on
    /// 127.0.0.1:PORT, mTLS to HOST:TARGET_PORT whose certificate has one of these IDs.
    #[arg(long = "upstream", value_name = "NAME:PORT:HOST:TARGET_PORT:SPIFFE_IDS")]
    pub upstreams: Vec<Upstream>,
    /// HOST:PORT inbound listeners forward to (HTTP ones with
    /// x-forwarded-client-cert); without it HTTP listeners answer 200
    /// themselves. Required by --tcp-listener.
    #[arg(long, value_name = "HOST:PORT")]
    pub backend: Option<String>,
    /// One request per upstream connection, so every request makes a new TLS
    /// handshake (for rotation and revocation checks).
    #[arg(long)]
    pub new_connection_per_request: bool,
}

/// Example bootstraps in `envoy/`: file, what it shows, the flags that make it.
#[cfg_attr(not(test), allow(dead_code))]
pub const EXAMPLES: &[(&str, &str, &[&str])] = &[
    (
        "local-sotw.yaml",
        "Local socket, state of the world, SPIRE-style names.",
        &[
            "--node-id",
            "example-sotw",
            "--socket",
            DEFAULT_SOCKET,
            "--spiffe-id",
            "spiffe://example.org/envoy/example",
            "--bind",
            "127.0.0.1",
            "--listener",
            "mtls_in:10443:spiffe://example.org/envoy/example",
            "--upstream",
            "plain_out:10080:127.0.0.1:10443:spiffe://example.org/envoy/example",
            "--new-connection-per-request",
        ],
    ),
    (
        "local-delta.yaml",
        "Local socket, delta xDS, SPIRE-style names.",
        &[
            "--node-id",
            "example-delta",
            "--socket",
            DEFAULT_SOCKET,
            "--delta",
            "--spiffe-id",
            "spiffe://example.org/envoy/example",
            "--bind",
            "127.0.0.1",
            "--listener",
            "mtls_in:10444:spiffe://example.org/envoy/example",
            "--upstream",
            "plain_out:10081:127.0.0.1:10444:spiffe://example.org/envoy/example",
            "--new-connection-per-request",
        ],
    ),
    (
        "tls-token.yaml",
        "TLS port with a bearer token (replace REPLACE_WITH_TOKEN), trusted_ca + crl.",
        &[
            "--node-id",
            "example-tls",
            "--server",
            "https://127.0.0.1:4020",
            "--ca-file",
            "/tmp/trustmesh/ca-bundle.pem",
            "--token-file",
            "envoy/example.token",
            "--spiffe-id",
            "spiffe://example.org/envoy/example",
            "--disable-spiffe-cert-validation",
            "--bind",
            "127.0.0.1",
            "--listener",
            "mtls_in:10445:spiffe://example.org/envoy/example",
            "--upstream",
            "plain_out:10082:127.0.0.1:10445:spiffe://example.org/envoy/example",
            "--new-connection-per-request",
        ],
    ),
    (
        "istio-style.yaml",
        "Local socket, Istio-style names: default + ROOTCA.",
        &[
            "--node-id",
            "example-istio",
            "--socket",
            DEFAULT_SOCKET,
            "--bind",
            "127.0.0.1",
            "--listener",
            "mtls_in:10446:spiffe://example.org/envoy/example",
            "--upstream",
            "plain_out:10083:127.0.0.1:10446:spiffe://example.org/envoy/example",
            "--new-connection-per-request",
        ],
    ),
    (
        "tcp-backend.yaml",
        "Local socket, an HTTP and a raw TCP mTLS listener in front of a backend (replace port 18080).",
        &[
            "--node-id",
            "example-tcp",
            "--socket",
            DEFAULT_SOCKET,
            "--spiffe-id",
            "spiffe://example.org/envoy/example",
            "--bind",
            "127.0.0.1",
            "--backend",
            "127.0.0.1:18080",
            "--listener",
            "mtls_in:10447:spiffe://example.org/envoy/example",
            "--tcp-listener",
            "tcp_in:10448:spiffe://example.org/envoy/example",
            "--upstream",
            "plain_out:10084:127.0.0.1:10447:spiffe://example.org/envoy/example",
            "--upstream",
            "tcp_out:10085:127.0.0.1:10448:spiffe://example.org/envoy/example",
            "--new-connection-per-request",
        ],
    ),
];

/// Runs `envoy …`; returns the exit code.
pub fn run(command: EnvoyCommand, client: &ClientArgs, data_dir: &Path, output: OutputFormat) -> i32 {
    let EnvoyCommand::Bootstrap(args) = command;
    match bootstrap_text(&args, client, data_dir, output) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => super::fail(&e),
    }
}

/// The identity the server must present on the TLS port: that of the trust
/// domain of `--spiffe-id`, else of the trust domain the CA bundle names.
fn server_identity(spiffe_id: Option<&str>, ca_file: &Path) -> Result<String, String> {
    let td = match spiffe_id {
        Some(id) => SpiffeId::parse(id).map_err(|e| format!("--spiffe-id: {e}"))?.trust_domain(),
        None => {
            let pem = std::fs::read_to_string(ca_file).map_err(|e| {
                format!("cannot read the CA bundle {} ({e}) to learn the server's trust domain", ca_file.display())
            })?;
            let trust = crate::net::client::ServerTrust::from_bundle_pem(&pem)
                .map_err(|e| format!("{}: {e}", ca_file.display()))?;
            return trust.expected().first().map(ToString::to_string).ok_or_else(|| "no trust domain".to_string());
        }
    };
    SpiffeId::server(&td).map(|id| id.to_string()).map_err(|e| e.to_string())
}

/// The bootstrap text for these flags.
pub fn bootstrap_text(
    args: &BootstrapArgs,
    client: &ClientArgs,
    data_dir: &Path,
    output: OutputFormat,
) -> Result<String, String> {
    let (server, shown) = match &args.token_file {
        Some(file) => {
            let token = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read the token file {}: {e}", file.display()))?;
            let token = token.trim().to_string();
            if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
                return Err(format!("the token file {} holds no single token", file.display()));
            }
            let (host, port) = bootstrap::parse_server_url(client.server()).map_err(|e| e.to_string())?;
            let ca_path = client.ca_file.clone().unwrap_or_else(|| data_dir.join("ca-bundle.pem"));
            let server_id = server_identity(args.spiffe_id.as_deref(), &ca_path)?;
            let ca = absolute(&ca_path);
            let shown = format!("--server {} --ca-file {} --token-file {}", client.server(), ca, file.display());
            (SdsServer::Tls { host, port, token, ca_file: ca, server_id }, shown)
        }
        None => {
            let socket = absolute(args.socket.as_deref().unwrap_or(Path::new(DEFAULT_SOCKET)));
            (SdsServer::Socket(socket.clone()), format!("--socket {socket}"))
        }
    };
    let certificate = match &args.spiffe_id {
        Some(id) => SpiffeId::parse(id).map_err(|e| format!("--spiffe-id: {e}"))?.to_string(),
        None => "default".to_string(),
    };
    let validation = match (&args.validation, &args.spiffe_id) {
        (Some(v), _) => v.clone(),
        (None, Some(_)) => SpiffeId::parse(&certificate).map(|id| id.trust_domain().id_string()).unwrap_or_default(),
        (None, None) => "ROOTCA".to_string(),
    };
    let backend = match &args.backend {
        Some(b) => {
            let (host, port) = b.rsplit_once(':').ok_or_else(|| format!("--backend {b:?}: expected HOST:PORT"))?;
            let port =
                port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("--backend {b:?}: bad port"))?;
            Some((host.to_string(), port))
        }
        None => None,
    };
    let b = Bootstrap {
        node_id: args.node_id.clone(),
        cluster: args.cluster.clone(),
        server,
        delta: args.delta,
        certificate,
        validation,
        disable_spiffe_cert_validation: args.disable_spiffe_cert_validation,
        bind: args.bind.clone(),
        listeners: args.listeners.clone(),
        tcp_listeners: args.tcp_listeners.clone(),
        upstreams: args.upstreams.clone(),
        backend,
        new_connection_per_request: args.new_connection_per_request,
    };
    let config = bootstrap::render(&b).map_err(|e| e.to_string())?;
    let header = format!(
        "Envoy v3 bootstrap generated by:\n  trustmesh envoy bootstrap {}\nSecrets: {} and {} over SDS from trustmesh.",
        command_line(args, &shown),
        b.certificate,
        b.validation
    );
    Ok(bootstrap::to_text(&config, output == OutputFormat::Json, &header))
}

fn absolute(p: &Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

/// The flags again, for the header (the token itself is never shown).
fn command_line(a: &BootstrapArgs, server: &str) -> String {
    let mut parts = vec![format!("--node-id {}", quote(&a.node_id))];
    if a.cluster != "trustmesh" {
        parts.push(format!("--cluster {}", quote(&a.cluster)));
    }
    parts.push(server.to_string());
    let flags = [(a.delta, "--delta"), (a.disable_spiffe_cert_validation, "--disable-spiffe-cert-validation")];
    parts.extend(flags.iter().filter(|(on, _)| *on).map(|(_, f)| f.to_string()));
    for (flag, v) in [("--spiffe-id", &a.spiffe_id), ("--validation", &a.validation), ("--backend", &a.backend)] {
        if let Some(v) = v {
            parts.push(format!("{flag} {}", quote(v)));
        }
    }
    if a.bind != "0.0.0.0" {
        parts.push(format!("--bind {}", quote(&a.bind)));
    }
    for (flag, list) in [("--listener", &a.listeners), ("--tcp-listener", &a.tcp_listeners)] {
        for l in list {
            let ids: Vec<String> = l.allowed.iter().map(ToString::to_string).collect();
            parts.push(format!("{flag} {}:{}:{}", l.name, l.port, ids.join(",")));
        }
    }
    for u in &a.upstreams {
        let ids: Vec<String> = u.allowed.iter().map(ToString::to_string).collect();
        parts.push(format!("--upstream {}:{}:{}:{}:{}", u.name, u.port, u.host, u.target_port, ids.join(",")));
    }
    if a.new_connection_per_request {
        parts.push("--new-connection-per-request".into());
    }
    parts.join(" \\\n    ")
}

fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:,@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(flags: &[&str]) -> (BootstrapArgs, ClientArgs) {
        let argv = ["trustmesh", "envoy", "bootstrap"].iter().chain(flags).copied();
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Envoy { command: EnvoyCommand::Bootstrap(args) } = cli.command else { panic!("not envoy") };
        (args, cli.client)
    }

    #[test]
    fn examples_are_the_commands_output() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let update = std::env::var("UPDATE_EXAMPLES").is_ok_and(|v| v == "1");
        let mut stale = Vec::new();
        for (file, about, flags) in EXAMPLES {
            let (args, client) = parse(flags);
            let text = bootstrap_text(&args, &client, Path::new("/nonexistent"), OutputFormat::Text).unwrap();
            let text = format!("# {about}\n{text}");
            let path = root.join("envoy").join(file);
            if update {
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(file.to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "envoy/{stale:?} differ from the generator: UPDATE_EXAMPLES=1 cargo test --lib cli::envoy"
        );
    }

    #[test]
    fn defaults_and_errors() {
        let (args, client) = parse(&["--node-id", "n", "--listener", "in:0:spiffe://example.org/a"]);
        let text = bootstrap_text(&args, &client, Path::new("/d"), OutputFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(text.contains(DEFAULT_SOCKET));
        assert_eq!(v["static_resources"]["listeners"][0]["address"]["socket_address"]["address"], "0.0.0.0");
        let tls = &v["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"];
        let ctx = &tls["common_tls_context"];
        assert_eq!(ctx["tls_certificate_sds_secret_configs"][0]["name"], "default");
        assert_eq!(ctx["combined_validation_context"]["validation_context_sds_secret_config"]["name"], "ROOTCA");

        let (args, client) =
            parse(&["--node-id", "n", "--token-file", "/nonexistent/t", "--listener", "in:0:spiffe://example.org/a"]);
        let e = bootstrap_text(&args, &client, Path::new("/d"), OutputFormat::Text).unwrap_err();
        assert!(e.contains("cannot read the token file /nonexistent/t"), "{e}");
        let (args, client) =
            parse(&["--node-id", "n", "--spiffe-id", "spiffe://x/a", "--listener", "in:0:spiffe://x/a"]);
        let text = bootstrap_text(&args, &client, Path::new("/d"), OutputFormat::Text).unwrap();
        assert!(text.contains("name: \"spiffe://x\""), "validation follows --spiffe-id's trust domain");
        assert!(
            Cli::try_parse_from(["trustmesh", "envoy", "bootstrap", "--node-id", "n", "--listener", "bad"]).is_err()
        );
        let (args, client) = parse(&["--node-id", "n"]);
        let e = bootstrap_text(&args, &client, Path::new("/d"), OutputFormat::Text).unwrap_err();
        assert!(e.contains("at least one --listener, --tcp-listener or --upstream"), "{e}");
        let (args, client) = parse(&["--node-id", "n", "--tcp-listener", "raw:0:spiffe://example.org/a"]);
        let e = bootstrap_text(&args, &client, Path::new("/d"), OutputFormat::Text).unwrap_err();
        assert!(e.contains("--backend"), "{e}");
        let flags = ["--node-id", "n", "--backend", "127.0.0.1:9", "--tcp-listener", "raw:0:spiffe://example.org/a"];
        let (args, client) = parse(&flags);
        let text = bootstrap_text(&args, &client, Path::new("/d"), OutputFormat::Text).unwrap();
        assert!(text.contains("--tcp-listener raw:0:spiffe://example.org/a"), "the header shows the flag");
        let help = <BootstrapArgs as Args>::augment_args(clap::Command::new("b")).render_long_help().to_string();
        let bound = format!("{} s", bootstrap::MAX_TCP_CONNECTION_SECS);
        assert!(help.contains(&bound), "--tcp-listener's help states the TCP bound {bound}: {help}");
    }
}
