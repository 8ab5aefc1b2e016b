//! `mesh-node`: the Atmosphere daemon (`mesh-node run`) and the CLI that
//! drives it over the local API (`docs/local-api.md`).

mod api;
mod cli;
mod client;
mod commands;
mod daemon;
mod exit;
mod output;
mod proto;
mod token;

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs at `info` by default; CLI commands only warn.
    let default_level = match cli.command {
        Command::Run(_) => "info",
        Command::Client(_) => "warn",
    };
    init_tracing(default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(commands::dispatch(cli));
    // Do not hang on background work (a blocked stdin read, a stuck task).
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit::exit_code(&error))
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `default_level`).
fn init_tracing(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
