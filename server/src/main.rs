//! `keymeter`: the web server and the operator commands.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    keymeter::cli::run().await
}
