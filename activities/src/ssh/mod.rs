//! SSH: run commands on hosts (russh client) with strict host-key checking against an OpenSSH
//! `known_hosts` file, and the systemd activities built on it.
//!
//! - [`run`] / [`SshSession`] (`session.rs`): connect (TCP, handshake, host key, public-key auth by key file or
//!   ssh-agent), run a command, collect stdout, stderr and the exit status. Activity `ssh.run`.
//! - [`SystemdShow`] (`ssh.systemd_show`, `systemd.rs`): `systemctl show` of a unit, parsed into [`UnitState`].
//! - [`SystemdRestart`] (`ssh.systemd_restart`): restart a unit once. systemd gives every start of
//!   a unit a new `InvocationID`; a preceding show step records it durably, and this activity
//!   compares it with the unit's current one before acting: a different id on a running unit means
//!   the restart already happened (an earlier attempt, before a crash), so it is not done again.
//!   The restart is `systemctl restart UNIT --no-block` (no command blocks for the graceful stop);
//!   the unit is then polled with `systemctl show` over the same session until it is `active`
//!   under a new `InvocationID`.
//!
//! Host keys: the server's key must match an entry for `host` (port 22) or `[host]:port` in the
//! target's `known_hosts` (plain or hashed `|1|` entries, read with `russh::keys::known_hosts`).
//! A different key of the same type is a changed host key; no entry is an unknown host. Both are
//! non-retryable, with what to check. With `strict_host_key_checking: false` an unknown host is
//! accepted (and not recorded), but a changed key is still refused.
//!
//! Inputs, outputs and errors carry paths to keys, never key material.
//!
//! Files: `session.rs` (connection, authentication, commands, `ssh.run`), `known_hosts.rs`
//! (host-key checking), `systemd.rs` (`systemctl show`/`restart`); this file holds the types
//! they share: [`Error`], [`SshTarget`], [`CommandOutput`] and [`shell_quote`].

mod known_hosts;
mod session;
mod systemd;

pub use session::{run, RunCommand, RunInput, SshSession};
pub use systemd::{
    parse_unit_state, restart_unit, show_unit, RestartInput, RestartOutput, ShowInput,
    SystemdRestart, SystemdShow, UnitState,
};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use waymark_engine::activity;
use waymark_engine::runtime::EngineBuilder;

/// The most stderr an error message quotes (its tail), in characters.
const STDERR_IN_MESSAGE: usize = 2000;

/// Errors of the SSH activities. Each names SSH, the host as `host:port`, and what to check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens on the port.
    #[error("SSH to {addr}: connection refused; check that sshd runs on the host and listens on port {port}, and that the target's port is right")]
    ConnectionRefused {
        /// `host:port`.
        addr: String,
        /// The port.
        port: u16,
    },
    /// The TCP connection could not be made.
    #[error("SSH to {addr}: cannot connect: {reason}; check the host name, that the host is up and that the network path (firewall, security group) allows port {port}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The port.
        port: u16,
        /// What the OS said.
        reason: String,
    },
    /// Connecting, the handshake or authentication did not finish in time.
    #[error("SSH to {addr}: no answer within {ms} ms while {stage}; check that the host is up and sshd is not overloaded (MaxStartups), or raise connect_timeout_ms")]
    ConnectTimeout {
        /// `host:port`.
        addr: String,
        /// What was going on.
        stage: &'static str,
        /// The limit.
        ms: u64,
    },
    /// The server closed the connection or broke the protocol before a command ran.
    #[error(
        "SSH to {addr}: connection failed while {stage}: {reason}; check sshd's log on the host"
    )]
    Handshake {
        /// `host:port`.
        addr: String,
        /// What was going on.
        stage: &'static str,
        /// What russh said.
        reason: String,
    },
    /// The server and this client share no algorithm, or the server does not speak SSH 2.
    #[error("SSH to {addr}: cannot agree with the server: {reason}; check that the port is an SSH 2 server and that it offers an ed25519, ECDSA or RSA host key")]
    Incompatible {
        /// `host:port`.
        addr: String,
        /// What russh said.
        reason: String,
    },
    /// The server's host key differs from the one recorded for it.
    #[error("SSH to {addr}: the host key has changed: the server presented {presented}, which does not match {known_hosts} line(s) {lines}. Someone may be intercepting the connection, or the host was re-installed. Check with the host's owner; if the new key is right, {fix}")]
    HostKeyChanged {
        /// `host:port`.
        addr: String,
        /// The file.
        known_hosts: String,
        /// Lines of the file that hold a different key of that type.
        lines: String,
        /// The key presented: type and SHA-256 fingerprint.
        presented: String,
        /// The commands that replace the entry.
        fix: String,
    },
    /// No key is recorded for the host.
    #[error("SSH to {addr}: unknown host: {known_hosts} has {note}; the server presented {presented}. Verify the fingerprint with the host's owner, then add it: `{add}`")]
    UnknownHost {
        /// `host:port`.
        addr: String,
        /// The file.
        known_hosts: String,
        /// What the file has for the host.
        note: String,
        /// The key presented: type and SHA-256 fingerprint.
        presented: String,
        /// The command that records the key.
        add: String,
    },
    /// The known-hosts file cannot be read.
    #[error("SSH to {addr}: cannot read known_hosts {known_hosts}: {reason}; check the file (OpenSSH format, `[host]:port keytype base64` lines)")]
    KnownHosts {
        /// `host:port`.
        addr: String,
        /// The file.
        known_hosts: String,
        /// What was wrong.
        reason: String,
    },
    /// The private key file cannot be used.
    #[error("SSH to {addr}: cannot load private key {path}: {reason}; check the path, that the process may read it, and that it is an unencrypted OpenSSH or PEM key (use agent auth for passphrase-protected keys)")]
    KeyFile {
        /// `host:port`.
        addr: String,
        /// The key file.
        path: String,
        /// What was wrong (never the key).
        reason: String,
    },
    /// The ssh-agent cannot be used.
    #[error("SSH to {addr}: ssh-agent: {reason}; check SSH_AUTH_SOCK (or the target's agent socket) and that the agent holds a key (`ssh-add -l`)")]
    Agent {
        /// `host:port`.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// The server refused every key offered.
    #[error("SSH to {addr}: public-key authentication as `{user}` refused ({tried}); check that the public key is in ~{user}/.ssh/authorized_keys on the host")]
    AuthRejected {
        /// `host:port`.
        addr: String,
        /// The user.
        user: String,
        /// What was offered.
        tried: String,
    },
    /// A command did not finish in time.
    #[error("SSH to {addr}: `{command}` did not finish within {ms} ms; it may still be running on the host; check the host's load, or raise command_timeout_ms")]
    CommandTimeout {
        /// `host:port`.
        addr: String,
        /// The command.
        command: String,
        /// The limit.
        ms: u64,
    },
    /// The connection ended before the command reported its exit status.
    #[error("SSH to {addr}: the connection ended before `{command}` reported an exit status ({reason}); the command may or may not have run; check sshd and the network on the host")]
    ConnectionLost {
        /// `host:port`.
        addr: String,
        /// The command.
        command: String,
        /// What russh said.
        reason: String,
    },
    /// The server would not run the command.
    #[error("SSH to {addr}: the server refused to run `{command}`; check the account's restrictions (ForceCommand, authorized_keys options)")]
    ExecRefused {
        /// `host:port`.
        addr: String,
        /// The command.
        command: String,
    },
    /// The command ran and exited with a non-zero status.
    #[error("SSH to {addr}: `{command}` exited with status {exit_status}{signal}: {stderr}")]
    CommandFailed {
        /// `host:port`.
        addr: String,
        /// The command.
        command: String,
        /// Its exit status.
        exit_status: u32,
        /// `, killed by signal X` or empty.
        signal: String,
        /// The tail of its stderr (or `(no output on stderr)`).
        stderr: String,
        /// Whether the caller said another attempt may help.
        retryable: bool,
    },
    /// A command printed something this module cannot read.
    #[error("SSH to {addr}: `{command}` printed unexpected output: {detail}")]
    UnexpectedOutput {
        /// `host:port`.
        addr: String,
        /// The command.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// The unit does not exist on the host.
    #[error("SSH to {addr}: systemd unit `{unit}` not found on the host (LoadState={load_state}); check the unit name")]
    UnitNotFound {
        /// `host:port`.
        addr: String,
        /// The unit.
        unit: String,
        /// What systemd said.
        load_state: String,
    },
    /// The restarted unit did not become active by the wait's deadline (final: another attempt
    /// would only wait again).
    #[error("SSH to {addr}: systemd unit `{unit}` not active under a new InvocationID by its deadline {deadline} ({secs} s after the restart step was first scheduled; final, not retried); last `systemctl show`: {last}; check `journalctl -u {unit}` on the host")]
    UnitNotActive {
        /// `host:port`.
        addr: String,
        /// The unit.
        unit: String,
        /// The wait's timeout.
        secs: u64,
        /// When the deadline passed (RFC 3339).
        deadline: String,
        /// The last state seen.
        last: String,
    },
    /// The input is not acceptable.
    #[error("SSH: {0}")]
    InvalidInput(String),
    /// The run was cancelled while waiting.
    #[error("SSH to {addr}: cancelled while {what}")]
    Cancelled {
        /// `host:port`.
        addr: String,
        /// What was awaited.
        what: String,
    },
}

impl Error {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::ConnectionRefused { .. }
            | Error::Unreachable { .. }
            | Error::ConnectTimeout { .. }
            | Error::Handshake { .. }
            | Error::CommandTimeout { .. }
            | Error::ConnectionLost { .. } => true,
            Error::CommandFailed { retryable, .. } => *retryable,
            Error::Incompatible { .. }
            | Error::HostKeyChanged { .. }
            | Error::UnknownHost { .. }
            | Error::KnownHosts { .. }
            | Error::KeyFile { .. }
            | Error::Agent { .. }
            | Error::AuthRejected { .. }
            | Error::ExecRefused { .. }
            | Error::UnexpectedOutput { .. }
            | Error::UnitNotFound { .. }
            | Error::UnitNotActive { .. }
            | Error::InvalidInput(_)
            | Error::Cancelled { .. } => false,
        }
    }
}

impl From<Error> for activity::Error {
    fn from(e: Error) -> Self {
        activity::Error {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

/// How to authenticate. Only where the key is: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum SshAuth {
    /// An unencrypted private key file (OpenSSH or PEM format).
    KeyFile {
        /// Path of the private key.
        path: PathBuf,
    },
    /// Every key an ssh-agent holds, in its order.
    Agent {
        /// The agent's socket; `None`: `SSH_AUTH_SOCK`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        socket: Option<PathBuf>,
    },
}

fn default_port() -> u16 {
    22
}
fn default_true() -> bool {
    true
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_command_timeout_ms() -> u64 {
    60_000
}

/// A host to run commands on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshTarget {
    /// Host name or address.
    pub host: String,
    /// Port (default 22).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Login user.
    pub user: String,
    /// How to authenticate.
    pub auth: SshAuth,
    /// OpenSSH `known_hosts` file holding the host's key.
    pub known_hosts: PathBuf,
    /// Refuse hosts without a `known_hosts` entry (default true). A changed key is refused either way.
    #[serde(default = "default_true")]
    pub strict_host_key_checking: bool,
    /// Limit for TCP connect, handshake and authentication, ms (default 10,000).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Limit for one command, ms (default 60,000).
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
}

impl SshTarget {
    /// A target with the default port, strict host-key checking and timeouts.
    pub fn new(
        host: impl Into<String>,
        user: impl Into<String>,
        auth: SshAuth,
        known_hosts: impl Into<PathBuf>,
    ) -> Self {
        SshTarget {
            host: host.into(),
            port: default_port(),
            user: user.into(),
            auth,
            known_hosts: known_hosts.into(),
            strict_host_key_checking: true,
            connect_timeout_ms: default_connect_timeout_ms(),
            command_timeout_ms: default_command_timeout_ms(),
        }
    }

    /// The same target on another port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// `host:port` (`[v6]:port` for IPv6 addresses).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// How `known_hosts` names this host: `host` on port 22, `[host]:port` otherwise.
    pub fn known_hosts_pattern(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

/// What a command printed and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutput {
    /// Exit status (255 when the command was killed by a signal, as `ssh` reports it).
    pub exit_status: u32,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// The signal that killed the command, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<String>,
}

fn tail(text: &str, max_chars: usize) -> String {
    let text = text.trim_end();
    let count = text.chars().count();
    if count <= max_chars {
        return text.to_owned();
    }
    let start = text
        .char_indices()
        .nth(count - max_chars)
        .map_or(0, |(i, _)| i);
    format!("...{}", &text[start..])
}

impl CommandOutput {
    /// `Ok(self)` on exit status 0, else [`Error::CommandFailed`] quoting stderr.
    pub fn check(
        self,
        target: &SshTarget,
        command: &str,
        retryable: bool,
    ) -> Result<CommandOutput, Error> {
        if self.exit_status == 0 && self.exit_signal.is_none() {
            return Ok(self);
        }
        let stderr = if self.stderr.trim().is_empty() {
            "(no output on stderr)".to_owned()
        } else {
            tail(&self.stderr, STDERR_IN_MESSAGE)
        };
        Err(Error::CommandFailed {
            addr: target.addr(),
            command: command.to_owned(),
            exit_status: self.exit_status,
            signal: self
                .exit_signal
                .as_ref()
                .map(|s| format!(", killed by signal {s}"))
                .unwrap_or_default(),
            stderr,
            retryable,
        })
    }
}

/// Quotes `value` as one word of a POSIX shell command line (remote commands run through the
/// login shell of the SSH user). A value made only of `[A-Za-z0-9_@+:,./-]` means itself to
/// every shell and is returned as is (so plain unit names and paths read naturally in logs);
/// any other value, the empty string included, is wrapped in single quotes, each `'` written
/// `'\''`. Inside single quotes no character is special (`$`, backticks, `;`, newlines, spaces).
/// Every value interpolated into a remote command goes through this one function.
pub fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@+:,./-".contains(&b));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}
/// Registers `ssh.run`, `ssh.systemd_show` and `ssh.systemd_restart`.
pub fn register(b: EngineBuilder) -> EngineBuilder {
    b.activity(RunCommand)
        .activity(SystemdShow)
        .activity(SystemdRestart)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue 8, item 3: every hostile value comes back as one single-quoted word that a POSIX
    /// shell reads back as exactly the value (checked here by a small model of sh's quoting, and
    /// against a real shell in `tests/tests/ssh.rs`).
    #[test]
    fn shell_quote_makes_hostile_values_one_literal_word() {
        assert_eq!(shell_quote("yb-tserver.service"), "yb-tserver.service");
        assert_eq!(
            shell_quote("/home/yugabyte/bin/yb-admin"),
            "/home/yugabyte/bin/yb-admin"
        );
        assert_eq!(shell_quote("h1:7100,h2:7100"), "h1:7100,h2:7100");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        for hostile in [
            "$(curl${IFS}x|sh):7100",
            "`reboot`",
            "a;reboot",
            "a && reboot",
            "a | sh",
            "line1\nline2",
            "a b",
            "'",
            "''",
            "\"$(id)\"",
            "\\",
            "~root",
            "*",
            "x=1",
            "#comment",
            "a\tb",
            "getty@tty1\\x2d.service",
        ] {
            let quoted = shell_quote(hostile);
            assert!(
                quoted.starts_with('\'') && quoted.ends_with('\''),
                "{hostile:?} -> {quoted}"
            );
            assert_eq!(sh_single_word(&quoted), hostile, "{quoted}");
        }
    }

    /// How sh reads a word made of single-quoted parts and `\'` (the only forms `shell_quote`
    /// writes): panics on anything else, so an unquoted special character fails the test.
    fn sh_single_word(word: &str) -> String {
        let mut out = String::new();
        let mut chars = word.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    for q in chars.by_ref() {
                        if q == '\'' {
                            break;
                        }
                        out.push(q);
                    }
                }
                '\\' => out.push(chars.next().expect("escaped character")),
                c if c.is_ascii_alphanumeric() || "_@+:,./-".contains(c) => out.push(c),
                c => panic!("unquoted {c:?} in {word}"),
            }
        }
        out
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("abc\n", 5), "abc");
        assert_eq!(tail("abcdef", 3), "...def");
        assert_eq!(tail("ééééé", 2), "...éé");
    }
}
