//! The session side of a single-peer tunnel (`role = "client"` or `"p2p"`): one running
//! [`Session`] with one peer. A TLS client dials its remotes in turn and reconnects, and hears
//! only its current server. A TLS server end waits for its peer; a new session the peer starts
//! while the running one is established is a *candidate*, held beside it as OpenVPN does:
//!
//! ```text
//!   HARD_RESET_CLIENT_V2, new session id ──► candidate (own Session, own Peer: not in the data path)
//!        │ its reset authenticated                │ its packets: from its address, with its session id
//!        ▼                                        ▼
//!   running session not established:        Established ──► promoted: its Peer becomes the data
//!   replaced at once (a reconnecting peer)   path's, the old session ends quietly
//!                                            Ended / handshake window ──► dropped, nothing changed
//! ```
//! Until a candidate completes TLS and key exchange, the running session, its keys and its peer
//! address stay: a forged (or replayed) reset cannot cut an established link. At most one
//! candidate exists; a newer one replaces it, never the running session.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::counters::{add, bump};
use super::datapath::{ControlInput, DataPath, RECONNECT_DELAY};
use super::peer::{Peer, PeerWire, Peers, TcpSender};
use super::setup::{new_session, unix_now, ProtectionSource};
use super::TunnelParts;
use crate::config::Tunnel;
use crate::io::netlink::Netlink;
use crate::io::tun::TunDevice;
use crate::proto::control_codec::ControlCodec;
use crate::proto::options::PushOptions;
use crate::proto::packet::{peek_opcode, ControlHeader, Opcode, SessionId};
use crate::proto::session::{DataChannelParams, Session, SessionConfig, SessionEnd, SessionEvent};
use crate::proto::vocabulary::{TlsRole, Topology, Transport};
use crate::state::{KeyDerivation, LinkPhase, TunnelPublisher};

/// The longest the control task sleeps without a session timer (it re-checks reconnects).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// A new session the peer started while the running one is established.
struct Candidate {
    session: Session,
    /// Where it came from, and the keys it negotiates: the data path's peer once promoted.
    peer: Arc<Peer>,
}

impl Candidate {
    /// Whether `header` (of a packet from `from`) is this session's.
    fn owns(&self, header: Option<&ControlHeader>, from: SocketAddr) -> bool {
        self.peer.address == from
            && !self.session.is_ended()
            && header
                .is_some_and(|header| self.session.remote_session_id() == Some(header.session_id))
    }
}

/// What a candidate's events decided.
enum CandidateOutcome {
    Pending,
    Established {
        params: DataChannelParams,
        peer_common_name: Option<String>,
    },
    Ended(SessionEnd),
}

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
    /// A TLS server's new session from the peer, beside the established running one until
    /// it is established itself.
    candidate: Option<Candidate>,
    /// Authenticates a TLS client's first server reset before the session binds to it (no
    /// replay state: the session's own codec still checks the packet).
    stateless: ControlCodec,
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
        let stateless = protection.codec(tls_role, unix_now() as u32);
        SingleDriver {
            ifindex: parts.device.as_ref().map_or(0, TunDevice::ifindex),
            tunnel,
            tls_role,
            session_config,
            protection,
            path,
            publisher,
            netlink,
            stateless,
            session: None,
            peer: None,
            candidate: None,
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
            let candidate_timeout = self
                .candidate
                .as_ref()
                .and_then(|candidate| candidate.session.poll_timeout());
            let deadline = self
                .session
                .as_ref()
                .and_then(Session::poll_timeout)
                .unwrap_or(idle)
                .min(candidate_timeout.unwrap_or(idle))
                .min(idle)
                .min(reconnect_at.filter(|_| can_reconnect).unwrap_or(idle));
            let mut ended = None;
            tokio::select! {
                _ = stop.changed() => break,
                message = input.recv() => match message {
                    Some(input) => ended = self.on_input(input),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.on_timeout(Instant::now()),
            }
            // A session that ends hands over to the candidate, if there is one: drain that one
            // as the running session in turn.
            while let Some(end) = ended.take().or(self.drain_events().await) {
                self.on_session_end(end);
                if self.initiates() {
                    reconnect_at = Some(Instant::now() + RECONNECT_DELAY);
                }
                if self.session.is_none() {
                    break;
                }
            }
            self.drain_candidate();
        }
        self.shutdown().await;
    }

    /// The session timers: the running session's and the candidate's.
    fn on_timeout(&mut self, now: Instant) {
        if let (Some(session), Some(peer)) = (self.session.as_mut(), &self.peer) {
            session.handle_timeout(now, peer.activity(&self.path.clock));
        }
        if let Some(candidate) = self.candidate.as_mut() {
            let activity = candidate.peer.activity(&self.path.clock);
            candidate.session.handle_timeout(now, activity);
        }
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
                self.candidate = None;
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
        self.adopt_peer(Arc::new(Peer::new(
            0,
            address,
            wire,
            self.path.clock.now_ms(),
        )));
    }

    /// `peer` becomes the one the data path sends to and receives from.
    fn adopt_peer(&mut self, peer: Arc<Peer>) {
        self.path
            .peers
            .store(Arc::new(Peers::single(Some(peer.clone()))));
        self.peer = Some(peer);
    }

    fn new_session(&mut self) {
        if let Some(peer) = &self.peer {
            peer.mark_received(self.path.clock.now_ms());
        }
        self.session = self.make_session();
    }

    fn make_session(&mut self) -> Option<Session> {
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
        // Over TCP `from` is the connection's peer: packets of a refused second connection are
        // not ours either.
        let from_peer = self.peer.as_ref().is_some_and(|peer| peer.address == from);
        let header = ControlHeader::decode(&bytes).ok().map(|(header, _)| header);
        if self.tls_role == TlsRole::Client {
            self.on_server_packet(now, &bytes, from_peer);
            return None;
        }
        // The running session's own packets: from its peer, under its peer's session id.
        let running = self.session.as_ref().is_some_and(|session| {
            !session.is_ended()
                && from_peer
                && session
                    .remote_session_id()
                    .is_none_or(|remote| header.is_some_and(|header| header.session_id == remote))
        });
        if running {
            if let Some(mut session) = self.session.take() {
                self.feed(&mut session, now, &bytes);
                self.session = Some(session);
            }
            return None;
        }
        if let Some(mut candidate) = self.candidate.take() {
            let owned = candidate.owns(header.as_ref(), from);
            if owned {
                feed(&self.path, &mut candidate.session, now, &bytes);
            }
            self.candidate = Some(candidate);
            if owned {
                return None;
            }
        }
        let is_reset = matches!(peek_opcode(&bytes), Ok((Opcode::HardResetClientV2, _)));
        let udp = self.tunnel.transport == Transport::Udp;
        if !is_reset || (!udp && !from_peer) {
            bump(&self.path.counters.control.control_dropped);
            return None;
        }
        // A new peer session: tried on the side; nothing changes unless its reset
        // authenticates.
        let mut session = self.make_session()?;
        self.feed(&mut session, now, &bytes);
        let remote = session.remote_session_id()?;
        let established = self
            .session
            .as_ref()
            .is_some_and(|running| running.is_established() && !running.is_ended());
        if established {
            self.hold_candidate(session, remote, from);
        } else {
            self.replace_session(session, from, from_peer);
        }
        None
    }

    /// A TLS client hears only its current server; until its session is bound to the server's,
    /// a server reset must acknowledge our own (name our session id), which only who received
    /// our reset can.
    fn on_server_packet(&mut self, now: Instant, bytes: &[u8], from_peer: bool) {
        let Some(mut session) = self.session.take() else {
            bump(&self.path.counters.control.control_dropped);
            return;
        };
        if !from_peer || !self.answers_our_reset(&session, bytes) {
            bump(&self.path.counters.control.control_dropped);
        } else {
            self.feed(&mut session, now, bytes);
        }
        self.session = Some(session);
    }

    /// False only for a server reset that would bind `session` (not bound yet) without
    /// acknowledging its reset. Anything else is the session's to judge (and count).
    fn answers_our_reset(&self, session: &Session, bytes: &[u8]) -> bool {
        let is_server_reset = matches!(peek_opcode(bytes), Ok((Opcode::HardResetServerV2, _)));
        if !is_server_reset || session.remote_session_id().is_some() {
            return true;
        }
        let mut scratch = Vec::new();
        match self.stateless.decode_stateless(bytes, &mut scratch) {
            Ok(packet) => packet.body.remote_session_id == Some(session.local_session_id()),
            Err(_) => true,
        }
    }

    /// The peer started a new session while the running one is established: keep it beside
    /// the running one (replacing an older candidate) until it is established too.
    fn hold_candidate(&mut self, session: Session, remote: SessionId, from: SocketAddr) {
        let wire = match (&self.tunnel.transport, &self.peer) {
            (Transport::Tcp, Some(peer)) => peer.wire.clone(),
            _ => PeerWire::Udp,
        };
        let peer = Arc::new(Peer::new(0, from, wire, self.path.clock.now_ms()));
        let replaced = self.candidate.replace(Candidate { session, peer });
        tracing::info!(
            tunnel = %self.tunnel.name,
            peer = %from,
            session = ?remote,
            replaced_candidate = replaced.is_some(),
            "the peer started a new session; the running one stays until it is established"
        );
    }

    /// No running session, or one still connecting: `session` takes its place at once (a
    /// restarting peer reconnects quickly).
    fn replace_session(&mut self, session: Session, from: SocketAddr, from_peer: bool) {
        if self.session.is_some() {
            tracing::info!(tunnel = %self.tunnel.name, peer = %from, "peer started a new session");
            if let Some(peer) = &self.peer {
                peer.clear_keys();
            }
        }
        self.candidate = None;
        if self.tunnel.transport == Transport::Udp && !from_peer {
            self.set_peer(from, PeerWire::Udp);
        }
        if let Some(peer) = &self.peer {
            peer.mark_received(self.path.clock.now_ms());
        }
        self.session = Some(session);
        // Until the new session is established the link carries nothing: the fast path must
        // not steer flows onto it meanwhile.
        self.set_phase(LinkPhase::Connecting, None);
    }

    /// Acts on the candidate's events: it sends through its own peer and installs keys there;
    /// established, it becomes the running session; ended, it is dropped.
    fn drain_candidate(&mut self) {
        let Some(candidate) = self.candidate.as_mut() else {
            return;
        };
        let now_ms = self.path.clock.now_ms();
        let mut outcome = CandidateOutcome::Pending;
        while let Some(event) = candidate.session.poll_event() {
            let Some(event) = candidate.peer.apply_key_event(event, now_ms) else {
                continue;
            };
            match event {
                SessionEvent::Transmit(bytes) => self.path.send_to_peer(&candidate.peer, &bytes),
                SessionEvent::SendPing => self.path.send_ping(&candidate.peer),
                SessionEvent::Established {
                    params,
                    peer_common_name,
                } => {
                    outcome = CandidateOutcome::Established {
                        params,
                        peer_common_name,
                    }
                }
                SessionEvent::Ended(end) => {
                    outcome = CandidateOutcome::Ended(end);
                    break;
                }
                // A p2p session pushes nothing; key events went to the candidate's peer.
                SessionEvent::Pushed(_)
                | SessionEvent::PeerAuthenticated { .. }
                | SessionEvent::InstallReceiveKey(_)
                | SessionEvent::ActivateSendKey(_)
                | SessionEvent::RetireReceiveKey(_) => {}
            }
        }
        match outcome {
            CandidateOutcome::Pending => {}
            CandidateOutcome::Ended(end) => {
                if let Some(candidate) = self.candidate.take() {
                    tracing::info!(tunnel = %self.tunnel.name, peer = %candidate.peer.address, "the peer's new session did not establish, the running one stays: {end}");
                }
            }
            CandidateOutcome::Established {
                params,
                peer_common_name,
            } => {
                if let Some(candidate) = self.candidate.take() {
                    self.promote(candidate, params, peer_common_name);
                }
            }
        }
    }

    /// The candidate is established: its peer becomes the data path's and the old session
    /// ends quietly (the peer has left it).
    fn promote(
        &mut self,
        candidate: Candidate,
        params: DataChannelParams,
        peer_common_name: Option<String>,
    ) {
        let previous = self.peer.as_ref().map(|peer| peer.address);
        tracing::info!(
            tunnel = %self.tunnel.name,
            peer = %candidate.peer.address,
            previous = ?previous,
            "the peer's new session is established and replaces the running one"
        );
        if let Some(old) = self.peer.take() {
            old.clear_keys();
        }
        self.adopt_peer(candidate.peer);
        self.session = Some(candidate.session);
        self.publish_established(params, peer_common_name);
    }

    fn publish_established(&self, params: DataChannelParams, peer_common_name: Option<String>) {
        let peer = self.peer.as_ref().map(|peer| peer.address);
        tracing::info!(
            tunnel = %self.tunnel.name,
            peer = ?peer,
            cn = ?peer_common_name,
            cipher = %params.cipher,
            tls_ekm = params.tls_ekm,
            "tunnel established"
        );
        let keys = self
            .session
            .as_ref()
            .map_or(0, |session| session.stats().keys_negotiated);
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
            state.keys_negotiated = keys;
        });
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
                } => self.publish_established(params, peer_common_name),
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
        // Without a running session the peer's new one takes its place at once, as a new
        // session would without one.
        if let Some(candidate) = self.candidate.take() {
            if !candidate.session.is_ended() {
                tracing::info!(tunnel = %self.tunnel.name, peer = %candidate.peer.address, "continuing with the peer's new session");
                self.adopt_peer(candidate.peer);
                self.session = Some(candidate.session);
                self.set_phase(LinkPhase::Connecting, None);
            }
        }
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

#[cfg(test)]
mod tests {
    //! The driver against bare peer [`Session`]s on loopback UDP sockets (no tun, no root):
    //! what forged, replayed and genuine new-session resets do to an established link.
    //!
    //! ```text
    //!   End (bare Session, UDP socket A) ─┐  on_input(Packet{from: A})
    //!   End (bare Session, UDP socket C) ─┼──────────────────────────► SingleDriver ── DataPath socket
    //!   forged bytes, any `from` ─────────┘  ◄─── its Transmits, over loopback UDP ───┘
    //! ```
    use std::net::UdpSocket;

    use super::*;
    use crate::config::Config;
    use crate::proto::packet::{ControlBody, ControlPacket, KeyId};
    use crate::runtime::setup;
    use crate::state::Bus;

    const PKI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pki");

    /// One p2p tunnel, `tls` "server" (site-a's certificate) or "client" (site-b's).
    fn tunnel(tls: &str, remote: Option<SocketAddr>, tls_crypt: bool) -> Tunnel {
        let node = if tls == "server" { "site-a" } else { "site-b" };
        let mut body = format!(
            "[[tunnel]]\nname = \"t\"\nrole = \"p2p\"\ntls = \"{tls}\"\ndevice = \"vpn-t\"\n\
             local = \"127.0.0.1:0\"\n\
             ifconfig = {{ local = \"10.99.0.1\", remote = \"10.99.0.2\" }}\n"
        );
        if let Some(remote) = remote {
            body.push_str(&format!("remote = [\"{remote}\"]\n"));
        }
        if tls_crypt {
            body.push_str(&format!("tls_crypt = \"{PKI}/tc.key\"\n"));
        }
        let text = format!(
            "version = 1\n[node]\nname = \"n\"\ncontrol_socket = \"/tmp/n.sock\"\n\
             [pki]\nca = \"{PKI}/ca.crt\"\ncert = \"{PKI}/{node}.crt\"\nkey = \"{PKI}/{node}.key\"\n\
             [interfaces]\nwan = \"wan0\"\n{body}"
        );
        let config = Config::parse(&text, std::path::Path::new("/tmp/n.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        config.tunnels[0].clone()
    }

    fn parts_of(tunnel: &Tunnel) -> (SessionConfig, ProtectionSource) {
        let pki = crate::proto::tls::PkiFiles {
            ca: format!("{PKI}/ca.crt").into(),
            cert: format!("{PKI}/{}.crt", tls_node(tunnel)).into(),
            key: format!("{PKI}/{}.key", tls_node(tunnel)).into(),
            crl: None,
        };
        let role = setup::tls_role(tunnel);
        let tls = setup::tls_setup(&pki, tunnel, role).expect("TLS setup");
        let protection =
            ProtectionSource::load(&tunnel.control_protection).expect("protection key");
        (setup::session_config(tunnel, tls), protection)
    }

    fn tls_node(tunnel: &Tunnel) -> &'static str {
        match setup::tls_role(tunnel) {
            TlsRole::Server => "site-a",
            TlsRole::Client => "site-b",
        }
    }

    fn loopback() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        socket
    }

    /// The driver under test, with its tokio runtime (for `drain_events`).
    struct Harness {
        runtime: tokio::runtime::Runtime,
        driver: SingleDriver,
        address: SocketAddr,
        _control: mpsc::Receiver<ControlInput>,
    }

    impl Harness {
        fn new(tunnel: Tunnel) -> Harness {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (session_config, protection) = parts_of(&tunnel);
            let socket = loopback();
            let address = socket.local_addr().unwrap();
            let (control, control_rx) = mpsc::channel(16);
            let path = Arc::new(DataPath::new("t", Some(Arc::new(socket)), false, control));
            let bus = Bus::new();
            let publisher = bus.publisher("t", SingleDriver::idle_phase(&tunnel));
            let netlink = Arc::new(runtime.block_on(Netlink::new()).expect("rtnetlink socket"));
            let parts = TunnelParts {
                device: None,
                threads: Vec::new(),
            };
            let driver = SingleDriver::new(
                tunnel,
                session_config,
                protection,
                path,
                publisher,
                netlink,
                parts,
            );
            Harness {
                runtime,
                driver,
                address,
                _control: control_rx,
            }
        }

        /// One packet in, then whatever the driver does about its sessions' events.
        fn packet(&mut self, bytes: Vec<u8>, from: SocketAddr) {
            let ended = self.driver.on_input(ControlInput::Packet { bytes, from });
            self.settle(ended);
        }

        fn timeout(&mut self, now: Instant) {
            self.driver.on_timeout(now);
            self.settle(None);
        }

        fn settle(&mut self, mut ended: Option<SessionEnd>) {
            let Harness {
                runtime, driver, ..
            } = self;
            while let Some(end) = ended.take().or(runtime.block_on(driver.drain_events())) {
                driver.on_session_end(end);
                if driver.session.is_none() {
                    break;
                }
            }
            driver.drain_candidate();
        }

        fn phase(&self) -> LinkPhase {
            self.driver.publisher.current().phase
        }

        fn published_peer(&self) -> Option<SocketAddr> {
            self.driver.publisher.current().peer
        }

        /// The data path's peer, and whether it has a send key.
        fn data_peer(&self) -> (Arc<Peer>, bool) {
            let peers = self.driver.path.peers.load();
            let probe = [0x45u8; 20];
            let peer = peers.destination(&probe).expect("a data-path peer").clone();
            let keyed = peer.send_key(self.driver.path.clock.now_ms()).is_some();
            (peer, keyed)
        }

        fn counter(&self, name: &str) -> u64 {
            self.driver.path.counters.snapshot()[name]
        }

        fn running(&self) -> &Session {
            self.driver.session.as_ref().expect("a running session")
        }
    }

    /// The other end: a bare session on its own socket; `sent` keeps every packet it sent.
    struct End {
        session: Session,
        socket: UdpSocket,
        sent: Vec<Vec<u8>>,
        established: bool,
    }

    impl End {
        fn new(tunnel: &Tunnel) -> End {
            let (config, protection) = parts_of(tunnel);
            let session = new_session(
                &config,
                &protection,
                setup::tls_role(tunnel),
                Instant::now(),
            )
            .expect("peer session");
            End {
                session,
                socket: loopback(),
                sent: Vec::new(),
                established: false,
            }
        }

        fn address(&self) -> SocketAddr {
            self.socket.local_addr().unwrap()
        }
    }

    /// Moves packets both ways until nothing moves.
    fn pump(harness: &mut Harness, ends: &mut [&mut End]) {
        for _ in 0..500 {
            let mut moved = false;
            for end in ends.iter_mut() {
                let from = end.address();
                while let Some(event) = end.session.poll_event() {
                    match event {
                        SessionEvent::Transmit(bytes) => {
                            end.sent.push(bytes.clone());
                            harness.packet(bytes, from);
                            moved = true;
                        }
                        SessionEvent::Established { .. } => end.established = true,
                        _ => {}
                    }
                }
                let mut buffer = [0u8; 4096];
                while let Ok((len, source)) = end.socket.recv_from(&mut buffer) {
                    assert_eq!(source, harness.address);
                    end.session.handle_control(Instant::now(), &buffer[..len]);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange never settled");
    }

    fn reset(opcode: Opcode, id: u8) -> Vec<u8> {
        ControlPacket {
            header: ControlHeader {
                opcode,
                key_id: KeyId::ZERO,
                session_id: SessionId([id; 8]),
            },
            body: ControlBody {
                acks: Vec::new(),
                remote_session_id: None,
                message_id: Some(0),
                payload: &[],
            },
        }
        .to_vec()
        .unwrap()
    }

    /// A TLS server end established with `end`.
    fn established_server(tls_crypt: bool, end: &mut End) -> Harness {
        let mut harness = Harness::new(tunnel("server", Some(placeholder()), tls_crypt));
        pump(&mut harness, &mut [end]);
        assert!(end.established, "the peer is established");
        assert_eq!(harness.phase(), LinkPhase::Established);
        assert_eq!(harness.published_peer(), Some(end.address()));
        harness
    }

    /// A configured remote nobody uses (the bare ends are told where the driver is).
    fn placeholder() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn client_tunnel(tls_crypt: bool) -> Tunnel {
        tunnel("client", Some(placeholder()), tls_crypt)
    }

    #[test]
    fn forged_resets_leave_the_established_session_its_keys_and_its_peer() {
        let mut peer = End::new(&client_tunnel(false));
        let mut harness = established_server(false, &mut peer);
        let (data_peer, keyed) = harness.data_peer();
        assert!(keyed);
        let running_id = harness.running().local_session_id();
        let forger = loopback().local_addr().unwrap();
        // From the peer's own address and from another one: each authenticates (nothing to
        // authenticate with) and is held as a candidate; the newer replaces the older.
        harness.packet(reset(Opcode::HardResetClientV2, 1), peer.address());
        harness.packet(reset(Opcode::HardResetClientV2, 2), forger);
        let candidate = harness.driver.candidate.as_ref().expect("a candidate");
        assert_eq!(candidate.peer.address, forger);
        assert_eq!(harness.running().local_session_id(), running_id);
        assert!(harness.running().is_established());
        let (still, keyed) = harness.data_peer();
        assert!(
            Arc::ptr_eq(&still, &data_peer) && keyed,
            "keys and peer kept"
        );
        assert_eq!(harness.phase(), LinkPhase::Established);
        assert_eq!(harness.published_peer(), Some(peer.address()));
        // The link still works: the peer's control traffic reaches the running session.
        pump(&mut harness, &mut [&mut peer]);
        // The candidate never completes: its handshake window ends it, nothing else changes.
        harness.timeout(Instant::now() + Duration::from_secs(61));
        assert!(
            harness.driver.candidate.is_none(),
            "the candidate timed out"
        );
        assert_eq!(harness.running().local_session_id(), running_id);
        assert!(harness.data_peer().1);
        assert_eq!(harness.phase(), LinkPhase::Established);
    }

    #[test]
    fn a_replayed_tls_crypt_reset_is_only_a_candidate() {
        let mut first = End::new(&client_tunnel(true));
        let mut harness = established_server(true, &mut first);
        let captured = first.sent[0].clone();
        // The peer restarts from the same address: its new session takes over once
        // established.
        let mut second = End {
            socket: first.socket.try_clone().unwrap(),
            ..End::new(&client_tunnel(true))
        };
        pump(&mut harness, &mut [&mut second]);
        assert!(second.established);
        assert_eq!(
            harness.running().remote_session_id(),
            Some(second.session.local_session_id())
        );
        let (data_peer, keyed) = harness.data_peer();
        assert!(keyed);
        // The first session's reset, replayed: it authenticates with a fresh replay window,
        // but only ever becomes a candidate.
        for _ in 0..2 {
            harness.packet(captured.clone(), second.address());
        }
        assert!(harness.driver.candidate.is_some());
        assert_eq!(
            harness.running().remote_session_id(),
            Some(second.session.local_session_id())
        );
        let (still, keyed) = harness.data_peer();
        assert!(Arc::ptr_eq(&still, &data_peer) && keyed);
        assert_eq!(harness.phase(), LinkPhase::Established);
        assert_eq!(harness.counter("control_unauthenticated"), 0);
    }

    #[test]
    fn a_restarted_peer_takes_over_from_a_new_address_once_established() {
        let mut first = End::new(&client_tunnel(false));
        let mut harness = established_server(false, &mut first);
        let (old_peer, _) = harness.data_peer();
        let mut second = End::new(&client_tunnel(false));
        // Its reset alone changes nothing yet.
        let reset = match second.session.poll_event() {
            Some(SessionEvent::Transmit(bytes)) => bytes,
            other => panic!("expected the reset, got {other:?}"),
        };
        harness.packet(reset, second.address());
        assert!(harness.driver.candidate.is_some());
        let (still, keyed) = harness.data_peer();
        assert!(Arc::ptr_eq(&still, &old_peer) && keyed);
        assert_eq!(harness.published_peer(), Some(first.address()));
        pump(&mut harness, &mut [&mut second]);
        assert!(second.established);
        assert!(harness.driver.candidate.is_none(), "promoted");
        let (new_peer, keyed) = harness.data_peer();
        assert_eq!(new_peer.address, second.address());
        assert!(keyed && !Arc::ptr_eq(&new_peer, &old_peer));
        assert!(old_peer.send_key(0).is_none(), "the old keys are gone");
        assert_eq!(
            harness.running().remote_session_id(),
            Some(second.session.local_session_id())
        );
        assert_eq!(harness.phase(), LinkPhase::Established);
        assert_eq!(harness.published_peer(), Some(second.address()));
    }

    #[test]
    fn a_tls_client_hears_only_its_server_and_only_a_reset_that_answers_its_own() {
        let mut server = End::new(&tunnel("server", Some(placeholder()), false));
        let mut harness = Harness::new(tunnel("client", Some(server.address()), false));
        harness.driver.set_peer(server.address(), PeerWire::Udp);
        harness.driver.new_session();
        // A server reset that does not acknowledge ours, from the server's address, and
        // anything from elsewhere: dropped, the session stays unbound.
        harness.packet(reset(Opcode::HardResetServerV2, 3), server.address());
        harness.packet(
            reset(Opcode::HardResetServerV2, 4),
            loopback().local_addr().unwrap(),
        );
        assert_eq!(harness.running().remote_session_id(), None);
        assert_eq!(harness.running().stats().malformed, 0, "neither reached it");
        assert_eq!(harness.counter("control_dropped"), 2);
        // The real server: its reset acknowledges ours.
        harness.settle(None);
        pump(&mut harness, &mut [&mut server]);
        assert!(server.established);
        assert_eq!(harness.phase(), LinkPhase::Established);
        let bound = harness.running().remote_session_id();
        assert_eq!(bound, Some(server.session.local_session_id()));
        // Established, a server reset of another session from the server's address binds
        // nothing (the session refuses it); from elsewhere it does not even reach the session.
        harness.packet(reset(Opcode::HardResetServerV2, 5), server.address());
        assert_eq!(harness.running().stats().malformed, 1);
        harness.packet(
            reset(Opcode::HardResetServerV2, 6),
            loopback().local_addr().unwrap(),
        );
        assert_eq!(harness.running().stats().malformed, 1);
        assert_eq!(harness.running().remote_session_id(), bound);
        assert!(harness.running().is_established() && !harness.running().is_ended());
        assert_eq!(
            harness.counter("control_dropped"),
            4,
            "both, one of them by the session"
        );
        assert!(harness.data_peer().1);
    }
}
