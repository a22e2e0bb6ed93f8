//! Exit statuses: the one enum every command, the daemon's API errors and `main` use, the
//! error that carries one, and how any other error maps to one.

use std::process::ExitCode;

/// How a `waymark` command ends. The daemon sends the number in its error answers, so that a
/// command run through it exits as it would have without it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: done, and what was checked is fine.
    Success,
    /// 1: the run or the check ended badly (failed, cancelled, suspended, held, refused, a
    /// verify fault, a replay divergence, a cluster held by another run).
    Failure,
    /// 2: bad usage or input (an invalid inventory, an unknown run, a refused request).
    Usage,
    /// 3: the data directory is unusable (in use by another process, damaged, unreadable).
    Unusable,
}

impl ExitStatus {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Unusable => 3,
        }
    }

    /// The status of a code sent by a daemon (an unknown code counts as a failure).
    pub fn from_code(code: u64) -> ExitStatus {
        match code {
            0 => ExitStatus::Success,
            2 => ExitStatus::Usage,
            3 => ExitStatus::Unusable,
            _ => ExitStatus::Failure,
        }
    }

    /// `Success` when `ok`, else `Failure`.
    pub fn success_if(ok: bool) -> ExitStatus {
        if ok {
            ExitStatus::Success
        } else {
            ExitStatus::Failure
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        ExitCode::from(status.code())
    }
}

/// A failure with the status the process exits with, and its one-line cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// How the process exits.
    pub status: ExitStatus,
    /// One-line cause (what was wrong and what to do).
    pub message: String,
}

impl Exit {
    /// An error that exits with `status`.
    pub fn error(status: ExitStatus, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Exit {
            status,
            message: message.into(),
        })
    }
}

/// Bad usage or input (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Exit::error(ExitStatus::Usage, message)
}

/// Exit status and one-line cause for an error.
pub fn classify(e: &anyhow::Error) -> (ExitStatus, String) {
    use waymark_engine::log::Error as LogError;
    use waymark_engine::runtime::Error as RuntimeError;
    if let Some(x) = e.downcast_ref::<Exit>() {
        return (x.status, x.message.clone());
    }
    let msg = format!("{e:#}");
    if e.downcast_ref::<waymark_workflows::inventory::Error>()
        .is_some()
        || e.downcast_ref::<crate::schedule::Error>().is_some()
    {
        return (ExitStatus::Usage, msg);
    }
    if let Some(le) = e.downcast_ref::<LogError>() {
        return match le {
            LogError::UnknownRun(_) => (ExitStatus::Usage, msg),
            _ => (ExitStatus::Unusable, msg),
        };
    }
    if let Some(re) = e.downcast_ref::<RuntimeError>() {
        return match re {
            RuntimeError::Log(LogError::UnknownRun(_))
            | RuntimeError::UnknownWorkflow { .. }
            | RuntimeError::Input(_)
            | RuntimeError::Finished { .. }
            | RuntimeError::NothingToResolve { .. } => (ExitStatus::Usage, msg),
            RuntimeError::Log(_) | RuntimeError::Core(_) => (ExitStatus::Unusable, msg),
            _ => (ExitStatus::Failure, msg),
        };
    }
    (ExitStatus::Failure, msg)
}

/// Whether an error is a closed stdout (`waymark history RUN | head`): found by the
/// `io::ErrorKind` anywhere in its chain, never by the text of its message.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::{classify, is_broken_pipe, usage, ExitStatus};

    #[test]
    fn a_broken_pipe_is_found_by_its_kind_not_its_text() {
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing the history");
        assert!(is_broken_pipe(&pipe));
        // The words alone are not a broken pipe (a message may quote them).
        assert!(!is_broken_pipe(&anyhow::anyhow!(
            "Broken pipe (os error 32)"
        )));
    }

    #[test]
    fn statuses_round_trip_through_their_codes() {
        for s in [
            ExitStatus::Success,
            ExitStatus::Failure,
            ExitStatus::Usage,
            ExitStatus::Unusable,
        ] {
            assert_eq!(ExitStatus::from_code(u64::from(s.code())), s);
        }
        assert_eq!(classify(&usage("bad")).0, ExitStatus::Usage);
        assert_eq!(classify(&anyhow::anyhow!("other")).0, ExitStatus::Failure);
    }
}
