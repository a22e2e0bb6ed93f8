//! `waymark`: the operator command line. Runs workflows in the foreground, resumes interrupted
//! runs, plans, shows and audits history, signals runs, runs the daemon, and (with the default
//! `sandbox` feature) the demo and the sandbox.
//!
//! Data goes to stdout; progress and logs go to stderr. Exit statuses:
//! [`waymark_cli::exit::ExitStatus`]. Layers: `args` (the command line), `commands` (one
//! function per command), then this file; everything else is the `waymark_cli` library.

mod args;
mod commands;

use std::process::ExitCode;

use clap::Parser;
use waymark_cli::exit::{classify, is_broken_pipe, ExitStatus};
use waymark_cli::paths;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_daemon = matches!(cli.command, Command::Daemon { .. });
    #[cfg(feature = "sandbox")]
    let is_sandbox = matches!(cli.command, Command::Sandbox { .. });
    #[cfg(not(feature = "sandbox"))]
    let is_sandbox = false;
    #[cfg(feature = "sandbox")]
    let is_demo = matches!(cli.command, Command::Demo { .. } | Command::Simulate { .. });
    #[cfg(not(feature = "sandbox"))]
    let is_demo = false;
    if !is_daemon && !is_sandbox {
        // `waymark history RUN | head` ends quietly when the reader goes away, like any Unix tool.
        #[allow(unsafe_code)]
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    #[cfg(feature = "sandbox")]
    if is_demo {
        // The sandbox's ELBv2 accepts any credentials; the SDK needs some. Set before any thread starts.
        waymark_sandbox::use_placeholder_aws_credentials();
    }
    // WAYMARK_LOG filters the logs (tracing's EnvFilter syntax); the daemon logs at info by default.
    paths::init_logging(if is_daemon { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("waymark: cannot start the async runtime: {e}");
            return ExitStatus::Unusable.into();
        }
    };
    let data_dir = match (&cli.data_dir, is_demo) {
        // A demo without --data-dir gets a fresh folder of its own, not the operator's log.
        (None, true) => std::env::temp_dir().join(format!(
            "waymark-demo-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        )),
        _ => paths::data_dir(cli.data_dir.clone()),
    };
    let store = match waymark_cli::store::Store::from_args(
        cli.store.as_deref(),
        cli.store_password_file.clone(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("waymark: {e}");
            return ExitStatus::Usage.into();
        }
    };
    match runtime.block_on(commands::dispatch(cli.command, data_dir, store)) {
        Ok(status) => status.into(),
        Err(e) if is_broken_pipe(&e) => ExitStatus::Success.into(),
        Err(e) => {
            let (status, msg) = classify(&e);
            eprintln!("waymark: {msg}");
            status.into()
        }
    }
}
