//! `keymeter`: the web server and the operator commands.

// glibc's allocator was ~18 % of the server's CPU under metered load (malloc/free contention
// between the Tokio workers); mimalloc's per-thread heaps avoid most of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    keymeter::cli::run().await
}
