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
