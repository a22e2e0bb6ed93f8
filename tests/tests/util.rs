//! Helpers shared by the suites.

use std::path::PathBuf;
use std::time::Duration;

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("waymark-test-")
        .tempdir()
        .expect("temp dir")
}

/// Path of a binary of this package.
pub fn crash_child() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_waymark-crash-child"))
}

/// Polls `cond` every 5 ms until it holds, failing the test after `limit` (a safety net against a
/// hang, not a timing assertion).
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A sandbox estate in a temp dir, with delays divided by `faster`.
pub async fn sandbox(faster: u64) -> (tempfile::TempDir, waymark_sandbox::Sandbox) {
    let dir = temp_dir();
    let sb = waymark_sandbox::Sandbox::start(
        dir.path(),
        &waymark_sandbox::Spec::default().faster(faster),
    )
    .await
    .expect("sandbox starts");
    (dir, sb)
}

/// An activity context outside the engine.
pub fn activity_ctx() -> waymark_engine::activity::Context {
    waymark_engine::activity::Context::detached(
        waymark_engine::RunId::new(),
        waymark_engine::StepRef::Workflow(0),
        1,
    )
}

/// A loopback port with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
