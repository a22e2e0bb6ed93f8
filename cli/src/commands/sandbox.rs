//! `waymark sandbox up`: the simulated estate as its own process.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

/// Starts the sandbox and keeps it up until SIGINT or SIGTERM.
pub async fn up(dir: &Path, faster: u64) -> anyhow::Result<ExitCode> {
    let sb = waymark_sandbox::Sandbox::start(dir, &waymark_sandbox::Spec::default().faster(faster))
        .await
        .with_context(|| format!("starting the sandbox in {}", dir.display()))?;
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
    eprintln!(
        "for `waymark run` against it, set (test values; the sandbox accepts any):\n  \
         export AWS_ACCESS_KEY_ID=waymark-sandbox AWS_SECRET_ACCESS_KEY=waymark-sandbox-not-a-secret AWS_REGION={}",
        waymark_sandbox::elb::REGION
    );
    println!("{}", dir.join("inventory.toml").display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sb.stop();
    Ok(ExitCode::SUCCESS)
}
