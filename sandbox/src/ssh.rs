//! SSH hosts: a russh server per node that runs commands through [`crate::yb::exec_nowait`] (the
//! `systemctl` / `yb-admin` / `yb-ts-cli` the cluster model understands, split with POSIX shell
//! quoting), so the real SSH activities run unchanged against the sandbox. A command answers only
//! once it would have finished (a blocking `systemctl restart` after the graceful stop).
//!
//! - Keys: [`HostKeys::load_or_create`] keeps one ed25519 host key (`DIR/ssh_host_ed25519_key`,
//!   shared by every node) and one client key (`DIR/id_ed25519`, `DIR/id_ed25519.pub`), both in
//!   OpenSSH format, so `ssh -i DIR/id_ed25519 -o UserKnownHostsFile=DIR/known_hosts -p PORT
//!   any@127.0.0.1 systemctl show yb-master` works too. [`HostKeys::write_known_hosts`] writes
//!   `DIR/known_hosts` with a `[127.0.0.1]:PORT ssh-ed25519 ...` line per node.
//! - Authentication: public key only, exactly the client key (any user name).
//! - Faults (`system: "ssh"`, and `"yb-admin"` for the `yb-admin` / `yb-ts-cli` commands):
//!   checked once per connection with the node name as the request (only the kinds a connection
//!   can show, and a rule the node name alone matches with such a kind is the connection's, not
//!   looked at again per command: `Refused` resets it, `Drop` and `Throttle` close it before the banner, `Timeout`
//!   keeps it silent, `Delay` answers later, an `Exit` applies to its first command), and once
//!   per command with `NODE COMMAND`: `Refused`/`Drop` disconnect before it runs, `Timeout`
//!   never answers, `Exit`/`Status` fail it, `WrongAnswer` exits 0 with output that is not the
//!   command's, `Delay` runs it later, `Cut` runs it and disconnects before its answer; an
//!   `ssh` `Throttle` disconnects, a `yb-admin` one fails with the RPC layer's `Service
//!   unavailable`.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{self, Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::TcpListener;

use crate::estate::{Fault, FaultKind, Shared};
use crate::yb::{self, ExecOutput};

/// The sandbox's SSH host key and the client key it authorises.
#[derive(Clone)]
pub struct HostKeys {
    host: Arc<PrivateKey>,
    client: PublicKey,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{}: {what}", path.display()))
}

/// Loads the OpenSSH private key at `path`, or creates a new ed25519 key there (mode 0600): from
/// `seed` when given (the same seed, the same key), else from the OS.
fn load_or_generate(
    path: &Path,
    comment: &str,
    seed: Option<[u8; 32]>,
) -> std::io::Result<PrivateKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return PrivateKey::from_openssh(text.trim())
                .map_err(|e| invalid(path, format!("not an OpenSSH private key: {e}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(invalid(path, e)),
    }
    let seed = if let Some(seed) = seed {
        seed
    } else {
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
        seed
    };
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let tmp = path.with_extension("tmp");
    key.write_openssh_file(&tmp, LineEnding::LF)
        .map_err(|e| invalid(&tmp, e))?;
    std::fs::rename(&tmp, path)?;
    Ok(key)
}

/// `ALGORITHM BASE64` without a comment.
fn openssh_public(key: &PublicKey) -> std::io::Result<String> {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh().map_err(std::io::Error::other)
}

impl HostKeys {
    /// Loads `DIR/ssh_host_ed25519_key` and `DIR/id_ed25519`, creating them if missing (from
    /// `seed` when given), and (re)writes `DIR/id_ed25519.pub`.
    pub fn load_or_create(dir: &Path, seed: Option<u64>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key_seed = |which: u8| {
            seed.map(|s| {
                let mut bytes = [which; 32];
                bytes[..8].copy_from_slice(&s.to_le_bytes());
                bytes
            })
        };
        let host = load_or_generate(
            &dir.join("ssh_host_ed25519_key"),
            "waymark-sandbox host",
            key_seed(1),
        )?;
        let client = load_or_generate(
            &dir.join("id_ed25519"),
            "waymark-sandbox client",
            key_seed(2),
        )?;
        let client = client.public_key().clone();
        std::fs::write(
            dir.join("id_ed25519.pub"),
            format!("{} waymark-sandbox client\n", openssh_public(&client)?),
        )?;
        Ok(HostKeys {
            host: Arc::new(host),
            client,
        })
    }

    /// The host's public key (`ssh-ed25519 AAAA...`).
    pub fn host_public_key(&self) -> std::io::Result<String> {
        openssh_public(self.host.public_key())
    }

    /// Writes `DIR/known_hosts` with a `[127.0.0.1]:PORT key` line per address.
    pub fn write_known_hosts<'a>(
        &self,
        dir: &Path,
        addrs: impl Iterator<Item = &'a SocketAddr>,
    ) -> std::io::Result<()> {
        let key = self.host_public_key()?;
        let mut text = String::new();
        for a in addrs {
            let _ = writeln!(text, "[{}]:{} {key}", a.ip(), a.port());
        }
        let tmp = dir.join("known_hosts.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, dir.join("known_hosts"))
    }
}

/// Serves SSH for `node`: commands run through [`crate::yb::exec`].
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, node: String, keys: HostKeys) {
    let config = Arc::new(server::Config {
        keys: vec![(*keys.host).clone()],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(20),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(600)),
        nodelay: true,
        // The key exchange the client prefers first (hybrid ML-KEM) costs a simulated run a tenth
        // of its time (a session per SSH activity call): the sandbox's sshd offers curve25519 and
        // the older names, as many real ones do, and the client's defaults take it. The client's
        // preferences and its host-key check are the production ones, untouched.
        preferred: russh::Preferred {
            kex: russh::Preferred::DEFAULT
                .kex
                .iter()
                .filter(|k| **k != russh::kex::MLKEM768X25519_SHA256)
                .copied()
                .collect::<Vec<_>>()
                .into(),
            ..russh::Preferred::default()
        },
        ..server::Config::default()
    });
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                tracing::warn!("sandbox SSH {node}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut connection = Connection {
            shared: shared.clone(),
            node: node.clone(),
            client: keys.client.clone(),
            pending_exit: None,
        };
        let config = config.clone();
        tokio::spawn(async move {
            let node = connection.node.clone();
            match connection
                .shared
                .fault_for_rules("ssh", &node, |r| at_connect(&r.kind))
            {
                Some(FaultKind::Refused) => {
                    let _ = socket.set_zero_linger();
                    return;
                }
                // sshd's `MaxStartups`: closed right after it was accepted, no banner.
                Some(FaultKind::Drop | FaultKind::Throttle) => return,
                Some(FaultKind::Timeout) => {
                    // Accepted, then silent: the client's own timeout ends it.
                    let _silent = &socket;
                    std::future::pending::<()>().await;
                }
                Some(FaultKind::Delay(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Some(FaultKind::Exit(code, stderr)) => {
                    connection.pending_exit = Some((code, stderr));
                }
                _ => {}
            }
            let _ = socket.set_nodelay(true);
            match server::run_stream(config, socket, connection).await {
                Ok(session) => {
                    if let Err(e) = session.await {
                        tracing::debug!("sandbox SSH {node}: connection ended: {e}");
                    }
                }
                Err(e) => tracing::debug!("sandbox SSH {node}: handshake failed: {e}"),
            }
        });
    }
}

/// The fault kinds a connection shows (matched at connect, with the node name as the request).
fn at_connect(kind: &FaultKind) -> bool {
    matches!(
        kind,
        FaultKind::Refused
            | FaultKind::Drop
            | FaultKind::Throttle
            | FaultKind::Timeout
            | FaultKind::Delay(_)
            | FaultKind::Exit(..)
    )
}

/// Whether a command line runs `yb-admin` or `yb-ts-cli` (behind `sudo`, by path or not): the
/// commands faults of system `yb-admin` apply to.
fn yb_tool(command: &str) -> bool {
    let words = yb::shell_words(command).unwrap_or_default();
    let program = words
        .iter()
        .find(|w| *w != "sudo" && !w.starts_with('-'))
        .map_or("", |w| w.rsplit('/').next().unwrap_or(w));
    program == "yb-admin" || program == "yb-ts-cli"
}

/// One client connection.
struct Connection {
    shared: Arc<Shared>,
    node: String,
    client: PublicKey,
    /// An `Exit` fault matched when the connection was made, for its first command.
    pending_exit: Option<(u32, String)>,
}

impl Connection {
    /// Runs a command, answering only once it would have finished (a blocking `systemctl
    /// restart` answers after the graceful stop).
    async fn run(&self, command: &str) -> ExecOutput {
        let (out, block_ms) = yb::exec_nowait(&self.shared, &self.node, command);
        if block_ms > 0 {
            tokio::time::sleep(Duration::from_millis(block_ms)).await;
        }
        out
    }

    fn verdict(&self, key: &PublicKey) -> Auth {
        if key.key_data() == self.client.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        }
    }
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, russh::Error> {
        Ok(self.verdict(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, russh::Error> {
        Ok(self.verdict(key.public_key))
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), russh::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        let out = if let Some((exit, stderr)) = self.pending_exit.take() {
            ExecOutput {
                exit,
                stdout: String::new(),
                stderr,
            }
        } else {
            let request = format!("{} {command}", self.node);
            let tool = yb_tool(&command);
            // A rule the node name alone matches, of a kind a connection shows, is the
            // connection's: it fired (or will fire) at connect, not again per command.
            let node = &self.node;
            let per_command = |r: &Fault| !(node.contains(&r.matching) && at_connect(&r.kind));
            let fault = self
                .shared
                .fault_for_rules("ssh", &request, per_command)
                .or_else(|| {
                    tool.then(|| self.shared.fault_for("yb-admin", &request))
                        .flatten()
                });
            let failed = |exit: u32, stderr: String| ExecOutput {
                exit,
                stdout: String::new(),
                stderr,
            };
            match fault {
                None => self.run(&command).await,
                // Returning an error ends the session: the connection closes without an answer.
                Some(FaultKind::Refused | FaultKind::Drop) => return Err(russh::Error::Disconnect),
                Some(FaultKind::Throttle) if !tool => return Err(russh::Error::Disconnect),
                Some(FaultKind::Throttle) => failed(
                    1,
                    "Error: Service unavailable (yb-master): the RPC service queue is full, \
                     try again later\n"
                        .into(),
                ),
                Some(FaultKind::Timeout) => std::future::pending().await,
                Some(FaultKind::Status(code)) => {
                    failed(1, format!("injected fault: status {code}\n"))
                }
                Some(FaultKind::Exit(exit, stderr)) => failed(exit, stderr),
                Some(FaultKind::WrongAnswer) => ExecOutput {
                    exit: 0,
                    stdout: "\u{1b}[?1049h\u{fffd}\u{fffd} -- MORE -- (garbled terminal output)\n"
                        .into(),
                    stderr: String::new(),
                },
                Some(FaultKind::Delay(ms)) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    self.run(&command).await
                }
                Some(FaultKind::Cut) => {
                    let _carried_out = self.run(&command).await;
                    return Err(russh::Error::Disconnect);
                }
            }
        };
        session.channel_success(channel)?;
        if !out.stdout.is_empty() {
            session.data(channel, out.stdout)?;
        }
        if !out.stderr.is_empty() {
            session.extended_data(channel, 1, out.stderr)?;
        }
        session.exit_status_request(channel, out.exit)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}
