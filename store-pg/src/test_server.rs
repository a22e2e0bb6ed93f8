//! A private, throwaway PostgreSQL server for tests and benchmarks: `initdb` into a temporary
//! directory, `postgres` on a free loopback port, password authentication over TCP with the
//! password in a passfile (the path a daemon uses), one schema per test.
//!
//! `initdb` and `postgres` refuse to run as root: as root they run as the Debian `postgres` user
//! (fallback `nobody`). The server is started by a small `sh` watcher that reads its standard
//! input: when this process ends, however it ends, the pipe closes, and the watcher stops the
//! server (SIGQUIT) and removes the directory, so no server outlives its test binary.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// Where Debian's `postgresql` package puts its server binaries (one directory per major).
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// The role `initdb` creates, the one the tests connect as.
pub const USER: &str = "waymark";

/// A running private server. Dropping it stops the server and removes its directory.
pub struct TestServer {
    dir: PathBuf,
    port: u16,
    passfile: PathBuf,
    watcher: Child,
    stdin: Option<ChildStdin>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.watcher.wait();
    }
}

/// The directory of the newest installed server's binaries, or what to install.
pub fn server_bin() -> Result<PathBuf, String> {
    let newest = std::fs::read_dir(DEBIAN_ROOT)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major);
    newest.map(|(_, bin)| bin).ok_or_else(|| {
        format!(
            "no PostgreSQL server under {DEBIAN_ROOT}/*/bin (initdb, postgres): the PostgreSQL store's tests \
             start a private server; install Debian's package with `apt-get install postgresql` \
             (scripts/test.sh does; its own cluster is not used)"
        )
    })
}

impl TestServer {
    /// Initialises a cluster in a new temporary directory and starts its server on a free
    /// loopback port; returns once it accepts connections.
    pub fn start() -> Result<TestServer, String> {
        let bin = server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("waymark-pg-")
            .tempdir()
            .map_err(|e| format!("temporary directory for PostgreSQL: {e}"))?
            .keep();
        let run_as = run_as()?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {} to uid {uid}: {e}", dir.display()))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        let password = uuid::Uuid::new_v4().simple().to_string();
        let pwfile = dir.join("initdb.pw");
        std::fs::write(&pwfile, format!("{password}\n")).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync", "--data-checksums"])
            .current_dir(&dir)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .map_err(|e| format!("running {}: {e}", bin.join("initdb").display()))?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::create_dir_all(dir.join("sock")).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.join("sock"), Some(uid), Some(gid))
                .map_err(|e| e.to_string())?;
        }
        let passfile = dir.join("pgpass");
        let mut last_log = String::new();
        // A free port can be taken between the probe and the server's bind: try another.
        for _ in 0..5 {
            let port = free_port()?;
            std::fs::write(&passfile, format!("127.0.0.1:{port}:*:{USER}:{password}\n"))
                .map_err(|e| e.to_string())?;
            std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            let (watcher, stdin) = spawn_server(&bin, &dir, port, run_as)?;
            let mut server = TestServer {
                dir: dir.clone(),
                port,
                passfile: passfile.clone(),
                watcher,
                stdin: Some(stdin),
            };
            match server.wait_ready(&password) {
                Ok(()) => return Ok(server),
                Err(log) => {
                    // Stop this attempt's server; keep the directory for the next one.
                    drop(server.stdin.take());
                    let _ = server.watcher.wait();
                    std::mem::forget(server);
                    if !log.contains("could not bind") && !log.contains("Address already in use") {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(format!(
                            "the private PostgreSQL server did not start: {log}"
                        ));
                    }
                    last_log = log;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(format!(
            "the private PostgreSQL server found no free port in 5 tries: {last_log}"
        ))
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The passfile (mode 0600) holding the password of [`USER`].
    pub fn passfile(&self) -> &Path {
        &self.passfile
    }

    /// A connection string for database `postgres` whose tables are looked up in `schema`.
    pub fn url(&self, schema: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname=postgres options='-c search_path={schema}'",
            self.port
        )
    }

    /// A connection configuration of the same (password set), for tests' own SQL.
    pub fn config(&self, schema: &str) -> tokio_postgres::Config {
        crate::client_config(&self.url(schema), Some(&self.passfile))
            .expect("the test server's own address is valid")
    }

    /// Creates a new empty schema (`t_` and a random suffix) and returns its name.
    pub fn create_schema(&self) -> Result<String, String> {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let config = self.config("public");
        let sql = format!("CREATE SCHEMA {name}");
        crate::on_private_runtime(move || async move {
            let client = crate::connect(&config, "the test server").await?;
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| format!("{sql}: {}", crate::describe(&e)))
        })?;
        Ok(name)
    }

    /// Waits until the server accepts a password login, or fails with its log.
    fn wait_ready(&mut self, password: &str) -> Result<(), String> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(USER)
            .password(password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = config.clone();
            let connected = crate::on_private_runtime(move || async move {
                match attempt.connect(NoTls).await {
                    Ok((client, connection)) => {
                        drop(client);
                        let _ = connection.await;
                        Ok(())
                    }
                    Err(e) => Err(crate::describe(&e)),
                }
            });
            let last_error = match connected {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let exited = self.watcher.try_wait().ok().flatten().is_some();
            let log = self.log();
            if exited || log.contains("could not bind") || Instant::now() > deadline {
                return Err(format!("{log}\n(last connection attempt: {last_error})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.dir.join("postgres.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

/// Starts `sh`, which starts `postgres` in the background and, once its standard input closes
/// (this process ended, or the server was dropped), stops it and removes the directory.
fn spawn_server(
    bin: &Path,
    dir: &Path,
    port: u16,
    run_as: Option<(u32, u32)>,
) -> Result<(Child, ChildStdin), String> {
    let log = File::create(dir.join("postgres.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(
            "\"$0\" \"$@\" & pid=$!\n\
             read _ignored\n\
             kill -QUIT $pid 2>/dev/null\n\
             wait $pid\n\
             [ -n \"$WAYMARK_PG_KEEP\" ] || rm -rf \"$WAYMARK_PG_DIR\"",
        )
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir.join("sock"))
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
            "-c",
            "fsync=on",
            "-c",
            "shared_buffers=32MB",
            "-c",
            "logging_collector=off",
        ])
        .env("WAYMARK_PG_DIR", dir)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.join("postgres").display()))?;
    let stdin = child.stdin.take().expect("piped stdin");
    Ok((child, stdin))
}

/// As root: the uid and gid to run the server as (`postgres`, else `nobody`).
fn run_as() -> Result<Option<(u32, u32)>, String> {
    let euid = std::fs::metadata("/proc/self")
        .map_err(|e| format!("/proc/self: {e}"))?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    for name in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == name {
                if let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) {
                    return Ok(Some((uid, gid)));
                }
            }
        }
    }
    Err("running as root, and neither a `postgres` nor a `nobody` user exists to run the test server as \
         (initdb and postgres refuse root): create one, or run the tests as another user"
        .into())
}

fn free_port() -> Result<u16, String> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}
