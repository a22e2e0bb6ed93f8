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

/// The `waymark` binary of this build (`scripts/test.sh` builds it before the tests run).
pub fn waymark_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target dir");
    let bin = dir.join("waymark");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p waymark-cli`, which scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A `waymark` command on `data_dir`, with test AWS credentials in its environment only.
pub fn waymark(data_dir: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(waymark_bin());
    c.arg("--data-dir")
        .arg(data_dir)
        .env("AWS_ACCESS_KEY_ID", "waymark-test")
        .env("AWS_SECRET_ACCESS_KEY", "waymark-test-secret-not-real")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE");
    c
}

/// `waymark sandbox up` as its own process, killed when dropped.
pub struct SandboxProcess {
    child: std::process::Child,
    /// Its folder.
    pub dir: PathBuf,
}

impl SandboxProcess {
    /// Starts it in `dir` and waits until its inventory is written.
    pub fn start(dir: &std::path::Path, faster: u64) -> Self {
        let child = std::process::Command::new(waymark_bin())
            .args(["sandbox", "up", "--dir"])
            .arg(dir)
            .args(["--faster", &faster.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn waymark sandbox up");
        let inv = dir.join("inventory.toml");
        let start = std::time::Instant::now();
        while !inv.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "sandbox did not write {}",
                inv.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        SandboxProcess {
            child,
            dir: dir.to_owned(),
        }
    }
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
