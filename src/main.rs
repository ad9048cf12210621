//! The `trustmesh` binary: parse the command line, run it, exit with its code.

use clap::Parser;

fn main() {
    let cli = trustmesh::cli::Cli::parse();
    std::process::exit(trustmesh::cli::run(cli));
}
