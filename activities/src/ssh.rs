//! SSH: run commands on hosts (russh client) with strict host-key checking against an OpenSSH
//! `known_hosts` file, and the systemd activities built on it.
//!
//! - [`run`] / [`SshSession`]: connect (TCP, handshake, host key, public-key auth by key file or
//!   ssh-agent), run a command, collect stdout, stderr and the exit status. Activity `ssh.run`.
//! - [`SystemdShow`] (`ssh.systemd_show`): `systemctl show` of a unit, parsed into [`UnitState`].
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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use serde::{Deserialize, Serialize};
use waymark_engine::activity::{self, Activity, Context};
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
    /// The restarted unit did not become active in time.
    #[error("SSH to {addr}: systemd unit `{unit}` not active under a new InvocationID {ms} ms after the restart (last `systemctl show`: {last}); check `journalctl -u {unit}` on the host")]
    UnitNotActive {
        /// `host:port`.
        addr: String,
        /// The unit.
        unit: String,
        /// The limit.
        ms: u64,
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
            | Error::ConnectionLost { .. }
            | Error::UnitNotActive { .. } => true,
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

/// Keys `known_hosts` records for one host, with their line numbers.
struct KnownKeys {
    entries: Vec<(usize, PublicKey)>,
    file_exists: bool,
}

fn same_key_type(a: &PublicKey, b: &PublicKey) -> bool {
    let (a, b) = (a.algorithm(), b.algorithm());
    a == b || (a.is_rsa() && b.is_rsa())
}

/// Reads the entries of `path` for `host`/`port` (plain or hashed names).
fn known_keys(target: &SshTarget) -> Result<KnownKeys, Error> {
    let path = &target.known_hosts;
    let unreadable = |reason: String| Error::KnownHosts {
        addr: target.addr(),
        known_hosts: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(KnownKeys {
                entries: Vec::new(),
                file_exists: false,
            })
        }
        Err(e) => return Err(unreadable(e.to_string())),
    };
    let entries = russh::keys::known_hosts::known_host_keys_path(&target.host, target.port, path)
        .map_err(|e| {
        unreadable(format!(
            "an entry for `{}` does not parse: {e}",
            target.known_hosts_pattern()
        ))
    })?;
    // russh counts lines skipping those that start with `#`; map its numbers to the file's lines.
    let physical: Vec<usize> = text
        .split_inclusive('\n')
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#'))
        .map(|(i, _)| i + 1)
        .collect();
    let entries = entries
        .into_iter()
        .map(|(n, k)| (physical.get(n.wrapping_sub(1)).copied().unwrap_or(n), k))
        .collect();
    Ok(KnownKeys {
        entries,
        file_exists: true,
    })
}

impl KnownKeys {
    /// The host-key algorithms to ask for: types already known for this host first (as OpenSSH
    /// does), so that a host with several keys presents the one we can check.
    fn preferred_algorithms(&self) -> Vec<russh::keys::Algorithm> {
        let all = russh::Preferred::DEFAULT.key.to_vec();
        let known = |a: &russh::keys::Algorithm| {
            self.entries
                .iter()
                .any(|(_, k)| &k.algorithm() == a || (a.clone().is_rsa() && k.algorithm().is_rsa()))
        };
        let (mut first, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(known);
        first.extend(rest);
        first
    }

    /// Checks the key the server presented.
    fn verify(&self, target: &SshTarget, key: &PublicKey) -> Result<(), Error> {
        if self
            .entries
            .iter()
            .any(|(_, k)| k.key_data() == key.key_data())
        {
            return Ok(());
        }
        let presented = format!(
            "{} key {}",
            key.algorithm().as_str(),
            key.fingerprint(HashAlg::Sha256)
        );
        let pattern = target.known_hosts_pattern();
        let known_hosts = target.known_hosts.display().to_string();
        let add = format!(
            "ssh-keyscan -p {} {} >> {known_hosts}",
            target.port, target.host
        );
        let changed: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, k)| same_key_type(k, key))
            .map(|(line, _)| line.to_string())
            .collect();
        if !changed.is_empty() {
            return Err(Error::HostKeyChanged {
                addr: target.addr(),
                lines: changed.join(", "),
                presented,
                fix: format!("remove the old entry (`ssh-keygen -R '{pattern}' -f {known_hosts}`) and add the new one (`{add}`)"),
                known_hosts,
            });
        }
        if !target.strict_host_key_checking {
            tracing::warn!(
                "SSH to {}: accepting unknown host key ({presented}) because strict_host_key_checking is off",
                target.addr()
            );
            return Ok(());
        }
        let note = if !self.file_exists {
            format!("no entry for `{pattern}` (the file does not exist)")
        } else if self.entries.is_empty() {
            format!("no entry for `{pattern}`")
        } else {
            let others: Vec<String> = self
                .entries
                .iter()
                .map(|(line, k)| format!("{} on line {line}", k.algorithm().as_str()))
                .collect();
            format!(
                "no {} key for `{pattern}` (only {})",
                key.algorithm().as_str(),
                others.join(", ")
            )
        };
        Err(Error::UnknownHost {
            addr: target.addr(),
            known_hosts,
            note,
            presented,
            add,
        })
    }
}

/// Why the handshake failed: russh's error, or our host-key verdict.
#[derive(Debug)]
enum HandshakeFailure {
    Ssh(russh::Error),
    HostKey(Error),
}

impl From<russh::Error> for HandshakeFailure {
    fn from(e: russh::Error) -> Self {
        HandshakeFailure::Ssh(e)
    }
}

/// The russh client handler: checks the host key.
struct HostKeyCheck {
    target: SshTarget,
    known: Arc<KnownKeys>,
}

impl client::Handler for HostKeyCheck {
    type Error = HandshakeFailure;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, HandshakeFailure> {
        match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                self.known.verify(&self.target, key).map_err(HandshakeFailure::HostKey)?;
                Ok(true)
            }
            PublicKeyOrCertificate::Certificate(_) => Err(HandshakeFailure::HostKey(Error::InvalidInput(format!(
                "{}: the server presented a host certificate; certificate authorities are not supported, record the host's plain key in {}",
                self.target.addr(),
                self.target.known_hosts.display()
            )))),
        }
    }
}

/// An authenticated SSH connection; each [`SshSession::exec`] opens a channel on it.
pub struct SshSession {
    handle: client::Handle<HostKeyCheck>,
    target: SshTarget,
}

impl SshSession {
    /// Connects, checks the host key and authenticates, within `connect_timeout_ms`.
    pub async fn connect(target: &SshTarget) -> Result<SshSession, Error> {
        let limit = Duration::from_millis(target.connect_timeout_ms.max(1));
        let stage = std::sync::Mutex::new("connecting (TCP)");
        let attempt = Self::connect_stages(target, &stage);
        match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Error::ConnectTimeout {
                addr: target.addr(),
                stage: *stage.lock().expect("stage lock"),
                ms: target.connect_timeout_ms,
            }),
        }
    }

    async fn connect_stages(
        target: &SshTarget,
        stage: &std::sync::Mutex<&'static str>,
    ) -> Result<SshSession, Error> {
        let set_stage = |s: &'static str| *stage.lock().expect("stage lock") = s;
        let addr = target.addr();
        let known = Arc::new(known_keys(target)?);
        let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    Error::ConnectionRefused {
                        addr: addr.clone(),
                        port: target.port,
                    }
                } else {
                    Error::Unreachable {
                        addr: addr.clone(),
                        port: target.port,
                        reason: e.to_string(),
                    }
                }
            })?;
        let _ = stream.set_nodelay(true);
        set_stage("waiting for the SSH handshake");
        let config = client::Config {
            preferred: russh::Preferred {
                key: known.preferred_algorithms().into(),
                ..russh::Preferred::default()
            },
            ..client::Config::default()
        };
        let handler = HostKeyCheck {
            target: target.clone(),
            known,
        };
        let mut handle = client::connect_stream(Arc::new(config), stream, handler)
            .await
            .map_err(|e| match e {
                HandshakeFailure::HostKey(e) => e,
                HandshakeFailure::Ssh(
                    e @ (russh::Error::NoCommonAlgo { .. }
                    | russh::Error::UnknownAlgo
                    | russh::Error::Version),
                ) => Error::Incompatible {
                    addr: addr.clone(),
                    reason: e.to_string(),
                },
                HandshakeFailure::Ssh(e) => Error::Handshake {
                    addr: addr.clone(),
                    stage: "exchanging keys",
                    reason: describe_russh(&e),
                },
            })?;
        set_stage("authenticating");
        authenticate(&mut handle, target).await?;
        Ok(SshSession {
            handle,
            target: target.clone(),
        })
    }

    /// The target this session is connected to.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Runs `command` (through the login shell) and collects its output, within
    /// `command_timeout_ms`. A non-zero exit status is not an error here (see
    /// [`CommandOutput::check`]).
    pub async fn exec(&self, command: &str) -> Result<CommandOutput, Error> {
        let addr = self.target.addr();
        let lost = |reason: String| Error::ConnectionLost {
            addr: addr.clone(),
            command: command.to_owned(),
            reason,
        };
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| lost(format!("opening a channel: {}", describe_russh(&e))))?;
        let limit = Duration::from_millis(self.target.command_timeout_ms.max(1));
        let run = async {
            channel
                .exec(true, command)
                .await
                .map_err(|e| lost(format!("sending the command: {}", describe_russh(&e))))?;
            // The command reads no input: give it end-of-file at once, as `ssh host cmd </dev/null`.
            let _ = channel.eof().await;
            collect(&mut channel).await.map_err(|e| match e {
                Collected::Refused => Error::ExecRefused {
                    addr: addr.clone(),
                    command: command.to_owned(),
                },
                Collected::Lost(reason) => lost(reason),
            })
        };
        let result = tokio::time::timeout(limit, run).await;
        if let Ok(r) = result {
            return r;
        }
        let _ = channel.close().await;
        Err(Error::CommandTimeout {
            addr: addr.clone(),
            command: command.to_owned(),
            ms: self.target.command_timeout_ms,
        })
    }

    /// Says goodbye to the server.
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

enum Collected {
    Refused,
    Lost(String),
}

async fn collect(channel: &mut russh::Channel<client::Msg>) -> Result<CommandOutput, Collected> {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut exit_status = None;
    let mut exit_signal = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status: s } => exit_status = Some(s),
            ChannelMsg::ExitSignal {
                signal_name,
                error_message,
                ..
            } => {
                let name = match signal_name {
                    russh::Sig::Custom(name) => name,
                    other => format!("{other:?}"),
                };
                exit_signal = Some(if error_message.is_empty() {
                    name
                } else {
                    format!("{name} ({error_message})")
                });
            }
            ChannelMsg::Failure => return Err(Collected::Refused),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let exit_status = match (exit_status, &exit_signal) {
        (Some(s), _) => s,
        (None, Some(_)) => 255,
        (None, None) => {
            return Err(Collected::Lost(if stdout.is_empty() && stderr.is_empty() {
                "the channel closed with no output and no exit status".into()
            } else {
                "the channel closed after some output but no exit status".into()
            }))
        }
    };
    Ok(CommandOutput {
        exit_status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        exit_signal,
    })
}

/// russh's error in words (russh's own messages hold no key material).
fn describe_russh(e: &russh::Error) -> String {
    match e {
        russh::Error::Disconnect | russh::Error::HUP => "the server closed the connection".into(),
        russh::Error::IO(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the server closed the connection".into()
        }
        other => other.to_string(),
    }
}

async fn authenticate(
    handle: &mut client::Handle<HostKeyCheck>,
    target: &SshTarget,
) -> Result<(), Error> {
    let addr = target.addr();
    let lost = |e: &russh::Error| Error::Handshake {
        addr: addr.clone(),
        stage: "authenticating",
        reason: describe_russh(e),
    };
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    match &target.auth {
        SshAuth::KeyFile { path } => {
            let key = russh::keys::load_secret_key(path, None).map_err(|e| Error::KeyFile {
                addr: addr.clone(),
                path: path.display().to_string(),
                reason: describe_key_error(&e),
            })?;
            let hash = if key.algorithm().is_rsa() {
                rsa_hash
            } else {
                None
            };
            let result = handle
                .authenticate_publickey(
                    &target.user,
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(|e| lost(&e))?;
            match result {
                AuthResult::Success => Ok(()),
                AuthResult::Failure { .. } => Err(Error::AuthRejected {
                    addr: addr.clone(),
                    user: target.user.clone(),
                    tried: format!("key file {}", path.display()),
                }),
            }
        }
        SshAuth::Agent { socket } => {
            let agent_error = |reason: String| Error::Agent {
                addr: addr.clone(),
                reason,
            };
            let mut agent = match socket {
                Some(p) => AgentClient::connect_uds(p).await,
                None => AgentClient::connect_env().await,
            }
            .map_err(|e| agent_error(format!("cannot connect: {e}")))?;
            let identities = agent
                .request_identities()
                .await
                .map_err(|e| agent_error(format!("cannot list keys: {e}")))?;
            let mut tried = Vec::new();
            for identity in identities {
                let AgentIdentity::PublicKey { key, .. } = identity else {
                    continue;
                };
                let hash = if key.algorithm().is_rsa() {
                    rsa_hash
                } else {
                    None
                };
                tried.push(key.fingerprint(HashAlg::Sha256).to_string());
                match handle
                    .authenticate_publickey_with(&target.user, key, hash, &mut agent)
                    .await
                {
                    Ok(AuthResult::Success) => return Ok(()),
                    Ok(AuthResult::Failure { .. }) => {}
                    Err(e) => tracing::debug!("SSH to {addr}: the agent could not sign: {e}"),
                }
            }
            if tried.is_empty() {
                return Err(agent_error("the agent holds no keys".into()));
            }
            Err(Error::AuthRejected {
                addr: addr.clone(),
                user: target.user.clone(),
                tried: format!("agent keys {}", tried.join(", ")),
            })
        }
    }
}

fn describe_key_error(e: &russh::keys::Error) -> String {
    match e {
        russh::keys::Error::KeyIsEncrypted => "the key is protected by a passphrase".into(),
        russh::keys::Error::IO(io) => io.to_string(),
        russh::keys::Error::UnsupportedKeyType {
            key_type_string, ..
        } => format!("unsupported key type {key_type_string}"),
        // Other messages could quote parts of the file: say only what it is not.
        _ => "not a private key russh can read".into(),
    }
}

/// Connects, runs `command`, disconnects. A non-zero exit status is returned, not an error.
pub async fn run(target: &SshTarget, command: &str) -> Result<CommandOutput, Error> {
    let session = SshSession::connect(target).await?;
    let out = session.exec(command).await;
    session.close().await;
    out
}

/// Input of `ssh.run`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInput {
    /// Where.
    pub target: SshTarget,
    /// The command line (run by the user's login shell).
    pub command: String,
    /// A non-zero exit status is retryable (default: not).
    #[serde(default)]
    pub retry_on_failure: bool,
}

/// `ssh.run`: runs a command; a non-zero exit status fails the step (non-retryable unless
/// `retry_on_failure`) with the status and stderr in the message. Not idempotent by itself: run
/// only commands that are, or check before acting.
pub struct RunCommand;

impl Activity for RunCommand {
    const NAME: &'static str = "ssh.run";
    type Input = RunInput;
    type Output = CommandOutput;

    async fn run(&self, _ctx: Context, input: RunInput) -> Result<CommandOutput, activity::Error> {
        let out = run(&input.target, &input.command).await?;
        Ok(out.check(&input.target, &input.command, input.retry_on_failure)?)
    }
}

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

fn default_active_timeout_ms() -> u64 {
    120_000
}
fn default_poll_interval_ms() -> u64 {
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
    /// How long the unit may take to be `active` again, ms (default 120,000).
    #[serde(default = "default_active_timeout_ms")]
    pub active_timeout_ms: u64,
    /// Pause between `systemctl show` polls, ms (default 1,000).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
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
/// even began: `is-active` alone could still see the old run).
async fn wait_active(
    ctx: &Context,
    session: &SshSession,
    unit: &str,
    input: &RestartInput,
) -> Result<(), Error> {
    let target = session.target();
    let start = tokio::time::Instant::now();
    let limit = Duration::from_millis(input.active_timeout_ms);
    loop {
        let state = show_unit(session, unit, input.use_sudo).await?;
        let new_run =
            !state.invocation_id.is_empty() && state.invocation_id != input.expected_invocation_id;
        let mut progress = format!(
            "{unit} on {}: {} (InvocationID {})",
            target.host,
            if state.active_state.is_empty() {
                "(no answer)"
            } else {
                &state.active_state
            },
            if state.invocation_id.is_empty() {
                "none"
            } else {
                &state.invocation_id
            }
        );
        if new_run && state.active_state == "active" {
            ctx.heartbeat(Some(progress));
            return Ok(());
        }
        if start.elapsed() >= limit {
            return Err(Error::UnitNotActive {
                addr: target.addr(),
                unit: unit.to_owned(),
                ms: input.active_timeout_ms,
                last: format!(
                    "{}{}",
                    state.active_state,
                    if new_run {
                        ""
                    } else {
                        ", still the recorded InvocationID"
                    }
                ),
            });
        }
        let _ = write!(progress, ", waiting {} ms", start.elapsed().as_millis());
        ctx.heartbeat(Some(progress));
        if !ctx
            .sleep(Duration::from_millis(input.poll_interval_ms.max(10)))
            .await
        {
            return Err(Error::Cancelled {
                addr: target.addr(),
                what: format!("waiting for {unit} to be active"),
            });
        }
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

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("abc\n", 5), "abc");
        assert_eq!(tail("abcdef", 3), "...def");
        assert_eq!(tail("ééééé", 2), "...éé");
    }
}
