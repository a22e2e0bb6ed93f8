//! SSH and systemd activities: one conformance suite run against two hosts, a private OpenSSH
//! `sshd` (with an emulated `systemctl` first on its PATH) and the sandbox's russh host. Commands
//! and exit statuses, `systemctl show`, a restart done once and skipped when repeated, strict
//! host keys (changed, unknown, hashed entries), agent and key-file auth, refused, frozen and
//! dropped connections, slow commands, and no key material in any output or error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use waymark_activities::ssh::{
    self, RestartInput, RunCommand, RunInput, ShowInput, SshAuth, SshTarget, SystemdRestart,
    SystemdShow,
};
use waymark_engine::activity;
use waymark_engine::Activity;
use waymark_sandbox::{read_effects, Fault, FaultKind, Faults, Sandbox};

use crate::fixtures::openssh::{keygen, run_tool, OpenSsh};
use crate::util::{activity_ctx, sandbox, temp_dir, wait_until};

const UNIT: &str = "yb-tserver";
/// Another host's ed25519 key (from russh's `known_hosts` tests), for "changed key" entries.
const OTHER_HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

/// What the suite runs against.
enum Host {
    OpenSsh(OpenSsh),
    Sandbox {
        dir: tempfile::TempDir,
        sandbox: Option<Sandbox>,
    },
}

/// One peer, with the target the activities use.
struct Peer {
    host: Host,
    target: SshTarget,
}

impl Peer {
    async fn openssh() -> Peer {
        let sshd = OpenSsh::start().await;
        let d = sshd.dir.path().to_owned();
        let user =
            String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        let target = SshTarget::new(
            "127.0.0.1",
            user.trim(),
            SshAuth::KeyFile {
                path: d.join("id_ed25519"),
            },
            d.join("known_hosts"),
        )
        .with_port(sshd.port);
        Peer {
            host: Host::OpenSsh(sshd),
            target,
        }
    }

    async fn sandbox() -> Peer {
        let (dir, sb) = sandbox(10).await;
        let d = dir.path();
        let port = sb.endpoints().ssh["yb-a-1"].port();
        let target = SshTarget::new(
            "127.0.0.1",
            "yugabyte",
            SshAuth::KeyFile {
                path: d.join("id_ed25519"),
            },
            d.join("known_hosts"),
        )
        .with_port(port);
        Peer {
            host: Host::Sandbox {
                dir,
                sandbox: Some(sb),
            },
            target,
        }
    }

    /// A directory for the test's own files.
    fn dir(&self) -> &Path {
        match &self.host {
            Host::OpenSsh(s) => s.dir.path(),
            Host::Sandbox { dir, .. } => dir.path(),
        }
    }

    fn sandbox_ref(&self) -> &Sandbox {
        match &self.host {
            Host::Sandbox {
                sandbox: Some(sb), ..
            } => sb,
            _ => panic!("not a running sandbox"),
        }
    }

    /// Private key files whose text must never show up.
    fn private_key_files(&self) -> Vec<PathBuf> {
        match &self.host {
            Host::OpenSsh(s) => vec![
                s.dir.path().join("id_ed25519"),
                s.dir.path().join("host_ed25519"),
            ],
            Host::Sandbox { dir, .. } => vec![
                dir.path().join("id_ed25519"),
                dir.path().join("ssh_host_ed25519_key"),
            ],
        }
    }

    /// `ALGORITHM BASE64` of the host's key, as its `known_hosts` line has it.
    fn host_key(&self) -> String {
        let text = std::fs::read_to_string(&self.target.known_hosts).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("[127.0.0.1]:{} ", self.target.port)))
            .unwrap();
        line.split_whitespace()
            .skip(1)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// How many times `unit` was restarted on the host.
    /// The `systemctl` command lines the host received (arguments; the sandbox: its restarts).
    fn systemctl_calls(&self) -> Vec<String> {
        match &self.host {
            Host::OpenSsh(s) => std::fs::read_to_string(s.dir.path().join("systemctl.log"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
            Host::Sandbox { dir, .. } => read_effects(dir.path())
                .iter()
                .filter(|e| e.system == "ssh")
                .filter_map(|e| e.details["command"].as_str().map(str::to_owned))
                .collect(),
        }
    }

    fn restarts(&self, unit: &str) -> usize {
        match &self.host {
            Host::OpenSsh(s) => std::fs::read_to_string(s.dir.path().join("restarts.log"))
                .unwrap_or_default()
                .lines()
                .filter(|l| *l == unit)
                .count(),
            Host::Sandbox { dir, .. } => read_effects(dir.path())
                .iter()
                .filter(|e| {
                    e.system == "ssh"
                        && e.target == format!("yb-a-1/{unit}")
                        && e.action == "restart"
                })
                .count(),
        }
    }

    fn set_sandbox_fault(&self, matching: &str, kind: FaultKind, remaining: Option<u32>) {
        self.sandbox_ref().shared().set_faults(Faults {
            rules: vec![Fault {
                system: "ssh".into(),
                matching: matching.into(),
                kind,
                remaining,
            }],
        });
    }

    /// A command that takes far longer than a 300 ms command timeout.
    fn slow_command(&self) -> String {
        match &self.host {
            Host::OpenSsh(_) => "sleep 5".into(),
            Host::Sandbox { .. } => {
                self.set_sandbox_fault("systemctl is-active", FaultKind::Delay(10_000), None);
                format!("systemctl is-active {UNIT}")
            }
        }
    }

    /// A command during which the connection drops.
    fn dropping_command(&self) -> String {
        match &self.host {
            // Kills the sshd process serving this session.
            Host::OpenSsh(_) => "kill -9 $PPID".into(),
            Host::Sandbox { .. } => {
                self.set_sandbox_fault("systemctl is-active", FaultKind::Drop, Some(1));
                format!("systemctl is-active {UNIT}")
            }
        }
    }

    /// The host accepts TCP connections but answers nothing.
    fn freeze(&self) {
        match &self.host {
            Host::OpenSsh(s) => s.signal("STOP"),
            Host::Sandbox { .. } => {
                self.set_sandbox_fault("yb-a-1", FaultKind::Delay(10_000), None);
            }
        }
    }

    fn thaw(&self) {
        match &self.host {
            Host::OpenSsh(s) => s.signal("CONT"),
            Host::Sandbox { .. } => self.sandbox_ref().shared().set_faults(Faults::default()),
        }
    }

    /// Stops the SSH server; its port then refuses connections.
    async fn stop(&mut self) {
        match &mut self.host {
            Host::OpenSsh(s) => {
                s.sshd.kill().unwrap();
                s.sshd.wait().unwrap();
            }
            Host::Sandbox { sandbox, .. } => sandbox.take().expect("running").stop(),
        }
        let addr = format!("127.0.0.1:{}", self.target.port);
        wait_until(
            Duration::from_secs(10),
            "the SSH port to refuse connections",
            || std::net::TcpStream::connect(&addr).is_err(),
        )
        .await;
    }
}

fn run_input(target: &SshTarget, command: &str) -> RunInput {
    RunInput {
        target: target.clone(),
        command: command.into(),
        retry_on_failure: false,
    }
}

fn show_input(target: &SshTarget, unit: &str) -> ShowInput {
    ShowInput {
        target: target.clone(),
        unit: unit.into(),
        use_sudo: true,
    }
}

fn restart_input(target: &SshTarget, expected: &str) -> RestartInput {
    RestartInput {
        target: target.clone(),
        unit: UNIT.into(),
        use_sudo: true,
        expected_invocation_id: expected.into(),
        timeout_secs: 30,
        poll_ms: 20,
    }
}

/// Checks an error's class and that its message has every `needle`.
fn assert_error(e: &activity::Error, retryable: bool, needles: &[&str]) {
    assert_eq!(
        e.retryable, retryable,
        "retryable should be {retryable}: {}",
        e.message
    );
    for n in needles {
        assert!(e.message.contains(n), "message lacks {n:?}: {}", e.message);
    }
}

fn addr(target: &SshTarget) -> String {
    format!("127.0.0.1:{}", target.port)
}

async fn runs_a_command(peer: Peer) {
    let t = &peer.target;
    let out = RunCommand
        .run(
            activity_ctx(),
            run_input(t, &format!("systemctl is-active {UNIT}")),
        )
        .await
        .unwrap();
    assert_eq!(
        (out.exit_status, out.stdout.as_str(), out.stderr.as_str()),
        (0, "active\n", "")
    );
    // The plain function returns a non-zero status instead of failing.
    let out = ssh::run(t, "no-such-command").await.unwrap();
    assert_eq!((out.exit_status, out.stdout.as_str()), (127, ""));
    assert!(
        out.stderr.contains("no-such-command: command not found"),
        "{out:?}"
    );
    // One session runs several commands.
    let session = ssh::SshSession::connect(t).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            session
                .exec(&format!("systemctl is-active {UNIT}"))
                .await
                .unwrap()
                .exit_status,
            0
        );
    }
    session.close().await;
}

async fn non_zero_exit_fails_with_status_and_stderr(peer: Peer) {
    let t = &peer.target;
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(t, "systemctl restart no-such-unit"),
        )
        .await
        .unwrap_err();
    // systemd says `Unit no-such-unit.service not found.`, the sandbox leaves out `.service`.
    assert_error(
        &e,
        false,
        &[
            "SSH",
            &addr(t),
            "`systemctl restart no-such-unit` exited with status 5",
            "Unit no-such-unit",
            "not found",
        ],
    );
    let e = RunCommand
        .run(activity_ctx(), run_input(t, "no-such-command --flag"))
        .await
        .unwrap_err();
    assert_error(
        &e,
        false,
        &[
            "exited with status 127",
            "no-such-command: command not found",
        ],
    );
    let e = RunCommand
        .run(
            activity_ctx(),
            RunInput {
                retry_on_failure: true,
                ..run_input(t, "systemctl restart no-such-unit")
            },
        )
        .await
        .unwrap_err();
    assert_error(&e, true, &["exited with status 5"]);
    assert_eq!(peer.restarts("no-such-unit"), 0);
}

async fn show_parses_the_unit_state(peer: Peer) {
    let t = &peer.target;
    let state = SystemdShow
        .run(activity_ctx(), show_input(t, UNIT))
        .await
        .unwrap();
    assert_eq!(state.invocation_id.len(), 32, "{state:?}");
    assert!(
        state.invocation_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{state:?}"
    );
    assert_eq!(state.active_state, "active");
    assert!(state.main_pid > 0, "{state:?}");
    assert!(state.active_enter_monotonic_us > 0, "{state:?}");
    // Unit names ending in .service name the same unit.
    let again = SystemdShow
        .run(activity_ctx(), show_input(t, "yb-tserver.service"))
        .await
        .unwrap();
    assert_eq!(again, state);

    let e = SystemdShow
        .run(activity_ctx(), show_input(t, "no-such-unit"))
        .await
        .unwrap_err();
    // systemd answers LoadState=not-found (exit 0); the sandbox fails the command (exit 5).
    assert_error(&e, false, &[&addr(t), "no-such-unit", "not found"]);
    let e = SystemdShow
        .run(activity_ctx(), show_input(t, "x;reboot"))
        .await
        .unwrap_err();
    assert_error(&e, false, &["not a systemd unit name"]);
}

async fn restart_happens_once(peer: Peer) {
    let t = &peer.target;
    let before = SystemdShow
        .run(activity_ctx(), show_input(t, UNIT))
        .await
        .unwrap();
    assert_eq!(peer.restarts(UNIT), 0);

    let ctx = activity_ctx();
    let first = SystemdRestart
        .run(ctx.clone(), restart_input(t, &before.invocation_id))
        .await
        .unwrap();
    assert!(first.restarted);
    assert_ne!(first.invocation_id_after, before.invocation_id);
    // issue 11: the restart does not block for the graceful stop; the unit is polled instead.
    assert!(
        peer.systemctl_calls()
            .iter()
            .any(|c| c.contains("restart") && c.contains("--no-block")),
        "{:?}",
        peer.systemctl_calls()
    );
    assert_eq!(first.unit_state.invocation_id, first.invocation_id_after);
    assert_eq!(first.unit_state.active_state, "active");
    assert_ne!(first.unit_state.main_pid, before.main_pid);
    assert_eq!(peer.restarts(UNIT), 1);
    let progress = ctx.last_progress().expect("heartbeats while waiting");
    assert!(
        progress.contains(UNIT) && progress.contains("active"),
        "{progress}"
    );

    // The same step again (a retry after a crash): the recorded id is gone, so no second restart.
    let second = SystemdRestart
        .run(activity_ctx(), restart_input(t, &before.invocation_id))
        .await
        .unwrap();
    assert!(!second.restarted);
    assert_eq!(second.invocation_id_after, first.invocation_id_after);
    assert_eq!(peer.restarts(UNIT), 1);

    // A new step that recorded the current id restarts again.
    let third = SystemdRestart
        .run(activity_ctx(), restart_input(t, &first.invocation_id_after))
        .await
        .unwrap();
    assert!(third.restarted);
    assert_eq!(peer.restarts(UNIT), 2);
    let now = SystemdShow
        .run(activity_ctx(), show_input(t, UNIT))
        .await
        .unwrap();
    assert_eq!(now.invocation_id, third.invocation_id_after);
}

/// One deadline per wait (issue 10): the restart's wait for `active` counts from the step's
/// first scheduling. An attempt that starts after it passed (a retry, a resume) still restarts
/// the unit once, looks once, and fails not retryable, naming the deadline and what it saw; it
/// does not wait a whole timeout again (before: it waited afresh and succeeded, and a timeout
/// was retryable). OpenSSH only: its emulated unit answers `activating` to the first look.
#[tokio::test]
async fn the_restart_wait_has_one_deadline_from_the_first_scheduling() {
    let peer = Peer::openssh().await;
    let t = &peer.target;
    let before = SystemdShow
        .run(activity_ctx(), show_input(t, UNIT))
        .await
        .unwrap();
    let mut ctx = activity_ctx();
    ctx.scheduled_at = chrono::Utc::now() - chrono::Duration::seconds(60);
    let e = SystemdRestart
        .run(ctx, restart_input(t, &before.invocation_id))
        .await
        .expect_err("not active by the deadline");
    assert_error(
        &e,
        false,
        &[UNIT, "deadline", "activating", "final, not retried"],
    );
    assert_eq!(peer.restarts(UNIT), 1);
    let calls = peer.systemctl_calls();
    let restart = calls
        .iter()
        .position(|c| c.starts_with("restart"))
        .expect("the restart was issued");
    assert_eq!(
        calls[restart + 1..]
            .iter()
            .filter(|c| c.starts_with("show"))
            .count(),
        1,
        "one last look after the restart: {calls:?}"
    );
}

async fn changed_host_key_is_refused(peer: Peer) {
    let t = &peer.target;
    let file = peer.dir().join("changed_known_hosts");
    std::fs::write(
        &file,
        format!(
            "# the host as it was\n[127.0.0.1]:{} {OTHER_HOST_KEY}\n",
            t.port
        ),
    )
    .unwrap();
    for strict in [true, false] {
        let target = SshTarget {
            known_hosts: file.clone(),
            strict_host_key_checking: strict,
            ..t.clone()
        };
        let e = RunCommand
            .run(
                activity_ctx(),
                run_input(&target, &format!("systemctl restart {UNIT}")),
            )
            .await
            .unwrap_err();
        assert_error(
            &e,
            false,
            &[
                "SSH",
                &addr(t),
                "host key has changed",
                &format!("{} line(s) 2", file.display()),
                &format!("ssh-keygen -R '[127.0.0.1]:{}'", t.port),
            ],
        );
    }
    assert_eq!(
        peer.restarts(UNIT),
        0,
        "nothing may run on a host whose key changed"
    );
}

async fn unknown_host_is_refused(peer: Peer) {
    let t = &peer.target;
    let keyscan =
        |file: &Path| format!("ssh-keyscan -p {} 127.0.0.1 >> {}", t.port, file.display());
    // The right key, but recorded for another port.
    let file = peer.dir().join("other_port_known_hosts");
    std::fs::write(
        &file,
        format!(
            "[127.0.0.1]:1 {}\n127.0.0.1 {}\n",
            peer.host_key(),
            peer.host_key()
        ),
    )
    .unwrap();
    let target = SshTarget {
        known_hosts: file.clone(),
        ..t.clone()
    };
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(&target, "systemctl is-active yb-tserver"),
        )
        .await
        .unwrap_err();
    assert_error(
        &e,
        false,
        &[
            "SSH",
            &addr(t),
            "unknown host",
            &format!("`[127.0.0.1]:{}`", t.port),
            &keyscan(&file),
        ],
    );

    let missing = peer.dir().join("no_such_known_hosts");
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(
                &SshTarget {
                    known_hosts: missing.clone(),
                    ..t.clone()
                },
                "systemctl is-active yb-tserver",
            ),
        )
        .await
        .unwrap_err();
    assert_error(
        &e,
        false,
        &["unknown host", "does not exist", &keyscan(&missing)],
    );

    // Without strict checking an unknown host is accepted.
    let out = RunCommand
        .run(
            activity_ctx(),
            run_input(
                &SshTarget {
                    strict_host_key_checking: false,
                    ..target
                },
                "systemctl is-active yb-tserver",
            ),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, 0);
}

async fn hashed_known_hosts_entries_match(peer: Peer) {
    let t = &peer.target;
    let file = peer.dir().join("hashed_known_hosts");
    std::fs::copy(&t.known_hosts, &file).unwrap();
    run_tool(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&file));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains("127.0.0.1"),
        "not hashed: {text}"
    );
    let target = SshTarget {
        known_hosts: file.clone(),
        ..t.clone()
    };
    let out = RunCommand
        .run(
            activity_ctx(),
            run_input(&target, "systemctl is-active yb-tserver"),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, 0);
    // A hashed entry with another key is a changed key.
    let other = peer.dir().join("other_hashed_known_hosts");
    std::fs::write(&other, format!("[127.0.0.1]:{} {OTHER_HOST_KEY}\n", t.port)).unwrap();
    run_tool(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&other));
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(
                &SshTarget {
                    known_hosts: other,
                    ..t.clone()
                },
                "systemctl is-active yb-tserver",
            ),
        )
        .await
        .unwrap_err();
    assert_error(&e, false, &["host key has changed", "line(s) 1"]);
}

/// An ssh-agent on a socket of its own, killed when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_agent(dir: &Path, key: &Path) -> Agent {
    let socket = dir.join("agent.sock");
    let child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent (package openssh-client) runs");
    let agent = Agent { child, socket };
    wait_until(Duration::from_secs(10), "ssh-agent's socket", || {
        agent.socket.exists()
    })
    .await;
    run_tool(
        Command::new("ssh-add")
            .arg("-q")
            .arg(key)
            .env("SSH_AUTH_SOCK", &agent.socket),
    );
    agent
}

async fn authenticates_with_agent_and_refuses_other_keys(peer: Peer) {
    let t = &peer.target;
    let SshAuth::KeyFile { path: key } = &t.auth else {
        unreachable!()
    };
    let agent = start_agent(peer.dir(), key).await;
    let with_agent = SshTarget {
        auth: SshAuth::Agent {
            socket: Some(agent.socket.clone()),
        },
        ..t.clone()
    };
    let out = RunCommand
        .run(
            activity_ctx(),
            run_input(&with_agent, "systemctl is-active yb-tserver"),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, 0);

    // A key the host does not know.
    let stranger = peer.dir().join("stranger_ed25519");
    keygen(&stranger, "stranger");
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(
                &SshTarget {
                    auth: SshAuth::KeyFile {
                        path: stranger.clone(),
                    },
                    ..t.clone()
                },
                "systemctl is-active yb-tserver",
            ),
        )
        .await
        .unwrap_err();
    assert_error(
        &e,
        false,
        &[
            "SSH",
            &addr(t),
            "authentication",
            "refused",
            "authorized_keys",
        ],
    );
    let stranger_agent_dir = peer.dir().join("stranger-agent");
    std::fs::create_dir_all(&stranger_agent_dir).unwrap();
    let stranger_agent = start_agent(&stranger_agent_dir, &stranger).await;
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(
                &SshTarget {
                    auth: SshAuth::Agent {
                        socket: Some(stranger_agent.socket.clone()),
                    },
                    ..t.clone()
                },
                "systemctl is-active yb-tserver",
            ),
        )
        .await
        .unwrap_err();
    assert_error(&e, false, &["refused", "agent keys SHA256:"]);
}

async fn refused_connection_is_retryable(mut peer: Peer) {
    peer.stop().await;
    let t = &peer.target;
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(t, "systemctl is-active yb-tserver"),
        )
        .await
        .unwrap_err();
    assert_error(
        &e,
        true,
        &[
            "SSH",
            &addr(t),
            "connection refused",
            "check that sshd runs",
        ],
    );
}

async fn unresponsive_host_times_out_then_recovers(peer: Peer) {
    let t = SshTarget {
        connect_timeout_ms: 500,
        ..peer.target.clone()
    };
    peer.freeze();
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(&t, "systemctl is-active yb-tserver"),
        )
        .await
        .unwrap_err();
    peer.thaw();
    assert_error(
        &e,
        true,
        &[
            "SSH",
            &addr(&t),
            "no answer within 500 ms",
            "connect_timeout_ms",
        ],
    );
    let out = RunCommand
        .run(
            activity_ctx(),
            run_input(&peer.target, "systemctl is-active yb-tserver"),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, 0);
}

async fn slow_command_times_out(peer: Peer) {
    let t = SshTarget {
        command_timeout_ms: 300,
        ..peer.target.clone()
    };
    let command = peer.slow_command();
    let e = RunCommand
        .run(activity_ctx(), run_input(&t, &command))
        .await
        .unwrap_err();
    assert_error(
        &e,
        true,
        &[
            "SSH",
            &addr(&t),
            &format!("`{command}` did not finish within 300 ms"),
            "command_timeout_ms",
        ],
    );
}

async fn dropped_connection_is_retryable(peer: Peer) {
    let t = &peer.target;
    let command = peer.dropping_command();
    let e = RunCommand
        .run(activity_ctx(), run_input(t, &command))
        .await
        .unwrap_err();
    assert_error(
        &e,
        true,
        &[
            "SSH",
            &addr(t),
            "connection ended",
            "may or may not have run",
        ],
    );
    // The host still serves the next connection.
    let out = RunCommand
        .run(
            activity_ctx(),
            run_input(t, "systemctl is-active yb-tserver"),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, 0);
}

async fn key_material_never_shows(peer: Peer) {
    let t = &peer.target;
    let SshAuth::KeyFile { path: key } = &t.auth else {
        unreachable!()
    };
    let mut seen: Vec<String> = Vec::new();
    let mut record_err = |e: &activity::Error| seen.push(format!("{e} {e:?}"));

    let input = run_input(t, "systemctl is-active yb-tserver");
    let out = RunCommand.run(activity_ctx(), input.clone()).await.unwrap();
    let state = SystemdShow
        .run(activity_ctx(), show_input(t, UNIT))
        .await
        .unwrap();
    let restart = restart_input(t, &state.invocation_id);
    let restarted = SystemdRestart
        .run(activity_ctx(), restart.clone())
        .await
        .unwrap();

    // A damaged copy of the key, a public key and a known_hosts file where a private key belongs.
    let damaged = peer.dir().join("damaged_key");
    let text = std::fs::read_to_string(key).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(
        &damaged,
        format!(
            "{}\n{}\n",
            lines[..lines.len() - 2].join("\n"),
            lines[lines.len() - 1]
        ),
    )
    .unwrap();
    for wrong in [damaged, key.with_extension("pub"), t.known_hosts.clone()] {
        let e = RunCommand
            .run(
                activity_ctx(),
                run_input(
                    &SshTarget {
                        auth: SshAuth::KeyFile {
                            path: wrong.clone(),
                        },
                        ..t.clone()
                    },
                    "systemctl is-active yb-tserver",
                ),
            )
            .await
            .unwrap_err();
        assert_error(
            &e,
            false,
            &["cannot load private key", &wrong.display().to_string()],
        );
        record_err(&e);
    }
    let changed = peer.dir().join("changed");
    std::fs::write(
        &changed,
        format!("[127.0.0.1]:{} {OTHER_HOST_KEY}\n", t.port),
    )
    .unwrap();
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(
                &SshTarget {
                    known_hosts: changed,
                    ..t.clone()
                },
                "systemctl is-active yb-tserver",
            ),
        )
        .await
        .unwrap_err();
    record_err(&e);
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(t, "systemctl restart no-such-unit"),
        )
        .await
        .unwrap_err();
    record_err(&e);
    seen.extend([
        serde_json::to_string(&input).unwrap(),
        serde_json::to_string(&out).unwrap(),
        serde_json::to_string(&state).unwrap(),
        serde_json::to_string(&restart).unwrap(),
        serde_json::to_string(&restarted).unwrap(),
        format!("{t:?} {out:?} {state:?} {restarted:?}"),
    ]);

    assert_no_key_text(&peer.private_key_files(), &seen);
}

/// No line of the private keys in `files` (nor their first 40 characters of key data) is in `seen`.
fn assert_no_key_text(files: &[PathBuf], seen: &[String]) {
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(
            body.len() >= 3,
            "{} is not an OpenSSH private key",
            file.display()
        );
        let joined = body.concat();
        for s in seen {
            for line in &body {
                assert!(
                    !s.contains(line),
                    "key text of {} shows in: {s}",
                    file.display()
                );
            }
            assert!(
                !s.contains(&joined[..40]),
                "key text of {} shows in: {s}",
                file.display()
            );
        }
    }
}

/// issue 8, item 3: unit names reach `systemctl` as one literal word on both hosts: a plain name
/// works as before, and a name with a character the shell would interpret (`\`, which systemd
/// uses in escaped names) arrives unchanged (before the fix the shell ate the backslash).
async fn unit_names_reach_systemctl_as_one_literal_word(peer: Peer) {
    let t = &peer.target;
    let state = SystemdShow
        .run(activity_ctx(), show_input(t, UNIT))
        .await
        .unwrap();
    assert_eq!(state.active_state, "active");
    let escaped = r"no\x2dsuch";
    let e = SystemdShow
        .run(activity_ctx(), show_input(t, escaped))
        .await
        .unwrap_err();
    assert_error(&e, false, &["not found", escaped]);
    if let Host::OpenSsh(sshd) = &peer.host {
        let calls = std::fs::read_to_string(sshd.dir.path().join("systemctl.log")).unwrap();
        assert!(
            calls.lines().any(|l| l.ends_with(escaped)),
            "systemctl received the name unchanged: {calls}"
        );
    }
}

/// issue 8, item 3: `shell_quote` against a real login shell (OpenSSH): every hostile value comes
/// back byte for byte as one argument, and nothing in it runs.
#[tokio::test]
async fn shell_quote_round_trips_hostile_values_through_the_login_shell() {
    let peer = Peer::openssh().await;
    let t = &peer.target;
    let marker = peer.dir().join("pwned");
    let m = marker.display().to_string();
    let hostile = [
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("x; touch {m}"),
        format!("x\ntouch {m}"),
        format!("x && touch {m} #"),
        format!("'; touch {m}; echo '"),
        format!("\"$(touch {m})\""),
        "it's".to_owned(),
        "a  b\tc".to_owned(),
        "\\".to_owned(),
        "*".to_owned(),
        "~".to_owned(),
        String::new(),
    ];
    for value in &hostile {
        let command = format!("printf '[%s]' {}", ssh::shell_quote(value));
        let out = ssh::run(t, &command).await.unwrap();
        assert_eq!(out.exit_status, 0, "{command}: {out:?}");
        assert_eq!(out.stdout, format!("[{value}]"), "{command}");
    }
    assert!(!marker.exists(), "a quoted value ran a command");
}

/// Each suite function, run once against OpenSSH and once against the sandbox.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod openssh {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Peer::openssh().await).await;
                }
            )*
        }
        mod sandbox {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Peer::sandbox().await).await;
                }
            )*
        }
    };
}

conformance!(
    runs_a_command,
    non_zero_exit_fails_with_status_and_stderr,
    show_parses_the_unit_state,
    restart_happens_once,
    changed_host_key_is_refused,
    unknown_host_is_refused,
    hashed_known_hosts_entries_match,
    authenticates_with_agent_and_refuses_other_keys,
    refused_connection_is_retryable,
    unresponsive_host_times_out_then_recovers,
    slow_command_times_out,
    dropped_connection_is_retryable,
    key_material_never_shows,
    unit_names_reach_systemctl_as_one_literal_word,
);

/// A server that accepts and hangs up at once: a retryable handshake failure naming the address.
#[tokio::test]
async fn server_hanging_up_during_the_handshake_is_retryable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let dir = temp_dir();
    std::fs::write(
        dir.path().join("known_hosts"),
        format!("[127.0.0.1]:{port} {OTHER_HOST_KEY}\n"),
    )
    .unwrap();
    let target = SshTarget::new(
        "127.0.0.1",
        "nobody",
        SshAuth::KeyFile {
            path: dir.path().join("id_ed25519"),
        },
        dir.path().join("known_hosts"),
    )
    .with_port(port);
    let e: activity::Error = ssh::run(&target, "true").await.unwrap_err().into();
    assert_error(
        &e,
        true,
        &[
            "SSH",
            &format!("127.0.0.1:{port}"),
            "connection failed",
            "check sshd's log",
        ],
    );
}

/// The sandbox host answers the sandbox's Exit faults (at connection and at command time).
#[tokio::test]
async fn sandbox_exit_faults_fail_the_command() {
    let peer = Peer::sandbox().await;
    let t = &peer.target;
    peer.set_sandbox_fault(
        "yb-a-1",
        FaultKind::Exit(1, "injected at connect\n".into()),
        Some(1),
    );
    let e = RunCommand
        .run(
            activity_ctx(),
            run_input(t, "systemctl is-active yb-tserver"),
        )
        .await
        .unwrap_err();
    assert_error(&e, false, &["exited with status 1", "injected at connect"]);
    peer.set_sandbox_fault(
        "restart",
        FaultKind::Exit(1, "Job for yb-tserver.service failed.\n".into()),
        Some(1),
    );
    let before = SystemdShow
        .run(activity_ctx(), show_input(t, UNIT))
        .await
        .unwrap();
    let e = SystemdRestart
        .run(activity_ctx(), restart_input(t, &before.invocation_id))
        .await
        .unwrap_err();
    assert_error(
        &e,
        false,
        &["exited with status 1", "Job for yb-tserver.service failed"],
    );
    assert_eq!(peer.restarts(UNIT), 0);
    // The fault is spent: the next attempt restarts.
    let out = SystemdRestart
        .run(activity_ctx(), restart_input(t, &before.invocation_id))
        .await
        .unwrap();
    assert!(out.restarted);
    assert_eq!(peer.restarts(UNIT), 1);
}

/// OpenSSH's own client uses the sandbox's key files and talks to its russh host.
#[tokio::test]
async fn openssh_client_talks_to_the_sandbox_host() {
    let peer = Peer::sandbox().await;
    let t = &peer.target;
    let SshAuth::KeyFile { path: key } = &t.auth else {
        unreachable!()
    };
    // tokio's process API: the sandbox host runs on this test's runtime.
    let out = tokio::process::Command::new("ssh")
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", t.known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-p",
        ])
        .arg(t.port.to_string())
        .arg("yugabyte@127.0.0.1")
        // One command: the sandbox host has no shell (no `;`, pipes or quoting).
        .arg(format!("systemctl is-active {UNIT}"))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("ssh (package openssh-client) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "active\n");
}

/// A restarted sandbox keeps its keys: the same `known_hosts` and client key still work.
#[tokio::test]
async fn sandbox_keeps_its_keys_across_restarts() {
    let mut peer = Peer::sandbox().await;
    let key_before = peer.host_key();
    let client_before = std::fs::read_to_string(peer.dir().join("id_ed25519")).unwrap();
    peer.stop().await;
    let Host::Sandbox { dir, sandbox } = &mut peer.host else {
        unreachable!()
    };
    *sandbox = Some(
        Sandbox::start(dir.path(), &waymark_sandbox::Spec::default().faster(10))
            .await
            .unwrap(),
    );
    assert_eq!(peer.host_key(), key_before);
    assert_eq!(
        std::fs::read_to_string(peer.dir().join("id_ed25519")).unwrap(),
        client_before
    );
    let out = RunCommand
        .run(
            activity_ctx(),
            run_input(&peer.target, "systemctl is-active yb-tserver"),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, 0);
}
