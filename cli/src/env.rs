//! The command's surroundings: the data directory, who the operator is, and how errors map to
//! exit codes and one-line causes.

use std::path::PathBuf;

/// Shown after `--help`.
pub const AFTER_HELP: &str = "\
Examples:
  waymark demo                                   # the seed runbook against a simulated estate
  waymark plan yb-maintenance --inventory inv.toml
  waymark run yb-maintenance --inventory inv.toml
  waymark ls --state running
  waymark history RUN --output mermaid
  waymark signal RUN cancel --reason 'window closed'
  waymark resolve RUN --note 'weights and MirrorMaker2 restored by hand'
  waymark verify

Exit codes: 0 ok; 1 the run or check ended badly (failed, cancelled, suspended, verify fault,
replay divergence); 2 bad usage or input (invalid inventory, unknown run); 3 the data directory
is unusable (in use by another process, damaged).";

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

/// A failure with its exit code.
#[derive(Debug)]
pub struct Exit {
    /// Exit code.
    pub code: u8,
    /// One-line cause.
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Bad usage or input (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code: 2,
        message: message.into(),
    })
}

/// Exit code and one-line cause for an error.
pub fn classify(e: &anyhow::Error) -> (u8, String) {
    if let Some(x) = e.downcast_ref::<Exit>() {
        return (x.code, x.message.clone());
    }
    let msg = format!("{e:#}");
    if e.downcast_ref::<waymark_workflows::inventory::Error>()
        .is_some()
    {
        return (2, msg);
    }
    if let Some(le) = e.downcast_ref::<waymark_engine::log::Error>() {
        return match le {
            waymark_engine::log::Error::UnknownRun(_) => (2, msg),
            _ => (3, msg),
        };
    }
    if let Some(re) = e.downcast_ref::<waymark_engine::runtime::Error>() {
        return match re {
            waymark_engine::runtime::Error::Log(waymark_engine::log::Error::UnknownRun(_))
            | waymark_engine::runtime::Error::UnknownWorkflow { .. }
            | waymark_engine::runtime::Error::Input(_)
            | waymark_engine::runtime::Error::Finished { .. }
            | waymark_engine::runtime::Error::NothingToResolve { .. } => (2, msg),
            waymark_engine::runtime::Error::Log(_) | waymark_engine::runtime::Error::Core(_) => {
                (3, msg)
            }
            _ => (1, msg),
        };
    }
    (1, msg)
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

/// Checks an operator's note (`resolve --note`): something a later reader can use.
pub fn check_note(note: &str) -> anyhow::Result<()> {
    if note.trim().is_empty() {
        return Err(usage(
            "--note must say what you checked or repaired (it is journaled with your name)",
        ));
    }
    Ok(())
}
