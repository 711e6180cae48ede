//! The control socket: one JSON request per line, one JSON response per line.
//!
//! The daemon's event loop owns all state; the socket task only forwards requests to it over a
//! channel, so a slow or stuck client never blocks packet or route work.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{
        AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader as AsyncBufReader,
    },
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::status::Status;

/// Longest request line accepted; anything longer is a protocol error, not a reason to buffer.
const MAX_REQUEST_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    Error { message: String },
}

/// A request from a control client, with the channel its answer goes back on.
pub type ControlRequest = (Request, oneshot::Sender<Response>);

/// The bound control socket; removes its path when dropped.
pub struct ControlSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl ControlSocket {
    /// Binds `path`, refusing if another daemon answers on it and replacing a stale socket file.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating control socket directory {}", dir.display()))?;
        }
        if path.exists() {
            if StdUnixStream::connect(path).is_ok() {
                bail!(
                    "control socket {} is in use: another vpn-daemon is running with this node",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale control socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding control socket {}", path.display()))?;
        // Status reveals topology and peers: only root (the daemon's user) may connect.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting permissions of {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            listener: Some(listener),
        })
    }

    /// Accepts clients until the receiving end of `requests` is gone.
    pub fn serve(&mut self, requests: mpsc::Sender<ControlRequest>) -> tokio::task::JoinHandle<()> {
        let listener = self.listener.take().expect("serve is called once");
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let requests = requests.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_client(stream, requests).await {
                        tracing::debug!(error = %format!("{error:#}"), "control client");
                    }
                });
            }
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), %error, "removing control socket");
            }
        }
    }
}

async fn serve_client(
    stream: UnixStream,
    requests: mpsc::Sender<ControlRequest>,
) -> anyhow::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut lines = AsyncBufReader::new(reader.take(MAX_REQUEST_BYTES as u64 * 16)).lines();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("client idle")??
    {
        let response = if line.len() > MAX_REQUEST_BYTES {
            Response::Error {
                message: format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            }
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    let (reply_to, reply) = oneshot::channel();
                    requests
                        .send((request, reply_to))
                        .await
                        .context("daemon is shutting down")?;
                    reply.await.context("daemon dropped the request")?
                }
                Err(error) => Response::Error {
                    message: format!("bad request: {error}"),
                },
            }
        };
        let mut bytes = serde_json::to_vec(&response)?;
        bytes.push(b'\n');
        writer.write_all(&bytes).await?;
    }
    Ok(())
}

/// Client side (used by `vpn-daemon status`): sends one request and waits for its answer.
pub fn request(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let mut stream = StdUnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to {} (is vpn-daemon running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| format!("reading the answer from {}", socket.display()))?;
    serde_json::from_str(&answer)
        .with_context(|| format!("malformed answer from {}", socket.display()))
}
