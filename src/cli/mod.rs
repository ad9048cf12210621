//! The command line: `serve`, and the admin commands that talk to a server
//! over gRPC (`pki …`, `token mint`, `entry …`, `audit list`), plus the local ones
//! (`pki init`, `policy check`). Human text by default, `--output json` for
//! scripts; every failure is one line on stderr and a non-zero exit.

/// Runs an admin call and yields its result, or returns the one-line failure.
macro_rules! call {
    ($ctx:expr, $method:ident, $msg:expr) => {{
        let mut admin = match $ctx.connect().await {
            Ok(a) => a,
            Err(e) => return $crate::cli::fail(&e),
        };
        let request = admin.request($msg);
        match admin.client.$method(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return $crate::cli::fail(&$crate::cli::client::status_line(&s)),
        }
    }};
}

mod agents;
mod cas;
mod client;
mod commands;
mod entries;
mod envoy;
mod local;
mod output;
mod profiles;
mod views;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::app::ServeError;
use crate::config::{AgentArgs, AgentConfig, EXIT_CONFIG, ServeArgs, ServeConfig};
use crate::telemetry::{LogFormat, init_logging};

pub use output::OutputFormat;

#[derive(Debug, Parser)]
#[command(name = "trustmesh", version, about = "SPIFFE CA, Envoy SDS control plane and Workload API in one binary")]
pub struct Cli {
    /// Data directory (database, key-encryption key, admin token; mode 0700).
    #[arg(long, global = true, env = "TRUSTMESH_DATA_DIR", default_value = "./trustmesh-data")]
    pub data_dir: PathBuf,
    /// Output format of admin commands: text or json.
    #[arg(long, global = true, env = "TRUSTMESH_OUTPUT", default_value = "text")]
    pub output: String,
    /// Log format: auto (pretty on a terminal, JSON otherwise), pretty or json.
    #[arg(long, global = true, env = "TRUSTMESH_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[command(flatten)]
    pub client: client::ClientArgs,
    #[command(subcommand)]
    pub command: Command,
    /// Which global flags the command line or environment gave (not defaults).
    #[arg(skip)]
    pub given: Given,
}

/// Global flags given explicitly: `trustmesh agent` has defaults of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Given {
    pub data_dir: bool,
    pub server: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the CA, the API port and the HTTP port.
    Serve(ServeArgs),
    /// Run a node agent (no command), or manage the server's agents (list, evict).
    ///
    /// The agent takes the global --server (repeat it for each replica, tried in turn)
    /// [env: TRUSTMESH_AGENT_SERVER=, comma-separated] and --data-dir
    /// [env: TRUSTMESH_AGENT_DATA_DIR=] [default: ./trustmesh-agent].
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        command: Option<agents::AgentCommand>,
        #[command(flatten)]
        args: AgentArgs,
    },
    /// Certificate authority administration.
    Pki {
        #[command(subcommand)]
        command: commands::PkiCommand,
    },
    /// Mint tokens.
    Token {
        #[command(subcommand)]
        command: commands::TokenCommand,
    },
    /// Registration entries: which callers get which SPIFFE ID.
    Entry {
        #[command(subcommand)]
        command: entries::EntryCommand,
    },
    /// Evaluate the Cedar policy locally.
    Policy {
        #[command(subcommand)]
        command: local::PolicyCommand,
    },
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        command: commands::AuditCommand,
    },
    /// Envoy integration: bootstrap configurations that use trustmesh's SDS.
    Envoy {
        #[command(subcommand)]
        command: envoy::EnvoyCommand,
    },
}

/// Flags every admin command takes (global, so they may come before or after
/// the command) that `serve` does not use: hidden from `serve --help`.
const CLIENT_ONLY: [&str; 6] = ["output", "servers", "token", "ca_file", "client_cert", "client_key"];

/// The command line as clap knows it, with `serve --help` listing only what
/// `serve` uses.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    cmd.mut_subcommand("serve", |serve| {
        serve.mut_args(|a| if CLIENT_ONLY.contains(&a.get_id().as_str()) { a.hide(true) } else { a })
    })
}

/// Parses the process's arguments (exits with clap's message on bad input).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = |id: &str| !matches!(matches.value_source(id), None | Some(clap::parser::ValueSource::DefaultValue));
    cli.given = Given { data_dir: given("data_dir"), server: given("servers") };
    cli
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let log_format = match LogFormat::parse(cli.log_format.as_deref()) {
        Ok(f) => f,
        Err(e) => return fail_config(&e.to_string()),
    };
    let output = match OutputFormat::parse(&cli.output) {
        Ok(o) => o,
        Err(e) => return fail_config(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Command::Serve(args) => {
            let cfg = match ServeConfig::from_args(&cli.data_dir, &args) {
                Ok(c) => c,
                Err(e) => return fail_config(&e.to_string()),
            };
            init_logging(log_format);
            stopped(log_format, runtime.block_on(crate::app::serve(cfg)))
        }
        Command::Agent { command: Some(command), .. } => {
            let ctx = client::Context { args: cli.client, data_dir: cli.data_dir, output };
            runtime.block_on(agents::agents(ctx, command))
        }
        Command::Agent { command: None, args } => {
            let servers = cli.given.server.then_some(cli.client.servers.as_slice());
            let data_dir = cli.given.data_dir.then_some(cli.data_dir.clone());
            let cfg = match AgentConfig::from_args(&args, servers, data_dir, |k| std::env::var(k).ok()) {
                Ok(c) => c,
                Err(e) => return fail_config(&e.to_string()),
            };
            init_logging(log_format);
            stopped(log_format, runtime.block_on(crate::app::agent(cfg)))
        }
        Command::Pki { command } => {
            let ctx = client::Context { args: cli.client, data_dir: cli.data_dir, output };
            runtime.block_on(commands::pki(ctx, command))
        }
        Command::Token { command } => {
            let ctx = client::Context { args: cli.client, data_dir: cli.data_dir, output };
            runtime.block_on(commands::token(ctx, command))
        }
        Command::Audit { command } => {
            let ctx = client::Context { args: cli.client, data_dir: cli.data_dir, output };
            runtime.block_on(commands::audit(ctx, command))
        }
        Command::Entry { command } => {
            let ctx = client::Context { args: cli.client, data_dir: cli.data_dir, output };
            runtime.block_on(entries::entry(ctx, command))
        }
        Command::Policy { command } => local::policy(command, output),
        Command::Envoy { command } => envoy::run(command, &cli.client, &cli.data_dir, output),
    }
}

/// The exit code of a server or agent that stopped; a failure is said once:
/// as a JSON event where logs are JSON, else as one line.
fn stopped(log_format: LogFormat, result: Result<(), ServeError>) -> i32 {
    let (code, error) = match result {
        Ok(()) => return 0,
        Err(ServeError::Startup(e)) => (EXIT_CONFIG, e),
        Err(ServeError::Runtime(e)) => (1, e),
    };
    let reason = format!("{error:#}").replace('\n', " ");
    match log_format {
        LogFormat::Json => tracing::error!(error = %reason, exit_code = code, "trustmesh stopped"),
        LogFormat::Pretty => eprintln!("error: {reason}"),
    }
    code
}

/// Prints the one-line reason of a failure; returns exit code 1.
pub(crate) fn fail(reason: &str) -> i32 {
    eprintln!("error: {}", reason.replace('\n', " "));
    1
}

fn fail_config(reason: &str) -> i32 {
    eprintln!("error: {}", reason.replace('\n', " "));
    EXIT_CONFIG
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_help_lists_only_what_serve_uses() {
        let mut cmd = command();
        cmd.clone().debug_assert();
        let serve = cmd.find_subcommand_mut("serve").unwrap();
        let help = serve.render_long_help().to_string();
        for flag in ["--listen", "--socket", "--data-dir", "--log-format", "--header-timeout"] {
            assert!(help.contains(flag), "serve --help lacks {flag}");
        }
        for flag in ["--server ", "--token", "--ca-file", "--client-cert", "--client-key", "--output"] {
            assert!(!help.contains(flag), "serve --help lists the client's {flag}");
        }
        let status = cmd.find_subcommand_mut("pki").unwrap().find_subcommand_mut("status").unwrap();
        assert!(status.render_long_help().to_string().contains("--server "), "admin commands keep them");
    }
}
