//! `waymark schedule ...`.

use std::path::Path;
use std::process::ExitCode;

use crate::ScheduleCommand;

/// Runs a schedule command.
pub async fn command(data_dir: &Path, command: ScheduleCommand) -> anyhow::Result<ExitCode> {
    let _ = (data_dir, command);
    Err(crate::env::usage("schedules are being wired"))
}
