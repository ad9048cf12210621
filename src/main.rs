//! The `trustmesh` binary: parse the command line, run it, exit with its code.

fn main() {
    let cli = trustmesh::cli::parse();
    std::process::exit(trustmesh::cli::run(cli));
}
