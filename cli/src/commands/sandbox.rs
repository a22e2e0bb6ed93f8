//! `waymark sandbox up`: the simulated estate as its own process.

use std::path::Path;

use anyhow::Context as _;
use waymark_cli::exit::{usage, ExitStatus};

/// The sandbox spec of `--faster N` / `--time-scale F` (F wins; F must be a positive number).
pub fn spec(faster: u64, time_scale: Option<f64>) -> anyhow::Result<waymark_sandbox::Spec> {
    match time_scale {
        None => Ok(waymark_sandbox::Spec::default().faster(faster)),
        Some(f) if f.is_finite() && f > 0.0 => {
            Ok(waymark_sandbox::Spec::default().with_time_scale(f))
        }
        Some(f) => Err(usage(format!(
            "--time-scale takes a positive factor (1.0: real durations, 0.02: 50 times faster), not {f}"
        ))),
    }
}

/// Starts the sandbox and keeps it up until SIGINT or SIGTERM.
pub async fn up(dir: &Path, faster: u64, time_scale: Option<f64>) -> anyhow::Result<ExitStatus> {
    let spec = spec(faster, time_scale)?;
    let sb = waymark_sandbox::Sandbox::start(dir, &spec)
        .await
        .with_context(|| format!("starting the sandbox in {}", dir.display()))?;
    waymark_workflows::sandbox::write_inventory(dir, sb.description())
        .with_context(|| format!("writing the sandbox's inventory.toml in {}", dir.display()))?;
    let e = sb.endpoints();
    eprintln!(
        "sandbox up in {}: Kubernetes http://{}, ELBv2 http://{}, {} yb-masters, {} SSH hosts, admin http://{}",
        dir.display(),
        e.k8s,
        e.elb,
        e.yb_masters.len(),
        e.ssh.len(),
        e.admin
    );
    // The sandbox's ELBv2 accepts any credentials, but the AWS SDK of `waymark run` needs some.
    let exports: Vec<String> = waymark_sandbox::PLACEHOLDER_AWS_CREDENTIALS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    eprintln!(
        "for `waymark run` against it, set (test values; the sandbox accepts any):\n  export {}",
        exports.join(" ")
    );
    println!("{}", dir.join("inventory.toml").display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sb.stop();
    Ok(ExitStatus::Success)
}
