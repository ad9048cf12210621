//! The `trustmesh` binary: parse the command line, run it, exit with its code.

/// A server allocates and frees small buffers on every request; mimalloc's
/// per-thread free lists cost a fraction of glibc's locked arenas there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = trustmesh::cli::parse();
    std::process::exit(trustmesh::cli::run(cli));
}
