//! Helpers shared by the suites.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::fixtures::daemon::DaemonProcess;

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

/// Polls `probe` until it gives a value, and returns it. The first polls come every 5 ms, later
/// ones up to every 100 ms (a probe may run a command). `limit` is a safety net against a hang,
/// not a timing assertion: past it the test fails with `what`.
pub async fn eventually<T>(limit: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
    poll(limit, what, Duration::from_millis(100), probe).await
}

/// Polls `cond` every 5 ms until it holds, failing the test after `limit` (a safety net against a
/// hang, not a timing assertion).
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    poll(limit, what, Duration::from_millis(5), || {
        cond().then_some(())
    })
    .await;
}

/// [`eventually`] for code that cannot await (the sync fixtures): the same polls, with the
/// thread sleeping between them.
pub fn eventually_blocking<T>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for: {what} (after the safety limit of {limit:?})"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

async fn poll<T>(
    limit: Duration,
    what: &str,
    longest_pause: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(5).min(longest_pause);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what} (after the safety limit of {limit:?})"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(longest_pause);
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
    waymark_workflows::sandbox::write_inventory(dir.path(), sb.description())
        .expect("sandbox inventory written");
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
        eventually_blocking(
            Duration::from_secs(30),
            &format!("the sandbox writing {}", inv.display()),
            || inv.exists().then_some(()),
        );
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

/// Waits for `child` to exit (failing the test after `limit`, a safety net against a hang; the
/// child is then killed). Returns its status and what it wrote to stdout and stderr (when piped).
pub fn wait_exit(
    mut child: std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |r: Option<&mut dyn std::io::Read>| {
        let mut s = String::new();
        if let Some(r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    };
    let out = read(child.stdout.as_mut().map(|r| r as &mut dyn std::io::Read));
    let err = read(child.stderr.as_mut().map(|r| r as &mut dyn std::io::Read));
    (status, out, err)
}

/// One HTTP/1.1 request over a unix socket; returns the status code and the body.
pub fn http_unix(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: waymark\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (code, body)
}

/// A copy of the `waymark` binary that any user can execute (in a fresh world-readable folder
/// under the system temp dir), for tests that run it as another user: the build's target dir
/// may sit in a home folder others cannot enter.
pub fn waymark_bin_for_everyone() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("waymark-bin-")
        .tempdir_in(std::env::temp_dir())
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("waymark");
    std::fs::copy(waymark_bin(), &bin).expect("copy the waymark binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

// Workflows made of closures, for the engine suites.

use futures::future::BoxFuture;
use std::sync::Arc;
use waymark_engine::workflow::{self, DynWorkflow};
use waymark_engine::{Payload, RetryPolicy, WorkflowContext};

type Body = std::sync::Arc<
    dyn Fn(
            waymark_engine::WorkflowContext,
            waymark_engine::Payload,
        ) -> futures::future::BoxFuture<
            'static,
            Result<waymark_engine::Payload, waymark_engine::workflow::Error>,
        > + Send
        + Sync,
>;

/// A workflow made of a closure, so each test can write its own.
pub struct FnWorkflow {
    name: &'static str,
    version: u32,
    body: Body,
}

impl DynWorkflow for FnWorkflow {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn call(
        self: Arc<Self>,
        ctx: WorkflowContext,
        input: Payload,
    ) -> BoxFuture<'static, Result<Payload, workflow::Error>> {
        (self.body)(ctx, input)
    }
}

pub fn wf<F, Fut>(name: &'static str, version: u32, f: F) -> Arc<dyn DynWorkflow>
where
    F: Fn(WorkflowContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Payload, workflow::Error>> + Send + 'static,
{
    Arc::new(FnWorkflow {
        name,
        version,
        body: Arc::new(move |ctx, _| Box::pin(f(ctx))),
    })
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .initial_interval(Duration::from_millis(5))
        .max_interval(Duration::from_millis(20))
}
