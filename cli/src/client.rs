//! The CLI's side of the daemon API: HTTP/1.1 over the daemon's unix socket in the data directory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::exit::{Exit, ExitStatus};
use crate::follow::FollowLine;
use crate::paths::socket_path;

/// A connection point to a running daemon.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// The daemon serving `data_dir`, if one answers on its socket. A socket that refuses
    /// connections is a daemon's leftover (the CLI then works on the directory itself); a socket
    /// this user may not open is an error.
    pub async fn connect(data_dir: &Path) -> anyhow::Result<Option<Client>> {
        let socket = socket_path(data_dir);
        match UnixStream::connect(&socket).await {
            Ok(_) => Ok(Some(Client { socket })),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Exit::error(
                ExitStatus::Unusable,
                format!(
                    "{}: permission denied: the daemon's socket is owner-only; run as the user that runs the daemon",
                    socket.display()
                ),
            )),
            Err(_) => Ok(None),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to the daemon at {}", self.socket.display()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(&v)?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("http://waymark{path}"))
            .header("host", "waymark")
            .header("content-type", "application/json")
            .body(Full::new(bytes))?;
        Ok(sender.send_request(req).await?)
    }

    /// A JSON request; an error answer becomes an error with the daemon's message and exit code.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(answer_error(&bytes, &format!("daemon answered {status}")));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Follows a run's stream, calling `f` for each line, until the run ends or `f` says stop.
    pub async fn follow(
        &self,
        run: &str,
        mut f: impl FnMut(FollowLine) -> bool,
    ) -> anyhow::Result<()> {
        let resp = self
            .send(Method::GET, &format!("/v1/runs/{run}/follow"), None)
            .await?;
        if !resp.status().is_success() {
            let bytes = resp.into_body().collect().await?.to_bytes();
            return Err(answer_error(&bytes, "follow refused"));
        }
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    if let Ok(l) = serde_json::from_slice::<FollowLine>(&line) {
                        if !f(l) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The error of a daemon's error answer (`{"error": ..., "code": ...}`), exiting as the daemon says.
fn answer_error(body: &[u8], otherwise: &str) -> anyhow::Error {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    Exit::error(
        v["code"]
            .as_u64()
            .map_or(ExitStatus::Failure, ExitStatus::from_code),
        v["error"].as_str().unwrap_or(otherwise),
    )
}
