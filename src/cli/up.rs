//! `scout up`: run the broker in the foreground until SIGINT or SIGTERM.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use super::Context;
use crate::daemon::Broker;

/// Flags of `scout up`.
#[derive(Debug, Args)]
pub struct UpArgs {}

/// Runs `scout up`.
pub fn run(_args: UpArgs, context: &Context) -> anyhow::Result<ExitCode> {
    if !context.home.settings_path().exists() {
        // First run on this home: do what `scout setup` does with defaults,
        // so one command starts a broker on a fresh machine.
        let summary = super::setup::first_run(context)?;
        eprintln!("first run: set up a new home\n{}", summary.trim_end());
    }
    // After the first run, so the home exists with its own mode before the
    // logs directory is made inside it.
    crate::logging::init_with_file(&context.home.logs_dir());
    tracing::info!(
        home = %context.home.config_dir.display(),
        pid = std::process::id(),
        version = env!("CARGO_PKG_VERSION"),
        "broker starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("scout-broker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(context))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(context: &Context) -> anyhow::Result<()> {
    // Install the handlers before announcing readiness, so a signal sent
    // right after the ready line is never missed.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let broker = Broker::start(&context.home).await?;
    let info = broker.info().clone();
    tracing::info!("{}", info.line());
    context.printer.emit(&info, || info.line())?;
    let signal_name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal = signal_name, "stopping");
    broker.shutdown().await?;
    tracing::info!("stopped; store closed");
    Ok(())
}
