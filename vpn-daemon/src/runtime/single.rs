//! The session side of a single-peer tunnel (`role = "client"` or `"p2p"`): one
//! [`Session`] at a time with one peer. A TLS client dials its remotes in turn and reconnects;
//! a TLS server end waits for its peer and takes a new session from it once the new session's
//! reset authenticated.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::counters::{add, bump};
use super::datapath::{ControlInput, DataPath, RECONNECT_DELAY};
use super::peer::{Peer, PeerWire, Peers, TcpSender};
use super::setup::{new_session, ProtectionSource};
use super::TunnelParts;
use crate::config::Tunnel;
use crate::io::netlink::Netlink;
use crate::io::tun::TunDevice;
use crate::proto::options::PushOptions;
use crate::proto::packet::{peek_opcode, Opcode};
use crate::proto::session::{Session, SessionConfig, SessionEnd, SessionEvent};
use crate::proto::vocabulary::{TlsRole, Topology, Transport};
use crate::state::{KeyDerivation, LinkPhase, TunnelPublisher};

/// The longest the control task sleeps without a session timer (it re-checks reconnects).
const IDLE_WAKE: Duration = Duration::from_secs(1);

pub(super) struct SingleDriver {
    tunnel: Tunnel,
    tls_role: TlsRole,
    session_config: SessionConfig,
    protection: ProtectionSource,
    path: Arc<DataPath>,
    publisher: TunnelPublisher,
    netlink: Arc<Netlink>,
    ifindex: u32,
    session: Option<Session>,
    peer: Option<Arc<Peer>>,
    /// The TCP connection in use, if any.
    tcp: Option<TcpSender>,
    parts: TunnelParts,
}

impl SingleDriver {
    pub(super) fn new(
        tunnel: Tunnel,
        session_config: SessionConfig,
        protection: ProtectionSource,
        path: Arc<DataPath>,
        publisher: TunnelPublisher,
        netlink: Arc<Netlink>,
        parts: TunnelParts,
    ) -> Self {
        let tls_role = super::setup::tls_role(&tunnel);
        SingleDriver {
            ifindex: parts.device.as_ref().map_or(0, TunDevice::ifindex),
            tunnel,
            tls_role,
            session_config,
            protection,
            path,
            publisher,
            netlink,
            session: None,
            peer: None,
            tcp: None,
            parts,
        }
    }

    /// The phase of a tunnel without a session: a TLS client with a remote dials out, everyone
    /// else waits for the peer.
    pub(super) fn idle_phase(tunnel: &Tunnel) -> LinkPhase {
        if super::setup::tls_role(tunnel) == TlsRole::Client && !tunnel.remotes.is_empty() {
            LinkPhase::Connecting
        } else {
            LinkPhase::WaitingForPeer
        }
    }

    pub(super) async fn run(
        mut self,
        mut input: mpsc::Receiver<ControlInput>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut reconnect_at: Option<Instant> = Some(Instant::now());
        let mut remote_index = 0usize;
        loop {
            // Clients (and p2p TLS clients over UDP) start sessions on their own; over TCP the
            // dialler thread connects and the session starts on TcpConnected.
            let can_reconnect = self.session.is_none() && self.dials_udp();
            if can_reconnect && reconnect_at.is_some_and(|at| Instant::now() >= at) {
                reconnect_at = None;
                let remotes = &self.tunnel.remotes;
                if let Some(&remote) = remotes.get(remote_index % remotes.len().max(1)) {
                    remote_index += 1;
                    self.set_peer(remote, PeerWire::Udp);
                    self.new_session();
                }
            }
            // reconnect_at only matters while the branch above can act on it: on a side that
            // never initiates, waking for a past instant would spin a core.
            let idle = Instant::now() + IDLE_WAKE;
            let deadline = self
                .session
                .as_ref()
                .and_then(Session::poll_timeout)
                .unwrap_or(idle)
                .min(idle)
                .min(reconnect_at.filter(|_| can_reconnect).unwrap_or(idle));
            let mut ended = None;
            tokio::select! {
                _ = stop.changed() => break,
                message = input.recv() => match message {
                    Some(input) => ended = self.on_input(input),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if let (Some(session), Some(peer)) = (self.session.as_mut(), &self.peer) {
                        session.handle_timeout(Instant::now(), peer.activity(&self.path.clock));
                    }
                }
            }
            if let Some(end) = ended.or(self.drain_events().await) {
                self.on_session_end(end);
                if self.initiates() {
                    reconnect_at = Some(Instant::now() + RECONNECT_DELAY);
                }
            }
        }
        self.shutdown().await;
    }

    fn initiates(&self) -> bool {
        self.tls_role == TlsRole::Client && !self.tunnel.remotes.is_empty()
    }

    fn dials_udp(&self) -> bool {
        self.initiates() && self.tunnel.transport == Transport::Udp
    }

    /// Handles one input; returns how the session ended, if this input ended it.
    fn on_input(&mut self, input: ControlInput) -> Option<SessionEnd> {
        match input {
            ControlInput::Packet { bytes, from } => return self.on_packet(bytes, from),
            ControlInput::PeerExited { from } => {
                let ours = self.peer.as_ref().is_some_and(|peer| peer.address == from);
                if ours && self.session.take().is_some() {
                    return Some(SessionEnd::PeerExit);
                }
            }
            ControlInput::TcpConnected { peer, sender } => {
                if self.tcp.is_some() {
                    // One connection at a time; the running one stays.
                    sender.close();
                    bump(&self.path.counters.control.control_dropped);
                    return None;
                }
                self.tcp = Some(sender.clone());
                self.set_peer(peer, PeerWire::Tcp(sender));
                self.set_phase(LinkPhase::Connecting, None);
                if self.tls_role == TlsRole::Client {
                    self.new_session();
                }
            }
            ControlInput::TcpClosed { peer } => {
                let ours = self
                    .peer
                    .as_ref()
                    .is_some_and(|current| current.address == peer);
                if !ours || self.tcp.is_none() {
                    return None;
                }
                self.tcp = None;
                self.peer = None;
                self.path.peers.store(Arc::new(Peers::single(None)));
                if let Some(mut session) = self.session.take() {
                    session.close(Instant::now());
                }
                return Some(SessionEnd::Protocol("the TCP connection closed".into()));
            }
        }
        None
    }

    /// Points the data path at a new peer (its keys start empty).
    fn set_peer(&mut self, address: SocketAddr, wire: PeerWire) {
        let peer = Arc::new(Peer::new(0, address, wire, self.path.clock.now_ms()));
        self.path
            .peers
            .store(Arc::new(Peers::single(Some(peer.clone()))));
        self.peer = Some(peer);
    }

    fn new_session(&mut self) {
        self.session = self.make_session();
    }

    fn make_session(&mut self) -> Option<Session> {
        if let Some(peer) = &self.peer {
            peer.mark_received(self.path.clock.now_ms());
        }
        match new_session(
            &self.session_config,
            &self.protection,
            self.tls_role,
            Instant::now(),
        ) {
            Ok(session) => Some(session),
            Err(end) => {
                tracing::error!(tunnel = %self.tunnel.name, reason = %end, "cannot start a session");
                self.set_phase(LinkPhase::Failed, Some(end.to_string()));
                None
            }
        }
    }

    fn on_packet(&mut self, bytes: Vec<u8>, from: SocketAddr) -> Option<SessionEnd> {
        let now = Instant::now();
        let udp = self.tunnel.transport == Transport::Udp;
        let from_peer = self.peer.as_ref().is_some_and(|peer| peer.address == from);
        let belongs = self.session.as_ref().is_some_and(|session| {
            !session.is_ended() && !session.is_new_session_reset(&bytes) && (!udp || from_peer)
        });
        if belongs || (self.initiates() && self.session.is_some()) {
            if let Some(mut session) = self.session.take() {
                self.feed(&mut session, now, &bytes);
                self.session = Some(session);
            }
            return None;
        }
        let is_reset = matches!(peek_opcode(&bytes), Ok((Opcode::HardResetClientV2, _)));
        if self.tls_role != TlsRole::Server || !is_reset {
            bump(&self.path.counters.control.control_dropped);
            return None;
        }
        // A new peer session: try it on the side and switch only once its reset authenticated,
        // so a forged reset cannot tear down the running session.
        let mut candidate = self.make_session()?;
        self.feed(&mut candidate, now, &bytes);
        candidate.remote_session_id()?;
        if self.session.is_some() {
            tracing::info!(tunnel = %self.tunnel.name, peer = %from, "peer started a new session");
            if let Some(peer) = &self.peer {
                peer.clear_keys();
            }
        }
        if udp && !from_peer {
            self.set_peer(from, PeerWire::Udp);
        }
        self.session = Some(candidate);
        // Until the new session is established the link carries nothing: the fast path must
        // not steer flows onto it meanwhile.
        self.set_phase(LinkPhase::Connecting, None);
        None
    }

    /// Hands one control packet to `session` and counts what it refused.
    fn feed(&self, session: &mut Session, now: Instant, bytes: &[u8]) {
        feed(&self.path, session, now, bytes);
    }

    fn set_phase(&self, phase: LinkPhase, error: Option<String>) {
        let peer = self.peer.as_ref().map(|peer| peer.address);
        self.publisher.update(|state| {
            state.phase = phase;
            state.peer = peer;
            if error.is_some() {
                state.last_error = error;
            }
        });
    }

    /// Acts on the session's events; returns how it ended, if it did.
    async fn drain_events(&mut self) -> Option<SessionEnd> {
        let mut ended = None;
        let now_ms = self.path.clock.now_ms();
        while let Some(event) = self.session.as_mut().and_then(Session::poll_event) {
            let event = match &self.peer {
                Some(peer) => match peer.apply_key_event(event, now_ms) {
                    Some(event) => event,
                    None => continue,
                },
                None => event,
            };
            match event {
                SessionEvent::Transmit(bytes) => {
                    if let Some(peer) = &self.peer {
                        self.path.send_to_peer(peer, &bytes);
                    }
                }
                SessionEvent::Established {
                    params,
                    peer_common_name,
                } => {
                    let peer = self.peer.as_ref().map(|peer| peer.address);
                    tracing::info!(
                        tunnel = %self.tunnel.name,
                        peer = ?peer,
                        cn = ?peer_common_name,
                        cipher = %params.cipher,
                        tls_ekm = params.tls_ekm,
                        "tunnel established"
                    );
                    self.publisher.update(|state| {
                        state.phase = LinkPhase::Established;
                        state.peer = peer;
                        state.peer_common_name = peer_common_name;
                        state.cipher = Some(params.cipher.to_string());
                        state.key_derivation = Some(if params.tls_ekm {
                            KeyDerivation::TlsEkm
                        } else {
                            KeyDerivation::Prf
                        });
                    });
                }
                SessionEvent::Pushed(options) => self.apply_push(&options).await,
                SessionEvent::SendPing => {
                    if let Some(peer) = &self.peer {
                        self.path.send_ping(peer);
                    }
                }
                SessionEvent::Ended(end) => ended = Some(end),
                // Key events without a peer have nothing to act on; PeerAuthenticated comes
                // only with push_per_client, which servers set.
                SessionEvent::InstallReceiveKey(_)
                | SessionEvent::ActivateSendKey(_)
                | SessionEvent::RetireReceiveKey(_)
                | SessionEvent::PeerAuthenticated { .. } => {}
            }
        }
        if let Some(session) = &self.session {
            let keys = session.stats().keys_negotiated;
            self.publisher.update(|state| state.keys_negotiated = keys);
        }
        ended
    }

    /// A client's pushed configuration: the address goes on the tun now, the routes to the
    /// route table (through the published state, which the route planner filters).
    async fn apply_push(&mut self, pushed: &PushOptions) {
        if let Some((address, second)) = pushed.ifconfig {
            let (prefix, peer) = match pushed.topology.unwrap_or(Topology::Net30) {
                Topology::Subnet => (u32::from(second).leading_ones() as u8, None),
                Topology::Net30 => (32, Some(IpAddr::V4(second))),
            };
            if let Err(error) = self
                .netlink
                .add_address(self.ifindex, IpAddr::V4(address), prefix, peer)
                .await
            {
                tracing::error!(tunnel = %self.tunnel.name, error = %format!("{error:#}"), "applying the pushed address");
            }
        }
        let routes: Vec<_> = pushed
            .routes
            .iter()
            .map(|(route, _gateway)| *route)
            .collect();
        let server = self.peer.as_ref().map(|peer| peer.address.ip());
        for route in &routes {
            if !crate::plan::routes::pushed_route_accepted(&self.tunnel, server, *route) {
                tracing::warn!(tunnel = %self.tunnel.name, %route, "pushed route not installed (accept_pushed_default_route = true would accept it)");
            }
        }
        self.publisher.update(|state| state.pushed_routes = routes);
    }

    fn on_session_end(&mut self, end: SessionEnd) {
        let peer = self.peer.as_ref().map(|peer| peer.address);
        match &end {
            SessionEnd::TlsFailed(reason) => {
                tracing::error!(tunnel = %self.tunnel.name, peer = ?peer, "session refused: {reason}")
            }
            other => {
                tracing::warn!(tunnel = %self.tunnel.name, peer = ?peer, "session ended: {other}")
            }
        }
        self.session = None;
        if let Some(peer) = &self.peer {
            peer.clear_keys();
        }
        self.publisher.update(|state| state.pushed_routes.clear());
        self.set_phase(Self::idle_phase(&self.tunnel), Some(end.to_string()));
    }

    async fn shutdown(mut self) {
        if let Some(session) = self.session.as_mut() {
            let sent_exit = session.close(Instant::now());
            let _ = self.drain_events().await;
            if !sent_exit && self.tunnel.transport == Transport::Udp {
                if let Some(peer) = &self.peer {
                    self.path.send_exit(peer);
                }
            }
        }
        if let Some(tcp) = &self.tcp {
            tcp.close();
        }
        self.parts.stop(&self.path).await;
        tracing::info!(tunnel = %self.tunnel.name, "tunnel stopped");
    }
}

/// Hands one control packet to `session` and counts what it refused.
pub(super) fn feed(path: &DataPath, session: &mut Session, now: Instant, bytes: &[u8]) {
    let before = session.stats();
    session.handle_control(now, bytes);
    let after = session.stats();
    let counters = &path.counters.control;
    add(
        &counters.control_unauthenticated,
        after.unauthenticated - before.unauthenticated,
    );
    add(
        &counters.control_dropped,
        (after.replayed - before.replayed) + (after.malformed - before.malformed),
    );
}
