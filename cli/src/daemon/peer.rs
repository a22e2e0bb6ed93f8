//! Who is calling the daemon: a unix peer (its uid, from the socket's credentials) or a TCP
//! token holder, and whether a unix peer may use the daemon at all.

use std::path::Path;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, UnixListener};

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Peer {
    /// As recorded in histories.
    pub operator: String,
    /// The unix peer's uid (TCP, or a unix peer whose credentials could not be read: none).
    pub uid: Option<u32>,
    /// Whether it came over the unix socket (TCP peers are checked by their bearer token).
    pub unix: bool,
}

pub(crate) fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Peer {
                operator: match user_name(c.uid()) {
                    Some(n) => format!("{n} (uid {})", c.uid()),
                    None => format!("uid {}", c.uid()),
                },
                uid: Some(c.uid()),
                unix: true,
            },
            // Fail closed: a peer whose uid cannot be learnt is refused by `check_peer`.
            Err(e) => Peer {
                operator: format!("unknown local peer ({e})"),
                uid: None,
                unix: true,
            },
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer {
            operator: format!("token holder from {}", stream.remote_addr()),
            uid: None,
            unix: false,
        }
    }
}

/// Why a peer may not use the daemon, if it may not. Fails closed: a unix peer whose
/// credentials could not be read is refused (TCP peers are checked by their token instead).
pub fn peer_refusal(own_uid: u32, socket: &Path, peer: &Peer) -> Option<String> {
    match peer.uid {
        None if peer.unix => Some(format!(
            "the daemon could not read this connection's peer credentials ({}), so it refuses \
             it; connect as uid {own_uid} through {}",
            peer.operator,
            socket.display()
        )),
        Some(uid) if uid != own_uid && uid != 0 => Some(format!(
            "uid {uid} may not use this daemon (it runs as uid {own_uid})"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{peer_refusal, Peer};
    use std::path::Path;

    fn peer(uid: Option<u32>, unix: bool) -> Peer {
        Peer {
            operator: "someone".into(),
            uid,
            unix,
        }
    }

    /// Issue 8, item 11: a unix peer whose `peer_cred()` failed (`uid: None`) passed the check.
    #[test]
    fn a_unix_peer_without_credentials_is_refused() {
        let sock = Path::new("/data/waymark.sock");
        let why = peer_refusal(1000, sock, &peer(None, true)).expect("refused");
        assert!(
            why.contains("peer credentials") && why.contains("uid 1000"),
            "{why}"
        );
        assert!(peer_refusal(1000, sock, &peer(Some(1001), true)).is_some());
        assert_eq!(peer_refusal(1000, sock, &peer(Some(1000), true)), None);
        assert_eq!(peer_refusal(1000, sock, &peer(Some(0), true)), None);
        // TCP peers have no uid; their bearer token is checked by its own layer.
        assert_eq!(peer_refusal(1000, sock, &peer(None, false)), None);
    }
}
