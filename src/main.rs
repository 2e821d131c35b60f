//! The `chat` binary: configuration, logging, the listener, then
//! [`chat::run`] (or a maintenance command: migrate, export, import).

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: with sled copying tree nodes on
/// every write, glibc's allocator (its consolidation and unlinking of
/// free chunks) was the largest single cost of a Send (see
/// docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // Without tokio's LIFO slot, a connection's task runs after every
    // stream task that woke it rather than right after the first: when a
    // commit answers 50 Sends, or a message goes to 1,000 streams, each
    // connection writes its responses in one syscall instead of one each
    // (3 deliveries per writev before, at 1,000 streams; see
    // docs/performance.md). The setting needs `--cfg tokio_unstable`
    // (.cargo/config.toml); without it the server still builds and runs.
    #[cfg(tokio_unstable)]
    runtime.disable_lifo_slot();
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve())
}

async fn serve() -> std::process::ExitCode {
    let config = chat::Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, not for log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log_format {
        chat::config::LogFormat::Text => logs.init(),
        chat::config::LogFormat::Json => logs.json().init(),
    }
    if let Some(command) = config.command.clone() {
        return match chat::transfer::command(&config, command).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", config.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    match chat::run(config, listener, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e @ chat::RunError::StoreBroken(_)) => {
            tracing::error!("{e}");
            // Now, without waiting for the runtime to wind down: threads
            // stuck in a store that no longer writes would keep it forever.
            // Every acknowledged message is already on disk.
            std::process::exit(1)
        }
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what orchestrators send).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
