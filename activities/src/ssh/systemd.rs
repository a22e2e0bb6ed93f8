//! systemd over SSH: `systemctl show` parsed into [`UnitState`] (`ssh.systemd_show`) and the
//! idempotent restart keyed on the unit's `InvocationID` (`ssh.systemd_restart`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use waymark_engine::activity::{self, Activity, Context};

use super::{shell_quote, Error, SshSession, SshTarget};
use crate::wait::{Deadline, Poll, PollUntil, WaitError};

/// What `systemctl show` says about a unit's current run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    /// systemd's id of the unit's current run (new on every start; empty when not running).
    pub invocation_id: String,
    /// `active`, `activating`, `inactive`, `failed`, ...
    pub active_state: String,
    /// Main process id (0 when none).
    pub main_pid: u32,
    /// When the unit last entered the active state, µs on the host's monotonic clock.
    pub active_enter_monotonic_us: u64,
}

/// The `KEY=VALUE` lines `systemctl show` prints.
fn show_properties(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// Parses the output of `systemctl show -p InvocationID,ActiveState,MainPID,
/// ActiveEnterTimestampMonotonic` (other properties are ignored).
pub fn parse_unit_state(text: &str) -> Result<UnitState, String> {
    let props = show_properties(text);
    let get = |k: &str| {
        props
            .get(k)
            .copied()
            .ok_or_else(|| format!("no {k}= line (is systemd older than 232?)"))
    };
    let number = |k: &str| -> Result<u64, String> {
        let v = get(k)?;
        v.parse().map_err(|_| format!("{k}={v} is not a number"))
    };
    Ok(UnitState {
        invocation_id: get("InvocationID")?.to_owned(),
        active_state: get("ActiveState")?.to_owned(),
        main_pid: u32::try_from(number("MainPID")?)
            .map_err(|_| "MainPID out of range".to_owned())?,
        active_enter_monotonic_us: number("ActiveEnterTimestampMonotonic")?,
    })
}

/// Unit names go into a shell command line: only the characters systemd allows in names.
fn check_unit_name(unit: &str) -> Result<(), Error> {
    let ok = !unit.is_empty()
        && !unit.starts_with('-')
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '@' | '\\'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "`{unit}` is not a systemd unit name (letters, digits and `:-_.@\\` only)"
        )))
    }
}
/// `[sudo] systemctl VERB [FIXED_ARGS] UNIT`, the unit shell-quoted (the verb and the fixed
/// arguments are constants of this module).
fn systemctl(use_sudo: bool, verb_and_args: &str, unit: &str) -> String {
    let sudo = if use_sudo { "sudo " } else { "" };
    format!("{sudo}systemctl {verb_and_args} {}", shell_quote(unit))
}

/// `systemctl show` of `unit` over an open session, parsed.
pub async fn show_unit(
    session: &SshSession,
    unit: &str,
    use_sudo: bool,
) -> Result<UnitState, Error> {
    check_unit_name(unit)?;
    let target = session.target();
    let command = systemctl(
        use_sudo,
        "show -p InvocationID,ActiveState,MainPID,ActiveEnterTimestampMonotonic,LoadState",
        unit,
    );
    let out = session
        .exec(&command)
        .await?
        .check(target, &command, false)?;
    if let Some(s @ ("not-found" | "bad-setting" | "error" | "masked")) =
        show_properties(&out.stdout).get("LoadState").copied()
    {
        return Err(Error::UnitNotFound {
            addr: target.addr(),
            unit: unit.to_owned(),
            load_state: s.to_owned(),
        });
    }
    parse_unit_state(&out.stdout).map_err(|detail| Error::UnexpectedOutput {
        addr: target.addr(),
        command: command.clone(),
        detail,
    })
}

/// Input of `ssh.systemd_show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowInput {
    /// Where.
    pub target: SshTarget,
    /// The unit, e.g. `yb-tserver` or `yb-tserver.service`.
    pub unit: String,
    /// Run `systemctl` through `sudo` (non-interactive: the account needs NOPASSWD).
    #[serde(default)]
    pub use_sudo: bool,
}

/// `ssh.systemd_show`: the unit's current run ([`UnitState`]). Read-only.
pub struct SystemdShow;

impl Activity for SystemdShow {
    const NAME: &'static str = "ssh.systemd_show";
    type Input = ShowInput;
    type Output = UnitState;

    async fn run(&self, _ctx: Context, input: ShowInput) -> Result<UnitState, activity::Error> {
        check_unit_name(&input.unit)?;
        let session = SshSession::connect(&input.target).await?;
        let state = show_unit(&session, &input.unit, input.use_sudo).await;
        session.close().await;
        Ok(state?)
    }
}

fn default_timeout_secs() -> u64 {
    120
}
fn default_poll_ms() -> u64 {
    1000
}

/// Input of `ssh.systemd_restart`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartInput {
    /// Where.
    pub target: SshTarget,
    /// The unit.
    pub unit: String,
    /// Run `systemctl` through `sudo`.
    #[serde(default)]
    pub use_sudo: bool,
    /// The unit's `InvocationID` recorded (by a `ssh.systemd_show` step) before this step.
    pub expected_invocation_id: String,
    /// The wait's one deadline, seconds after the step was first scheduled (default 120): the
    /// unit must be `active` under a new `InvocationID` by then (final when passed, not retried).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Pause between `systemctl show` polls, ms (default 1,000).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

/// Output of `ssh.systemd_restart`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartOutput {
    /// Whether this attempt ran `systemctl restart` (false: an earlier one had).
    pub restarted: bool,
    /// The unit's `InvocationID` once active.
    pub invocation_id_after: String,
    /// The unit's state once active.
    pub unit_state: UnitState,
}

/// `ssh.systemd_restart`: restarts the unit unless it already was, then waits until it is
/// active. Idempotent through `expected_invocation_id`: a unit running (or starting) under another
/// id has been restarted since that id was recorded, so it is only waited for.
pub struct SystemdRestart;

impl Activity for SystemdRestart {
    const NAME: &'static str = "ssh.systemd_restart";
    type Input = RestartInput;
    type Output = RestartOutput;

    async fn run(
        &self,
        ctx: Context,
        input: RestartInput,
    ) -> Result<RestartOutput, activity::Error> {
        check_unit_name(&input.unit)?;
        let session = SshSession::connect(&input.target).await?;
        let result = restart_unit(&ctx, &session, &input).await;
        session.close().await;
        Ok(result?)
    }
}

/// The restart protocol over an open session (see [`SystemdRestart`]).
pub async fn restart_unit(
    ctx: &Context,
    session: &SshSession,
    input: &RestartInput,
) -> Result<RestartOutput, Error> {
    let target = session.target();
    let unit = &input.unit;
    let before = show_unit(session, unit, input.use_sudo).await?;
    let already = !before.invocation_id.is_empty()
        && before.invocation_id != input.expected_invocation_id
        && matches!(
            before.active_state.as_str(),
            "active" | "activating" | "reloading"
        );
    // The recorded process is already stopping: a restart issued before a crash (a `--no-block`
    // restart returns while the graceful stop runs, and the process that issued it may die
    // then). Issuing another would restart the unit twice; wait for the one in flight.
    let in_flight = !already
        && before.invocation_id == input.expected_invocation_id
        && before.active_state == "deactivating";
    if already {
        ctx.heartbeat(Some(format!(
            "{unit} on {}: already restarted (InvocationID {} is not the recorded {}), {}",
            target.host, before.invocation_id, input.expected_invocation_id, before.active_state
        )));
    } else if in_flight {
        ctx.heartbeat(Some(format!(
            "{unit} on {}: a restart is already in flight (the recorded process is stopping); waiting for it",
            target.host
        )));
    } else {
        ctx.heartbeat(Some(format!(
            "{unit} on {}: restarting (InvocationID {}, {})",
            target.host, before.invocation_id, before.active_state
        )));
        // `--no-block`: the command returns once the job is queued, instead of blocking for the
        // graceful stop (a tserver's can outlast the step's heartbeat limit); the unit is then
        // polled over this same session.
        // (`--no-block` after the unit: systemctl takes options anywhere, and the line still
        // reads `systemctl restart UNIT` to whoever matches on it.)
        let command = format!("{} --no-block", systemctl(input.use_sudo, "restart", unit));
        session
            .exec(&command)
            .await?
            .check(target, &command, false)?;
        ctx.heartbeat(Some(format!("{unit} on {}: restart issued", target.host)));
    }
    wait_active(ctx, session, unit, input).await?;
    let after = show_unit(session, unit, input.use_sudo).await?;
    Ok(RestartOutput {
        restarted: !already && !in_flight,
        invocation_id_after: after.invocation_id.clone(),
        unit_state: after,
    })
}

/// Polls `systemctl show` over the open session until the unit is `active` under an
/// `InvocationID` other than the recorded one (a `--no-block` restart returns before the stop
/// even began: `is-active` alone could still see the old run), within one deadline counted from
/// the step's first scheduling ([`crate::wait`]): a retried attempt waits only for what is left.
async fn wait_active(
    ctx: &Context,
    session: &SshSession,
    unit: &str,
    input: &RestartInput,
) -> Result<(), Error> {
    let target = session.target();
    let what = format!("{unit} on {} active under a new InvocationID", target.host);
    let deadline = Deadline::after_scheduling(ctx, Duration::from_secs(input.timeout_secs));
    let looked = ctx
        .poll_until(
            &what,
            deadline,
            Duration::from_millis(input.poll_ms),
            || async {
                let state = show_unit(session, unit, input.use_sudo).await?;
                let new_run = !state.invocation_id.is_empty()
                    && state.invocation_id != input.expected_invocation_id;
                if new_run && state.active_state == "active" {
                    return Ok(Poll::Ready(state));
                }
                Ok(Poll::Pending(format!(
                    "{} (InvocationID {}{})",
                    if state.active_state.is_empty() {
                        "(no answer)"
                    } else {
                        &state.active_state
                    },
                    if state.invocation_id.is_empty() {
                        "none"
                    } else {
                        &state.invocation_id
                    },
                    if new_run {
                        ""
                    } else {
                        ", still the recorded one"
                    }
                )))
            },
        )
        .await;
    match looked {
        Ok(state) => {
            ctx.heartbeat(Some(format!(
                "{unit} on {}: active (InvocationID {})",
                target.host, state.invocation_id
            )));
            Ok(())
        }
        Err(WaitError::Timeout(t)) => Err(Error::UnitNotActive {
            addr: target.addr(),
            unit: unit.to_owned(),
            secs: input.timeout_secs,
            deadline: t.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            last: t.last,
        }),
        Err(WaitError::Failed(e)) => Err(e),
        Err(WaitError::Cancelled(_)) => Err(Error::Cancelled {
            addr: target.addr(),
            what: format!("waiting for {unit} to be active"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemctl_show() {
        let text = "InvocationID=4f1c\nActiveState=active\nMainPID=1234\nActiveEnterTimestampMonotonic=987654\nLoadState=loaded\n";
        let state = parse_unit_state(text).expect("parses");
        assert_eq!(
            state,
            UnitState {
                invocation_id: "4f1c".into(),
                active_state: "active".into(),
                main_pid: 1234,
                active_enter_monotonic_us: 987_654,
            }
        );
        let err = parse_unit_state("ActiveState=active\n").expect_err("no InvocationID");
        assert!(err.contains("InvocationID"), "{err}");
    }

    #[test]
    fn refuses_unit_names_that_are_not_names() {
        assert!(check_unit_name("yb-tserver.service").is_ok());
        assert!(check_unit_name("getty@tty1.service").is_ok());
        for bad in ["", "-x", "a;reboot", "a b", "$(id)"] {
            assert!(check_unit_name(bad).is_err(), "{bad}");
        }
    }

    /// issue 8, item 3: the unit name is quoted in every systemctl command line.
    #[test]
    fn systemctl_quotes_the_unit() {
        assert_eq!(
            systemctl(true, "restart", "yb-master"),
            "sudo systemctl restart yb-master"
        );
        assert_eq!(
            systemctl(false, "is-active", "a\\b"),
            r"systemctl is-active 'a\b'"
        );
    }
}
