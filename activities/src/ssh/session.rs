//! An authenticated SSH connection (russh client): TCP, handshake, host-key check, public-key
//! authentication by key file or ssh-agent; commands run on it; the activity `ssh.run`.

use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use serde::{Deserialize, Serialize};
use waymark_engine::activity::{self, Activity, Context};

use super::known_hosts::{known_keys, KnownKeys};
use super::{CommandOutput, Error, SshAuth, SshTarget};

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
