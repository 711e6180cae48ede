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
    sync::{broadcast, mpsc, oneshot},
};

use crate::state::{ClientEvent, NodeEvent};
use crate::status::{ClientStatus, Status};

/// Longest request line accepted; anything longer is a protocol error, not a reason to buffer.
const MAX_REQUEST_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Stream client events (one [`Response::Event`] line each) until the client hangs up.
    Events,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    Event(ClientEventRecord),
    Error { message: String },
}

/// A client of a multi-client server tunnel connected or disconnected; what `vpn-daemon events`
/// prints, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEventRecord {
    /// `client-connected` or `client-disconnected`.
    pub event: String,
    /// The server tunnel's name.
    pub tunnel: String,
    #[serde(flatten)]
    pub client: ClientStatus,
    /// Why the client left (disconnections only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&NodeEvent> for ClientEventRecord {
    fn from(event: &NodeEvent) -> Self {
        let (name, client, reason) = match &event.event {
            ClientEvent::Connected(client) => ("client-connected", client, None),
            ClientEvent::Disconnected { client, reason } => {
                ("client-disconnected", client, Some(reason.clone()))
            }
        };
        ClientEventRecord {
            event: name.to_owned(),
            tunnel: event.tunnel.clone(),
            client: client.into(),
            reason,
        }
    }
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
    /// `events` is the bus's edge-event stream that [`Request::Events`] subscribes to.
    pub fn serve(
        &mut self,
        requests: mpsc::Sender<ControlRequest>,
        events: broadcast::Sender<NodeEvent>,
    ) -> tokio::task::JoinHandle<()> {
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
                let events = events.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_client(stream, requests, events).await {
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
    events: broadcast::Sender<NodeEvent>,
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
                Ok(Request::Events) => {
                    // Subscribed before anything is written: no event after the request is lost.
                    return stream_events(events.subscribe(), writer).await;
                }
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

/// Writes every event of `events` as a [`Response::Event`] line until the client hangs up or
/// the daemon stops.
async fn stream_events(
    mut events: broadcast::Receiver<NodeEvent>,
    mut writer: tokio::net::unix::OwnedWriteHalf,
) -> anyhow::Result<()> {
    loop {
        let response = match events.recv().await {
            Ok(event) => Response::Event(ClientEventRecord::from(&event)),
            Err(broadcast::error::RecvError::Lagged(lost)) => Response::Error {
                message: format!("{lost} events lost: this client reads too slowly"),
            },
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        let mut bytes = serde_json::to_vec(&response)?;
        bytes.push(b'\n');
        writer.write_all(&bytes).await?;
    }
}

/// Client side of [`Request::Events`] (used by `vpn-daemon events`): calls `on_event` for each
/// event until the daemon closes the connection.
pub fn follow_events(
    socket: &Path,
    mut on_event: impl FnMut(&ClientEventRecord) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stream = StdUnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to {} (is vpn-daemon running?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(&Request::Events)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    for answer in BufReader::new(&stream).lines() {
        let answer = answer.with_context(|| format!("reading from {}", socket.display()))?;
        match serde_json::from_str::<Response>(&answer)
            .with_context(|| format!("malformed event from {}", socket.display()))?
        {
            Response::Event(record) => on_event(&record)?,
            Response::Error { message } => tracing::warn!(%message, "event stream"),
            Response::Status(_) => bail!("unexpected status answer to an events request"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_are_flat_json_and_round_trip() {
        let client = crate::state::ClientInfo {
            common_name: "alice".to_owned(),
            virtual_address: "10.8.0.6".parse().unwrap(),
            iroutes: vec!["192.168.7.0/24".parse().unwrap()],
            real_address: "192.0.2.1:40000".parse().unwrap(),
            peer_id: 3,
            connected_since_unix: 1_700_000_000,
        };
        let event = |event| NodeEvent {
            tunnel: "office".to_owned(),
            event,
        };
        let up = ClientEventRecord::from(&event(ClientEvent::Connected(client.clone())));
        let json: serde_json::Value = serde_json::to_value(&up).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event": "client-connected", "tunnel": "office", "common_name": "alice",
                "virtual_address": "10.8.0.6", "iroutes": ["192.168.7.0/24"],
                "real_address": "192.0.2.1:40000", "peer_id": 3,
                "connected_since_unix": 1_700_000_000u64,
            })
        );
        let down = ClientEventRecord::from(&event(ClientEvent::Disconnected {
            client,
            reason: "exit".to_owned(),
        }));
        assert_eq!(down.event, "client-disconnected");
        assert_eq!(down.reason.as_deref(), Some("exit"));
        // As the control socket sends it, and as `vpn-daemon events` reads it back.
        let line = serde_json::to_string(&Response::Event(down.clone())).unwrap();
        assert!(line.contains("\"result\":\"event\""), "{line}");
        assert_eq!(
            serde_json::from_str::<Response>(&line).unwrap(),
            Response::Event(down)
        );
        assert_eq!(
            serde_json::from_str::<Request>("{\"command\":\"events\"}").unwrap(),
            Request::Events
        );
    }
}
