//! The session side of a multi-client server (`role = "server"`): one [`Session`] per client
//! connection, the address pool, peer ids and ccd. The address, peer id and push of a client
//! are decided once TLS names it ([`SessionEvent::PeerAuthenticated`]): its ccd file is read
//! then, so ccd changes apply on the client's next connection. Connected clients go into the
//! data path's [`Peers`] table and, with their iroutes, into the published state, from which the
//! route planner derives their kernel routes.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};

use super::counters::bump;
use super::datapath::{ControlInput, DataPath};
use super::peer::{Peer, PeerWire, Peers, TcpSender};
use super::setup::{new_session, system_random, unix_now, ProtectionSource};
use super::single::feed;
use super::TunnelParts;
use crate::config::ccd::read_client_config;
use crate::config::{Addressing, Compress, Tunnel};
use crate::proto::control_codec::{ControlCodec, ControlCodecError};
use crate::proto::packet::{peek_opcode, ControlHeader, Opcode};
use crate::proto::server::{
    client_push, AddressPool, ClientConfig, Lease, PeerIds, RouteTable as ClientRoutes, ServerPush,
    SessionCookie,
};
use crate::proto::session::{
    classify_first_packet, stateless_reset_reply, FirstPacket, FirstPacketError, LinkActivity,
    Session, SessionConfig, SessionEnd, SessionEvent,
};
use crate::proto::vocabulary::{TlsRole, Transport};
use crate::state::{ClientEvent, ClientInfo, LinkPhase, TunnelPublisher};

/// How often the control task runs session timers.
const TICK: Duration = Duration::from_millis(200);
/// Most sessions still in their handshake at once; more hard resets are dropped until some
/// finish or time out (a flood of resets must not exhaust memory).
const MAX_HANDSHAKING: usize = 1024;

/// A client that TLS named and the server admitted.
struct Admitted {
    common_name: String,
    lease: Lease,
    iroutes: Vec<Ipv4Net>,
    peer: Arc<Peer>,
    connected: Option<ClientInfo>,
}

/// One client connection (one UDP source address or TCP connection).
struct Connection {
    session: Session,
    admitted: Option<Admitted>,
}

pub(super) struct ServerDriver {
    name: String,
    session_config: SessionConfig,
    protection: ProtectionSource,
    /// Authenticates first packets from unknown addresses (no replay state; UDP).
    first_packets: ControlCodec,
    /// Makes and checks the HMAC-cookie session ids of stateless first replies (UDP); its key
    /// is random per process.
    cookie: SessionCookie,
    path: Arc<DataPath>,
    publisher: TunnelPublisher,
    pool: AddressPool,
    peer_ids: PeerIds,
    push: ServerPush,
    duplicate_cn: bool,
    client_config_dir: Option<std::path::PathBuf>,
    max_clients: usize,
    connections: HashMap<SocketAddr, Connection>,
    /// TCP clients' connections by peer address (from accept until close).
    tcp_streams: HashMap<SocketAddr, TcpSender>,
    parts: TunnelParts,
    last_full_tick: Instant,
}

impl ServerDriver {
    pub(super) fn new(
        tunnel: &Tunnel,
        session_config: SessionConfig,
        protection: ProtectionSource,
        path: Arc<DataPath>,
        publisher: TunnelPublisher,
        parts: TunnelParts,
    ) -> anyhow::Result<Self> {
        let Addressing::Server {
            subnet,
            topology,
            push_routes,
            server_address,
            pool,
            push,
            client_to_client,
            duplicate_cn,
            client_config_dir,
            max_clients,
        } = tunnel.addressing.clone()
        else {
            anyhow::bail!("tunnel {} is not a server", tunnel.name);
        };
        let compression = tunnel.compress.map(|compress| {
            match compress {
                Compress::LzoStub => "comp-lzo no",
                Compress::Stub => "compress",
                Compress::StubV2 => "compress stub-v2",
            }
            .to_owned()
        });
        let mut cookie_key = [0u8; 32];
        {
            use ring::rand::SecureRandom;
            ring::rand::SystemRandom::new()
                .fill(&mut cookie_key)
                .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        }
        let hand_window_secs =
            u32::try_from(session_config.handshake_window.as_secs()).unwrap_or(u32::MAX);
        Ok(ServerDriver {
            name: tunnel.name.clone(),
            first_packets: protection.codec(TlsRole::Server, unix_now() as u32),
            cookie: SessionCookie::new(cookie_key, hand_window_secs),
            session_config,
            protection,
            path,
            publisher,
            pool: AddressPool::new(subnet, topology, server_address, pool),
            peer_ids: PeerIds::default(),
            push: ServerPush {
                subnet,
                topology,
                server_address,
                routes: push_routes,
                options: push,
                client_to_client,
                compression,
            },
            duplicate_cn,
            client_config_dir,
            max_clients: usize::from(max_clients),
            connections: HashMap::new(),
            tcp_streams: HashMap::new(),
            parts,
            last_full_tick: Instant::now(),
        })
    }

    pub(super) async fn run(
        mut self,
        mut input: mpsc::Receiver<ControlInput>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                message = input.recv() => match message {
                    Some(input) => self.on_input(input),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        self.shutdown().await;
    }

    fn on_input(&mut self, input: ControlInput) {
        match input {
            ControlInput::Packet { bytes, from } => self.on_packet(&bytes, from),
            ControlInput::PeerExited { from } => {
                let admitted = self
                    .connections
                    .get(&from)
                    .is_some_and(|connection| connection.admitted.is_some());
                if admitted {
                    self.remove(from, "the client exited (explicit-exit-notify)");
                }
            }
            ControlInput::TcpConnected { peer, sender } => {
                self.tcp_streams.insert(peer, sender);
            }
            ControlInput::TcpClosed { peer } => {
                self.remove(peer, "the TCP connection closed");
                self.tcp_streams.remove(&peer);
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let full = now.saturating_duration_since(self.last_full_tick) >= Duration::from_secs(1);
        if full {
            self.last_full_tick = now;
        }
        let now_ms = self.path.clock.millis(now);
        let addresses: Vec<SocketAddr> = self.connections.keys().copied().collect();
        for address in addresses {
            let Some(connection) = self.connections.get_mut(&address) else {
                continue;
            };
            if let Some(admitted) = &connection.admitted {
                admitted.peer.promote_pending_key(None, now_ms);
            }
            let due = connection
                .session
                .poll_timeout()
                .is_some_and(|at| at <= now);
            if due || full {
                let activity = match &connection.admitted {
                    Some(admitted) => admitted.peer.activity(&self.path.clock),
                    // Before admission only the handshake window matters.
                    None => LinkActivity {
                        last_received: now,
                        last_sent: now,
                    },
                };
                connection.session.handle_timeout(now, activity);
                self.drive(address);
            }
        }
        self.publish_state();
    }

    fn handshaking(&self) -> usize {
        self.connections
            .values()
            .filter(|connection| connection.admitted.is_none())
            .count()
    }

    fn on_packet(&mut self, bytes: &[u8], from: SocketAddr) {
        let now = Instant::now();
        let stateless = self.session_config.transport == Transport::Udp;
        if let Some(connection) = self.connections.get_mut(&from) {
            let another_session =
                stateless && is_another_sessions_handshake(&connection.session, bytes);
            if !connection.session.is_new_session_reset(bytes) && !another_session {
                feed(&self.path, &mut connection.session, now, bytes);
                self.drive(from);
                return;
            }
        }
        if stateless {
            self.on_first_packet(bytes, from, now);
            return;
        }
        // TCP: the connection itself proves the address (OpenVPN uses the cookie on UDP only).
        let is_reset = matches!(peek_opcode(bytes), Ok((Opcode::HardResetClientV2, _)));
        if !is_reset || self.handshaking() >= MAX_HANDSHAKING {
            bump(&self.path.counters.control.control_dropped);
            return;
        }
        // Try the reset on a fresh session; only one that authenticates replaces what there is.
        let mut session =
            match new_session(&self.session_config, &self.protection, TlsRole::Server, now) {
                Ok(session) => session,
                Err(end) => {
                    tracing::error!(tunnel = %self.name, reason = %end, "cannot start a session");
                    return;
                }
            };
        feed(&self.path, &mut session, now, bytes);
        if session.remote_session_id().is_some() {
            self.start_connection(from, session);
        }
    }

    /// `session` (which took its first packet) replaces whatever session `from` had. Over TCP
    /// the new session runs on the same connection, which stays open.
    fn start_connection(&mut self, from: SocketAddr, session: Session) {
        self.forget(from, "the client started a new session");
        self.connections.insert(
            from,
            Connection {
                session,
                admitted: None,
            },
        );
        self.drive(from);
    }

    /// A UDP packet from an address without a session of that client (OpenVPN 2.6 mudp.c
    /// `do_pre_decrypt_check`): a hard reset gets the stateless cookie reply; a handshake
    /// packet echoing a valid cookie creates the session, which then handles it.
    fn on_first_packet(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) {
        let counters = &self.path.counters.control;
        match classify_first_packet(&self.first_packets, bytes) {
            Err(FirstPacketError::Codec(ControlCodecError::Unauthenticated)) => {
                bump(&counters.control_unauthenticated);
            }
            Err(_) => bump(&counters.control_dropped),
            Ok(FirstPacket::Reset { client_session }) => {
                let now_unix = unix_now();
                let cookie = self
                    .cookie
                    .server_session_id(client_session, from, now_unix);
                // A fresh codec per reply: its replay id is 1, as OpenVPN's.
                let mut codec = self.protection.codec(TlsRole::Server, now_unix as u32);
                match stateless_reset_reply(&mut codec, now_unix as u32, cookie, client_session) {
                    Ok(wire) => {
                        bump(&counters.control_cookie_sent);
                        self.transmit(from, &wire);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot wrap the stateless reset reply");
                        bump(&self.path.counters.tx.tx_errors);
                    }
                }
            }
            Ok(FirstPacket::Echo {
                client_session,
                echoed,
            }) => {
                if !self.cookie.verify(echoed, client_session, from, unix_now()) {
                    bump(&counters.control_cookie_refused);
                    return;
                }
                if self.handshaking() >= MAX_HANDSHAKING {
                    bump(&counters.control_dropped);
                    return;
                }
                let now_unix = unix_now() as u32;
                let mut session = match Session::new_server_after_cookie(
                    self.session_config.clone(),
                    self.protection.codec(TlsRole::Server, now_unix),
                    now,
                    now_unix,
                    system_random(),
                    echoed,
                    client_session,
                ) {
                    Ok(session) => session,
                    Err(end) => {
                        tracing::error!(tunnel = %self.name, reason = %end, "cannot start a session");
                        return;
                    }
                };
                feed(&self.path, &mut session, now, bytes);
                self.start_connection(from, session);
            }
        }
    }

    /// How packets reach the client at `address`.
    fn wire_of(&self, address: SocketAddr) -> PeerWire {
        match self.tcp_streams.get(&address) {
            Some(sender) => PeerWire::Tcp(sender.clone()),
            None => PeerWire::Udp,
        }
    }

    /// Sends a control packet to the client at `address`.
    fn transmit(&self, address: SocketAddr, packet: &[u8]) {
        self.path.send_raw(&self.wire_of(address), address, packet);
    }

    /// The data-path peer of the admitted client at `address`.
    fn peer_of(&self, address: SocketAddr) -> Option<Arc<Peer>> {
        self.connections
            .get(&address)?
            .admitted
            .as_ref()
            .map(|admitted| admitted.peer.clone())
    }

    /// Acts on the events of the session at `address`.
    fn drive(&mut self, address: SocketAddr) {
        let mut ended: Option<String> = None;
        let now_ms = self.path.clock.now_ms();
        while let Some(event) = self
            .connections
            .get_mut(&address)
            .and_then(|connection| connection.session.poll_event())
        {
            let peer = self.peer_of(address);
            let event = match &peer {
                Some(peer) => match peer.apply_key_event(event, now_ms) {
                    Some(event) => event,
                    None => continue,
                },
                None => event,
            };
            match event {
                SessionEvent::Transmit(bytes) => self.transmit(address, &bytes),
                SessionEvent::PeerAuthenticated { common_name } => {
                    self.admit(address, common_name);
                }
                SessionEvent::Established { params, .. } => {
                    let Some(admitted) = self
                        .connections
                        .get_mut(&address)
                        .and_then(|connection| connection.admitted.as_mut())
                    else {
                        continue;
                    };
                    let info = ClientInfo {
                        common_name: admitted.common_name.clone(),
                        virtual_address: admitted.lease.address,
                        iroutes: admitted.iroutes.clone(),
                        real_address: address,
                        peer_id: admitted.peer.peer_id,
                        connected_since_unix: unix_now(),
                    };
                    admitted.connected = Some(info.clone());
                    tracing::info!(
                        tunnel = %self.name,
                        peer = %address,
                        cn = %info.common_name,
                        address = %info.virtual_address,
                        peer_id = info.peer_id,
                        cipher = %params.cipher,
                        "client connected"
                    );
                    self.publish_peers();
                    self.publisher.event(ClientEvent::Connected(info));
                }
                SessionEvent::SendPing => {
                    if let Some(peer) = &peer {
                        self.path.send_ping(peer);
                    }
                }
                SessionEvent::Ended(end) => {
                    if let SessionEnd::TlsFailed(reason) = &end {
                        tracing::error!(tunnel = %self.name, peer = %address, "session refused: {reason}");
                    }
                    ended = Some(match end {
                        SessionEnd::PeerExit => "the client exited".to_owned(),
                        other => other.to_string(),
                    });
                }
                // A server pushes, it is not pushed to; key events before admission have no
                // peer to act on.
                SessionEvent::Pushed(_)
                | SessionEvent::InstallReceiveKey(_)
                | SessionEvent::ActivateSendKey(_)
                | SessionEvent::RetireReceiveKey(_) => {}
            }
        }
        if let Some(reason) = ended {
            self.remove(address, &reason);
        }
    }

    /// Decides about a client TLS just named: ccd, duplicate-cn, max-clients, address, push.
    fn admit(&mut self, address: SocketAddr, common_name: Option<String>) {
        let now = Instant::now();
        let common_name = common_name.unwrap_or_default();
        let decision = self.admission(address, &common_name);
        let wire = self.wire_of(address);
        let now_ms = self.path.clock.millis(now);
        let Some(connection) = self.connections.get_mut(&address) else {
            return;
        };
        match decision {
            Err(reason) => {
                tracing::warn!(tunnel = %self.name, peer = %address, cn = %common_name, "client refused: {reason}");
                connection.session.refuse(now, &reason);
            }
            Ok((lease, ccd, peer_id)) => {
                let push = client_push(&self.push, &lease, ccd.as_ref());
                connection.admitted = Some(Admitted {
                    common_name,
                    lease,
                    iroutes: ccd.map(|ccd| ccd.iroutes).unwrap_or_default(),
                    peer: Arc::new(Peer::new(peer_id, address, wire, now_ms)),
                    connected: None,
                });
                connection.session.set_push(now, push, peer_id);
                self.publish_peers();
            }
        }
    }

    fn admission(
        &mut self,
        address: SocketAddr,
        common_name: &str,
    ) -> Result<(Lease, Option<ClientConfig>, u32), String> {
        if common_name.is_empty() {
            return Err("the client certificate has no common name".into());
        }
        let ccd = match &self.client_config_dir {
            None => None,
            Some(dir) => {
                let own = read_client_config(dir, common_name).map_err(|error| {
                    tracing::error!(%error, "client config file");
                    format!("client config file error: {error}")
                })?;
                match own {
                    Some(ccd) => Some(ccd),
                    None => read_client_config(dir, "DEFAULT")
                        .map_err(|error| format!("client config file error: {error}"))?,
                }
            }
        };
        if ccd.as_ref().is_some_and(|ccd| ccd.disable) {
            return Err("client disabled".into());
        }
        if !self.duplicate_cn {
            let others: Vec<SocketAddr> = self
                .connections
                .iter()
                .filter(|(other, connection)| {
                    **other != address
                        && connection
                            .admitted
                            .as_ref()
                            .is_some_and(|admitted| admitted.common_name == common_name)
                })
                .map(|(other, _)| *other)
                .collect();
            for other in others {
                self.remove(
                    other,
                    "a new connection with the same common name replaced it",
                );
            }
        }
        let admitted = self
            .connections
            .values()
            .filter(|connection| connection.admitted.is_some())
            .count();
        if admitted >= self.max_clients {
            return Err(format!("max_clients ({}) reached", self.max_clients));
        }
        let fixed = ccd.as_ref().and_then(|ccd| ccd.ifconfig_push);
        let lease = self
            .pool
            .lease(common_name, fixed)
            .map_err(|error| error.to_string())?;
        let Some(peer_id) = self.peer_ids.allocate() else {
            self.pool.release(lease.address);
            return Err("no free peer id".into());
        };
        Ok((lease, ccd, peer_id))
    }

    /// Forgets the connection at `address` (its address, peer id and routes are freed) and,
    /// over TCP, closes it: there the connection is the session.
    fn remove(&mut self, address: SocketAddr, reason: &str) {
        if self.forget(address, reason) {
            if let Some(sender) = self.tcp_streams.get(&address) {
                sender.close();
            }
        }
    }

    /// Forgets the connection at `address`, keeping its transport; whether there was one.
    fn forget(&mut self, address: SocketAddr, reason: &str) -> bool {
        let Some(connection) = self.connections.remove(&address) else {
            return false;
        };
        let Some(admitted) = connection.admitted else {
            tracing::debug!(tunnel = %self.name, peer = %address, "handshake ended: {reason}");
            return true;
        };
        self.pool.release(admitted.lease.address);
        self.peer_ids.release(admitted.peer.peer_id);
        self.publish_peers();
        if let Some(client) = admitted.connected {
            tracing::info!(tunnel = %self.name, peer = %address, cn = %client.common_name, address = %client.virtual_address, "client disconnected: {reason}");
            self.publisher.event(ClientEvent::Disconnected {
                client,
                reason: reason.to_owned(),
            });
        }
        true
    }

    /// Swaps in a new data-path table of the admitted clients (connected ones are routed) and
    /// publishes the state.
    fn publish_peers(&mut self) {
        let mut peers = Vec::new();
        let mut routed = Vec::new();
        for connection in self.connections.values() {
            let Some(admitted) = &connection.admitted else {
                continue;
            };
            peers.push(admitted.peer.clone());
            if admitted.connected.is_some() {
                routed.push((
                    admitted.lease.address,
                    admitted.iroutes.as_slice(),
                    admitted.peer.peer_id,
                ));
            }
        }
        let routes = ClientRoutes::build(routed);
        self.path
            .peers
            .store(Arc::new(Peers::clients(peers, routes)));
        self.publish_state();
    }

    fn publish_state(&self) {
        let mut clients: Vec<ClientInfo> = self
            .connections
            .values()
            .filter_map(|connection| connection.admitted.as_ref()?.connected.clone())
            .collect();
        clients.sort_by_key(|client| client.virtual_address);
        let handshaking = self.handshaking();
        // Established as soon as one client is, like a single-peer tunnel; the client list says
        // who.
        let phase = if clients.is_empty() {
            LinkPhase::WaitingForClients
        } else {
            LinkPhase::Established
        };
        self.publisher.update(|state| {
            state.phase = phase;
            state.clients = clients;
            state.handshaking = handshaking;
        });
    }

    async fn shutdown(mut self) {
        let now = Instant::now();
        let addresses: Vec<SocketAddr> = self.connections.keys().copied().collect();
        for address in addresses {
            let Some(connection) = self.connections.get_mut(&address) else {
                continue;
            };
            // RESTART,[N]: the client reconnects at once, to its next remote if it has one
            // (another server of the deployment), instead of waiting for its ping-restart.
            let sent_exit = connection.session.restart_peer(now, true);
            let peer = connection
                .admitted
                .as_ref()
                .map(|admitted| admitted.peer.clone());
            let mut outgoing = Vec::new();
            while let Some(event) = connection.session.poll_event() {
                if let SessionEvent::Transmit(bytes) = event {
                    outgoing.push(bytes);
                }
            }
            for bytes in outgoing {
                self.transmit(address, &bytes);
            }
            if let (false, Some(peer)) = (sent_exit, peer) {
                // explicit-exit-notify on the data channel for clients without cc-exit.
                self.path.send_exit(&peer);
            }
            self.remove(address, "the server is stopping");
        }
        self.parts.stop(&self.path).await;
        tracing::info!(tunnel = %self.name, "server stopped");
    }
}

/// Whether `bytes` is a handshake packet (CONTROL_V1/ACK_V1) of a client session other than
/// `session`'s: a client that restarted from the same address echoing a new cookie.
fn is_another_sessions_handshake(session: &Session, bytes: &[u8]) -> bool {
    let Ok((header, _)) = ControlHeader::decode(bytes) else {
        return false;
    };
    matches!(header.opcode, Opcode::ControlV1 | Opcode::AckV1)
        && session
            .remote_session_id()
            .is_some_and(|remote| remote != header.session_id)
}
