//! Where things are and who is asking: the data directory and the files in it (socket, schedules,
//! event log, opened with what recovery found reported), the operator's name, and logging.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use waymark_engine::log::SharedLog;

/// The data directory: the flag or `WAYMARK_DATA_DIR`, else `$XDG_DATA_HOME/waymark`, else
/// `~/.local/share/waymark`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(d) = flag {
        return d;
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("waymark");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/waymark"),
        None => PathBuf::from(".waymark"),
    }
}

/// The operator, as recorded in histories: `user (uid N)`.
pub fn operator() -> String {
    #[allow(unsafe_code)]
    // SAFETY: getuid(2) has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        Ok(u) if !u.is_empty() => format!("{u} (uid {uid})"),
        _ => format!("uid {uid}"),
    }
}

/// Logs to stderr, filtered by `WAYMARK_LOG` (tracing's `EnvFilter` syntax) or `default_level`;
/// colour only when stderr is a terminal (a daemon's log in a file or journald stays plain).
/// The AWS SDK's credential-chain warnings are kept out (the ELB activities report a missing
/// credential as their own error) unless `WAYMARK_LOG` names an `aws` target itself.
pub fn init_logging(default_level: &str) {
    use std::io::IsTerminal as _;
    let from_env = std::env::var("WAYMARK_LOG").ok();
    let mut filter = from_env
        .as_deref()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default_level));
    if !from_env.is_some_and(|f| f.contains("aws")) {
        for quiet in ["aws_config=error", "aws_smithy_runtime=error"] {
            if let Ok(d) = quiet.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

/// The daemon's socket in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("waymark.sock")
}

/// Where `waymark daemon --http` leaves its one-time web login URL when its stdout is not a
/// terminal (owner-only; a journal is no place for it).
pub fn web_login_path(data_dir: &Path) -> PathBuf {
    data_dir.join("web-login-url")
}

/// The daemon's schedules in a data directory.
pub fn schedules_path(data_dir: &Path) -> PathBuf {
    data_dir.join("schedules.json")
}

/// Opens the event log of a data directory, reporting what recovery found: the write in flight
/// at a crash (logged), damage (printed to stderr, naming the runs).
pub fn open_log(data_dir: &Path) -> anyhow::Result<SharedLog> {
    let log = waymark_engine::open_log(data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    for finding in &log.backend().report().findings {
        if !finding.is_damage() {
            tracing::info!("event log in {}: {finding}", data_dir.display());
        }
    }
    for line in waymark_engine::log::EventLog::damage(log.as_ref()) {
        eprintln!("waymark: {line}");
    }
    let log: SharedLog = log;
    Ok(log)
}

/// Takes `DATA_DIR/waymark.lock` (created with the directory if missing) for a daemon whose runs
/// live in a shared store: the directory still holds its socket and schedules, so one daemon
/// per directory. Keep the file open for as long as the lock is needed.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let path = data_dir.join("waymark.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // A process being spawned holds a copy of the lock between its fork and exec: retry briefly.
    for _ in 0..50 {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()))
            }
        }
    }
    Err(anyhow::anyhow!(
        "the data directory {} is in use by another process (its waymark.lock is held)",
        data_dir.display()
    ))
}
