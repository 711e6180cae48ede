//! One OpenVPN session with one peer, sans-IO: the control channel (resets, reliability, TLS,
//! key-method 2, push), data-channel key generation, keepalive and renegotiation.
//!
//! The caller feeds it control packets (`handle_control`) and the passage of time
//! (`handle_timeout`), and drains [`SessionEvent`]s: wire packets to send, data-channel keys to
//! install or retire, pushed options, and the end of the session. Data packets never pass
//! through here: the data path holds the keys this session hands out.
//!
//! Key states follow ssl.c: each key id has its own reliability layer and TLS connection; the
//! first packet of a key state is a reset (hard reset for key 0, `SOFT_RESET_V1` after that),
//! then TLS records, then each side's key-method 2 message. A new key becomes the send key once
//! our key-method message is acknowledged (ssl.c `S_GOT_KEY` -> `S_ACTIVE`); the previous key
//! stays as a "lame duck" for receiving during the transition window.
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control_codec::{ControlCodec, ControlCodecError};
use super::data::{CompressionFraming, DataFormat, ReceiveKey, ReplayConfig, SendKey};
use super::key_method::{KeyMethod2, KeyMethodError};
use super::options::{
    encode_control_message, iv_proto, negotiate_p2p, negotiate_server_cipher, p2p_peer_id,
    parse_control_message, ControlMessage, ControlMessageError, PeerInfo, PushOptions,
    P2P_PEER_ID_EKM_LABEL,
};
use super::packet::{KeyId, Opcode, SessionId, PEER_ID_UNSET};
use super::prf::{key_block_from_legacy_prf, KeyBlock, LegacyKeySource};
use super::reliable::{Reliable, ReliableConfig};
use super::tls;
use super::vocabulary::{Cipher, Keepalive, TlsRole, Transport};

/// Largest TLS payload put in one control packet (OpenVPN 2.6 `tls-mtu` default 1250 bytes for
/// the whole packet; headers and protection take the rest).
const DEFAULT_CONTROL_PACKET_SIZE: usize = 1250;
/// How often a client repeats PUSH_REQUEST until the reply arrives (push.c uses one second).
const PUSH_REQUEST_INTERVAL: Duration = Duration::from_secs(1);
/// The TLS plaintext we accept before a complete message; a peer sending more is broken.
const MAX_PENDING_PLAINTEXT: usize = 64 * 1024;

/// Fills a buffer with cryptographically secure random bytes (the caller's RNG).
pub type RandomSource = Box<dyn FnMut(&mut [u8]) + Send>;

/// What this end does beyond TLS.
#[derive(Debug, Clone)]
pub enum SessionMode {
    /// OpenVPN `client` (`pull`): sends PUSH_REQUEST, learns cipher and addresses from the reply.
    Client,
    /// OpenVPN server for one client: answers PUSH_REQUEST with `push` (the per-client fields
    /// cipher, peer-id and key-derivation are filled in here).
    Server {
        /// Options pushed to the client.
        push: PushOptions,
        /// Peer id given to the client for DATA_V2.
        peer_id: u32,
    },
    /// p2p TLS (`tls-server`/`tls-client` with `ifconfig`): both ends negotiate from peer-info.
    P2p,
}

/// The TLS side of this end, with its rustls configuration.
#[derive(Clone)]
pub enum TlsSetup {
    /// TLS client (OpenVPN `tls-client`).
    Client(Arc<rustls::ClientConfig>),
    /// TLS server (OpenVPN `tls-server`).
    Server(Arc<rustls::ServerConfig>),
}

impl TlsSetup {
    fn role(&self) -> TlsRole {
        match self {
            TlsSetup::Client(_) => TlsRole::Client,
            TlsSetup::Server(_) => TlsRole::Server,
        }
    }
}

/// Everything a session needs to know, fixed for its lifetime.
#[derive(Clone)]
pub struct SessionConfig {
    /// Which TLS end, and its configuration.
    pub tls: TlsSetup,
    /// Client, server or p2p behaviour.
    pub mode: SessionMode,
    /// UDP or TCP (replay rules and the options string differ).
    pub transport: Transport,
    /// Acceptable data-channel ciphers, in order of preference.
    pub ciphers: Vec<Cipher>,
    /// The OCC options string sent in key-method 2.
    pub options_string: String,
    /// Peer-info sent in key-method 2.
    pub peer_info: PeerInfo,
    /// Ping after this much silence; declare the peer dead after `timeout` without traffic.
    pub keepalive: Option<Keepalive>,
    /// Renegotiate the data-channel key this often (None: never).
    pub reneg_interval: Option<Duration>,
    /// A key state must be established within this time (OpenVPN `hand-window`, 60 s).
    pub handshake_window: Duration,
    /// How long a replaced key still decrypts (OpenVPN `tran-window`).
    pub transition_window: Duration,
    /// Compression framing agreed by configuration (a pushed one overrides it on clients).
    pub compression: CompressionFraming,
    /// Replay protection of the data channel.
    pub replay: ReplayConfig,
    /// Largest control packet on the wire.
    pub control_packet_size: usize,
    /// The tun MTU (pushed to clients that announce IV_MTU).
    pub tun_mtu: u16,
    /// Server only: the push (and peer id) depend on who the client is. The session emits
    /// [`SessionEvent::PeerAuthenticated`] once TLS reveals the client's certificate and holds
    /// back its PUSH_REPLY until the caller decides with [`Session::set_push`] or
    /// [`Session::refuse`]. False: the push in [`SessionMode::Server`] goes out as configured.
    pub push_per_client: bool,
}

impl SessionConfig {
    /// Defaults matching OpenVPN 2.6 for everything but TLS, mode and ciphers.
    pub fn new(
        tls: TlsSetup,
        mode: SessionMode,
        transport: Transport,
        ciphers: Vec<Cipher>,
    ) -> Self {
        Self {
            tls,
            mode,
            transport,
            ciphers,
            options_string: String::new(),
            peer_info: PeerInfo::default(),
            keepalive: None,
            reneg_interval: Some(Duration::from_secs(3600)),
            handshake_window: Duration::from_secs(60),
            transition_window: Duration::from_secs(3600),
            compression: CompressionFraming::None,
            replay: ReplayConfig::default(),
            control_packet_size: DEFAULT_CONTROL_PACKET_SIZE,
            tun_mtu: 1500,
            push_per_client: false,
        }
    }
}

/// When the data path last saw traffic; the session uses it for keepalive.
#[derive(Debug, Clone, Copy)]
pub struct LinkActivity {
    /// Last authenticated packet (data or control) from the peer.
    pub last_received: Instant,
    /// Last packet we sent to the peer.
    pub last_sent: Instant,
}

/// What the session negotiated for the data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataChannelParams {
    /// The AEAD cipher.
    pub cipher: Cipher,
    /// Keys from the TLS exporter (true) or the legacy PRF.
    pub tls_ekm: bool,
    /// DATA_V2 with a peer id, or DATA_V1.
    pub format: DataFormat,
    /// Compression framing.
    pub compression: CompressionFraming,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// No traffic from the peer within the keepalive timeout (ping-restart).
    PingTimeout,
    /// The peer said it is going away (explicit-exit-notify or EXIT).
    PeerExit,
    /// The peer asked us to reconnect (RESTART).
    PeerRestart,
    /// The first key was not negotiated within the handshake window.
    HandshakeTimeout,
    /// TLS failed: a refused certificate, a protocol error. The text says which.
    TlsFailed(String),
    /// The peer broke the protocol (the text says how) or refused us (AUTH_FAILED).
    Protocol(String),
    /// The peer started a new session (a hard reset with another session id).
    PeerNewSession,
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::PingTimeout => {
                formatter.write_str("no traffic from the peer within the keepalive timeout")
            }
            SessionEnd::PeerExit => formatter.write_str("the peer exited"),
            SessionEnd::PeerRestart => formatter.write_str("the peer asked for a restart"),
            SessionEnd::HandshakeTimeout => formatter
                .write_str("TLS key negotiation did not finish within the handshake window"),
            SessionEnd::TlsFailed(reason) => write!(formatter, "TLS failed: {reason}"),
            SessionEnd::Protocol(reason) => write!(formatter, "protocol error: {reason}"),
            SessionEnd::PeerNewSession => formatter.write_str("the peer started a new session"),
        }
    }
}

/// What the caller must do.
pub enum SessionEvent {
    /// Send this packet to the peer (control channel; unframed).
    Transmit(Vec<u8>),
    /// Start accepting data packets with this key id.
    InstallReceiveKey(Box<ReceiveKey>),
    /// Send data with this key from now on (it replaces the previous send key).
    ActivateSendKey(Arc<SendKey>),
    /// Stop accepting data packets with this key id.
    RetireReceiveKey(KeyId),
    /// The first key is up: the tunnel carries traffic.
    Established {
        /// Negotiated data-channel parameters.
        params: DataChannelParams,
        /// The peer certificate's common name, for logs and status.
        peer_common_name: Option<String>,
    },
    /// A client received its configuration from the server.
    Pushed(PushOptions),
    /// Server with [`SessionConfig::push_per_client`]: the TLS handshake of the first key is
    /// done and the client's certificate verified. Answer with [`Session::set_push`] or
    /// [`Session::refuse`]; no PUSH_REPLY (and no data key) goes out before that.
    PeerAuthenticated {
        /// The common name of the client certificate, if it has one.
        common_name: Option<String>,
    },
    /// Send a keepalive ping on the data channel now.
    SendPing,
    /// The session is over; start a new one (clients) or wait for the peer (servers).
    Ended(SessionEnd),
}

impl std::fmt::Debug for SessionEvent {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEvent::Transmit(bytes) => write!(formatter, "Transmit({} bytes)", bytes.len()),
            SessionEvent::InstallReceiveKey(key) => {
                write!(formatter, "InstallReceiveKey({:?})", key.key_id())
            }
            SessionEvent::ActivateSendKey(key) => {
                write!(formatter, "ActivateSendKey({:?})", key.key_id())
            }
            SessionEvent::RetireReceiveKey(id) => write!(formatter, "RetireReceiveKey({id:?})"),
            SessionEvent::Established {
                params,
                peer_common_name,
            } => write!(formatter, "Established({params:?}, {peer_common_name:?})"),
            SessionEvent::Pushed(options) => write!(formatter, "Pushed({options:?})"),
            SessionEvent::PeerAuthenticated { common_name } => {
                write!(formatter, "PeerAuthenticated({common_name:?})")
            }
            SessionEvent::SendPing => formatter.write_str("SendPing"),
            SessionEvent::Ended(end) => write!(formatter, "Ended({end})"),
        }
    }
}

/// Counters for status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Control packets refused by tls-auth/tls-crypt (wrong key: no answer is sent).
    pub unauthenticated: u64,
    /// Control packets dropped as replays.
    pub replayed: u64,
    /// Control packets that did not parse or did not belong to this session.
    pub malformed: u64,
    /// Keys negotiated, the first one included.
    pub keys_negotiated: u64,
}

/// Where one key state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyPhase {
    /// TLS handshake and key-method exchange in progress.
    Negotiating,
    /// Both key-method messages exchanged; a client waits for PUSH_REPLY for key 0.
    AwaitingPush,
    /// Data keys installed; waiting for the peer to acknowledge our key-method message.
    KeysInstalled,
    /// The send key.
    Active,
    /// Replaced; decrypts until `expires`.
    LameDuck { expires: Instant },
}

struct KeyState {
    key_id: KeyId,
    reliable: Reliable,
    tls: rustls::Connection,
    phase: KeyPhase,
    deadline: Instant,
    peer_reset_received: bool,
    /// TLS bytes not yet handed to the reliability layer (its send window was full).
    tls_backlog: VecDeque<u8>,
    plaintext: Vec<u8>,
    local_key_method: Option<KeyMethod2>,
    remote_key_method: Option<KeyMethod2>,
    send_key: Option<Arc<SendKey>>,
    established_at: Option<Instant>,
}

/// One OpenVPN session. See the module documentation.
pub struct Session {
    config: SessionConfig,
    codec: ControlCodec,
    local_session_id: SessionId,
    remote_session_id: Option<SessionId>,
    keys: Vec<KeyState>,
    params: Option<DataChannelParams>,
    remote_peer_info: Option<PeerInfo>,
    pushed: Option<PushOptions>,
    push_request_due: Option<Instant>,
    keepalive: Option<Keepalive>,
    events: VecDeque<SessionEvent>,
    random: RandomSource,
    clock_anchor: (Instant, u32),
    stats: SessionStats,
    ended: bool,
    established: bool,
    /// Per-client push: whether PeerAuthenticated went out, and whether the caller decided.
    peer_authenticated: bool,
    push_decided: bool,
    /// A PUSH_REQUEST (or a request-push client's implicit one) waiting for the decision.
    push_request_waiting: bool,
}

impl Session {
    /// A session with no key state yet, between `ids` (ours, the peer's if known).
    fn fresh(
        config: SessionConfig,
        codec: ControlCodec,
        (local_session_id, remote_session_id): (SessionId, Option<SessionId>),
        clock_anchor: (Instant, u32),
        random: RandomSource,
    ) -> Session {
        let keepalive = config.keepalive;
        Session {
            config,
            codec,
            local_session_id,
            remote_session_id,
            keys: Vec::new(),
            params: None,
            remote_peer_info: None,
            pushed: None,
            push_request_due: None,
            keepalive,
            events: VecDeque::new(),
            random,
            clock_anchor,
            stats: SessionStats::default(),
            ended: false,
            established: false,
            peer_authenticated: false,
            push_decided: false,
            push_request_waiting: false,
        }
    }

    /// A new session. A TLS client sends its hard reset at once; a TLS server waits for one.
    /// `random` fills buffers with cryptographically secure random bytes; `now_unix` is the wall
    /// clock at `now`, in seconds.
    pub fn new(
        config: SessionConfig,
        codec: ControlCodec,
        now: Instant,
        now_unix: u32,
        mut random: RandomSource,
    ) -> Result<Session, SessionEnd> {
        let mut id = [0u8; 8];
        // OpenVPN drops packets with an all-zero session id; draw until it is not.
        while id == [0; 8] {
            random(&mut id);
        }
        let mut session = Session::fresh(
            config,
            codec,
            (SessionId(id), None),
            (now, now_unix),
            random,
        );
        if session.tls_role() == TlsRole::Client {
            session.start_key_state(now, KeyId::ZERO)?;
            session.flush(now);
        }
        Ok(session)
    }

    /// A UDP server's session created statelessly (OpenVPN 2.6 HMAC cookie,
    /// ssl.c `session_skip_to_pre_start`): the client's hard reset (its message 0) was answered
    /// by [`stateless_reset_reply`] with `cookie` as our session id, and the client has just
    /// echoed that cookie. The session starts as if it had received the client's reset and had
    /// sent its own reset (message 0), already acknowledged; replay ids sent continue after the
    /// stateless reply's. Feed it the echoing packet next with [`handle_control`](Self::handle_control).
    #[allow(clippy::too_many_arguments)]
    pub fn new_server_after_cookie(
        config: SessionConfig,
        mut codec: ControlCodec,
        now: Instant,
        now_unix: u32,
        random: RandomSource,
        cookie: SessionId,
        client_session: SessionId,
    ) -> Result<Session, SessionEnd> {
        if config.tls.role() != TlsRole::Server {
            return Err(SessionEnd::Protocol(
                "a cookie session needs a TLS server".to_string(),
            ));
        }
        if cookie.is_zero() || client_session.is_zero() {
            return Err(SessionEnd::Protocol("a zero session id".to_string()));
        }
        // The stateless reply used replay id 1 of a fresh sequence; ours continue after it
        // (OpenVPN sets the session's tls_wrap send id to 1).
        stateless_reset_reply(&mut codec, now_unix, cookie, client_session)
            .map_err(|error| SessionEnd::Protocol(format!("cannot wrap the reset: {error}")))?;
        let mut session = Session::fresh(
            config,
            codec,
            (cookie, Some(client_session)),
            (now, now_unix),
            random,
        );
        session.start_key_state(now, KeyId::ZERO)?;
        let key = session
            .keys
            .first_mut()
            .ok_or_else(|| SessionEnd::Protocol("no key state".to_string()))?;
        let client_reset = super::packet::ControlBody {
            acks: Vec::new(),
            remote_session_id: None,
            message_id: Some(0),
            payload: &[],
        };
        let our_reset_acked = super::packet::ControlBody {
            acks: vec![0],
            remote_session_id: Some(cookie),
            message_id: None,
            payload: &[],
        };
        key.reliable
            .receive(now, Opcode::HardResetClientV2, &client_reset)
            .and_then(|()| key.reliable.receive(now, Opcode::AckV1, &our_reset_acked))
            .map_err(|error| SessionEnd::Protocol(format!("cannot skip the resets: {error}")))?;
        // The stateless reply already acknowledged the client's reset.
        drop(key.reliable.poll_transmit(now));
        session.process_key_state(now, 0);
        session.flush(now);
        Ok(session)
    }

    /// Our own session id.
    pub fn local_session_id(&self) -> SessionId {
        self.local_session_id
    }

    /// The peer's session id, once known.
    pub fn remote_session_id(&self) -> Option<SessionId> {
        self.remote_session_id
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Negotiated data-channel parameters, once the first key is up.
    pub fn params(&self) -> Option<DataChannelParams> {
        self.params
    }

    /// Whether the first key has been established.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Whether the session has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The effective keepalive (configured, or pushed by the server).
    pub fn keepalive(&self) -> Option<Keepalive> {
        self.keepalive
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    fn tls_role(&self) -> TlsRole {
        self.config.tls.role()
    }

    /// Server with [`SessionConfig::push_per_client`]: what to push to this client and its peer
    /// id, decided after [`SessionEvent::PeerAuthenticated`]. A PUSH_REQUEST that already
    /// arrived is answered now. The per-client fields (cipher, peer-id, key derivation, ping)
    /// are added here as always. Calling it again before the reply went out replaces the push.
    pub fn set_push(&mut self, now: Instant, push: PushOptions, peer_id: u32) {
        if self.ended {
            return;
        }
        if let SessionMode::Server {
            push: configured,
            peer_id: configured_peer_id,
        } = &mut self.config.mode
        {
            *configured = push;
            *configured_peer_id = peer_id;
        }
        self.push_decided = true;
        if std::mem::take(&mut self.push_request_waiting) {
            if let Some(index) = self.key_index(KeyId::ZERO) {
                self.answer_push_request(now, index);
            }
        }
        self.flush(now);
    }

    /// Refuses the authenticated client: `AUTH_FAILED,reason` on the control channel (as OpenVPN
    /// does for a ccd `disable`), then the session ends with [`SessionEnd::Protocol`].
    pub fn refuse(&mut self, now: Instant, reason: &str) {
        if self.ended {
            return;
        }
        self.send_control_message(&format!("AUTH_FAILED,{reason}"));
        self.flush(now);
        self.end(SessionEnd::Protocol(format!("client refused: {reason}")));
    }

    /// Whether a packet is a hard reset that would start a new session with us, for a server
    /// deciding to replace an existing session.
    pub fn is_new_session_reset(&self, packet: &[u8]) -> bool {
        let Ok(header) = super::packet::ControlHeader::decode(packet).map(|(header, _)| header)
        else {
            return false;
        };
        header.opcode == Opcode::HardResetClientV2
            && self.tls_role() == TlsRole::Server
            && self
                .remote_session_id
                .is_some_and(|remote| remote != header.session_id)
    }

    /// Handles one control-channel packet from the peer.
    pub fn handle_control(&mut self, now: Instant, wire: &[u8]) {
        if self.ended {
            return;
        }
        let mut scratch = Vec::new();
        let packet = match self.codec.decode(now, wire, &mut scratch) {
            Ok(packet) => packet,
            Err(ControlCodecError::Unauthenticated) => {
                self.stats.unauthenticated += 1;
                return;
            }
            Err(ControlCodecError::Replay(_)) => {
                self.stats.replayed += 1;
                return;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let header = packet.header;
        let body = packet.body;
        if header.session_id.is_zero() {
            self.stats.malformed += 1;
            return;
        }
        // Acks must be for our session.
        if body
            .remote_session_id
            .is_some_and(|id| id != self.local_session_id)
        {
            self.stats.malformed += 1;
            return;
        }
        let expected_reset = match self.tls_role() {
            TlsRole::Client => Opcode::HardResetServerV2,
            TlsRole::Server => Opcode::HardResetClientV2,
        };
        match self.remote_session_id {
            None => {
                if header.opcode != expected_reset || header.key_id != KeyId::ZERO {
                    self.stats.malformed += 1;
                    return;
                }
                self.remote_session_id = Some(header.session_id);
                // First contact: resend what is unacked at once, as OpenVPN does.
                for key in &mut self.keys {
                    key.reliable.retransmit_all_now(now);
                }
                if self.tls_role() == TlsRole::Server {
                    if let Err(end) = self.start_key_state(now, KeyId::ZERO) {
                        self.end(end);
                        return;
                    }
                }
            }
            Some(remote) if remote != header.session_id => {
                if header.opcode == expected_reset && self.tls_role() == TlsRole::Server {
                    self.end(SessionEnd::PeerNewSession);
                } else {
                    self.stats.malformed += 1;
                }
                return;
            }
            Some(_) => {}
        }

        if header.opcode == Opcode::SoftResetV1 && self.key_index(header.key_id).is_none() {
            // The peer starts a renegotiation: a new key id after our newest.
            let newest = self
                .keys
                .first()
                .map(|key| key.key_id)
                .unwrap_or(KeyId::ZERO);
            if header.key_id != newest.next() || !self.established {
                self.stats.malformed += 1;
                return;
            }
            if let Err(end) = self.start_key_state(now, header.key_id) {
                self.end(end);
                return;
            }
        }
        let Some(index) = self.key_index(header.key_id) else {
            self.stats.malformed += 1;
            return;
        };
        if let Err(error) = self.keys[index].reliable.receive(now, header.opcode, &body) {
            tracing::debug!(%error, "control packet refused by the reliability layer");
            self.stats.malformed += 1;
            return;
        }
        drop(scratch);
        self.process_key_state(now, index);
        self.flush(now);
    }

    /// Handles the passage of time; `activity` tells when the data path last saw traffic.
    pub fn handle_timeout(&mut self, now: Instant, activity: LinkActivity) {
        if self.ended {
            return;
        }
        if let Some(keepalive) = self.keepalive {
            if self.established
                && now.saturating_duration_since(activity.last_received) >= keepalive.timeout
            {
                self.end(SessionEnd::PingTimeout);
                return;
            }
            if self.established
                && now.saturating_duration_since(activity.last_sent) >= keepalive.interval
            {
                self.events.push_back(SessionEvent::SendPing);
            }
        }
        // Handshake windows.
        let first_key_late = self.keys.iter().any(|key| {
            matches!(key.phase, KeyPhase::Negotiating | KeyPhase::AwaitingPush)
                && now >= key.deadline
                && (key.key_id == KeyId::ZERO || !self.established)
        });
        if first_key_late {
            self.end(SessionEnd::HandshakeTimeout);
            return;
        }
        self.keys.retain(|key| {
            !(matches!(key.phase, KeyPhase::Negotiating | KeyPhase::AwaitingPush)
                && now >= key.deadline)
        });
        // Expired lame ducks.
        let mut retired = Vec::new();
        self.keys.retain(|key| match key.phase {
            KeyPhase::LameDuck { expires } if now >= expires => {
                retired.push(key.key_id);
                false
            }
            _ => true,
        });
        for key_id in retired {
            self.events
                .push_back(SessionEvent::RetireReceiveKey(key_id));
        }
        // Renegotiation.
        if let Some(interval) = self.config.reneg_interval {
            let renegotiating = self.renegotiating();
            let due = self
                .active_key()
                .and_then(|key| key.established_at)
                .is_some_and(|at| now.saturating_duration_since(at) >= interval);
            if due && !renegotiating {
                let next = self
                    .keys
                    .first()
                    .map(|key| key.key_id)
                    .unwrap_or(KeyId::ZERO)
                    .next();
                if let Err(end) = self.start_key_state(now, next) {
                    self.end(end);
                    return;
                }
            }
        }
        // Client: repeat PUSH_REQUEST.
        if self.push_request_due.is_some_and(|due| now >= due) {
            self.send_control_message("PUSH_REQUEST");
            self.push_request_due = Some(now + PUSH_REQUEST_INTERVAL);
        }
        for index in 0..self.keys.len() {
            self.process_key_state(now, index);
        }
        self.flush(now);
    }

    /// The next instant `handle_timeout` should be called (keepalive is checked by the caller at
    /// least every second as well, since activity is tracked outside).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |current| current.min(at)));
            }
        };
        for key in &self.keys {
            consider(key.reliable.next_deadline());
            match key.phase {
                KeyPhase::Negotiating | KeyPhase::AwaitingPush => consider(Some(key.deadline)),
                KeyPhase::LameDuck { expires } => consider(Some(expires)),
                _ => {}
            }
            // While a newer key is under way the renegotiation is not due again (an instant
            // already past would make the caller spin).
            if key.phase == KeyPhase::Active && !self.renegotiating() {
                if let (Some(interval), Some(at)) = (self.config.reneg_interval, key.established_at)
                {
                    consider(Some(at + interval));
                }
            }
        }
        consider(self.push_request_due);
        next
    }

    /// Says goodbye: an `EXIT` on the control channel when the peer understands it (cc-exit).
    /// Returns whether it did; otherwise the caller sends explicit-exit-notify on the data channel.
    pub fn close(&mut self, now: Instant) -> bool {
        let cc_exit = self
            .remote_peer_info
            .as_ref()
            .is_some_and(|info| info.supports(iv_proto::CC_EXIT_NOTIFY));
        if cc_exit && self.established {
            self.send_control_message("EXIT");
            self.flush(now);
        }
        self.ended = true;
        cc_exit
    }

    /// Server going away: tells the client to reconnect, with `RESTART,[N]` (`next_server`) to
    /// its next `remote` at once (push.c `server_pushed_signal`; what an OpenVPN server with
    /// `explicit-exit-notify 2` sends). Works with every 2.x client, cc-exit or not. Returns
    /// whether the message could go out (the session was established).
    pub fn restart_peer(&mut self, now: Instant, next_server: bool) -> bool {
        let sent = self.established && !self.ended;
        if sent {
            self.send_control_message(if next_server {
                "RESTART,[N]"
            } else {
                "RESTART"
            });
            self.flush(now);
        }
        self.ended = true;
        sent
    }

    fn end(&mut self, end: SessionEnd) {
        if !self.ended {
            self.ended = true;
            self.events.push_back(SessionEvent::Ended(end));
        }
    }

    fn key_index(&self, key_id: KeyId) -> Option<usize> {
        self.keys.iter().position(|key| key.key_id == key_id)
    }

    /// Whether a key state newer than the active one is still being set up (until its send
    /// key activates, including the wait for the peer's ack of our key-method message).
    fn renegotiating(&self) -> bool {
        self.keys.iter().any(|key| {
            matches!(
                key.phase,
                KeyPhase::Negotiating | KeyPhase::AwaitingPush | KeyPhase::KeysInstalled
            )
        })
    }

    fn active_key(&self) -> Option<&KeyState> {
        self.keys.iter().find(|key| key.phase == KeyPhase::Active)
    }

    /// Starts key state `key_id`: queues its reset and a fresh TLS connection.
    fn start_key_state(&mut self, now: Instant, key_id: KeyId) -> Result<(), SessionEnd> {
        let tls = match &self.config.tls {
            TlsSetup::Client(config) => {
                rustls::ClientConnection::new(config.clone(), tls::server_name())
                    .map(rustls::Connection::from)
            }
            TlsSetup::Server(config) => {
                rustls::ServerConnection::new(config.clone()).map(rustls::Connection::from)
            }
        }
        .map_err(|error| SessionEnd::TlsFailed(tls::describe_tls_error(&error)))?;
        let mut reliable = Reliable::new(ReliableConfig::default());
        let opcode = if key_id == KeyId::ZERO {
            match self.tls_role() {
                TlsRole::Client => Opcode::HardResetClientV2,
                TlsRole::Server => Opcode::HardResetServerV2,
            }
        } else {
            Opcode::SoftResetV1
        };
        reliable
            .send(now, opcode, Vec::new())
            .map_err(|error| SessionEnd::Protocol(format!("cannot queue the reset: {error}")))?;
        // Keep one negotiating, one active and one lame duck at most: drop the oldest others.
        while self.keys.len() >= 3 {
            if let Some(old) = self.keys.pop() {
                self.events
                    .push_back(SessionEvent::RetireReceiveKey(old.key_id));
            }
        }
        self.keys.insert(
            0,
            KeyState {
                key_id,
                reliable,
                tls,
                phase: KeyPhase::Negotiating,
                deadline: now + self.config.handshake_window,
                peer_reset_received: false,
                tls_backlog: VecDeque::new(),
                plaintext: Vec::new(),
                local_key_method: None,
                remote_key_method: None,
                send_key: None,
                established_at: None,
            },
        );
        Ok(())
    }

    /// Moves one key state forward as far as its input allows.
    fn process_key_state(&mut self, now: Instant, index: usize) {
        loop {
            let Some(key) = self.keys.get_mut(index) else {
                return;
            };
            let Some((opcode, payload)) = key.reliable.pop_received() else {
                break;
            };
            match opcode {
                Opcode::HardResetClientV2 | Opcode::HardResetServerV2 | Opcode::SoftResetV1 => {
                    key.peer_reset_received = true;
                }
                Opcode::ControlV1 => {
                    let mut reader: &[u8] = &payload;
                    while !reader.is_empty() {
                        match key.tls.read_tls(&mut reader) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(error) => {
                                let reason = format!("TLS input refused: {error}");
                                self.fail_key(index, SessionEnd::TlsFailed(reason));
                                return;
                            }
                        }
                        if let Err(error) = key.tls.process_new_packets() {
                            // Let rustls put its alert on the wire before we give up.
                            let reason = tls::describe_tls_error(&error);
                            self.drain_tls_output(index);
                            self.fail_key(index, SessionEnd::TlsFailed(reason));
                            return;
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(key) = self.keys.get_mut(index) else {
            return;
        };
        // Read TLS plaintext.
        let mut buffer = [0u8; 4096];
        loop {
            match key.tls.reader().read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => {
                    key.plaintext.extend_from_slice(&buffer[..read]);
                    if key.plaintext.len() > MAX_PENDING_PLAINTEXT {
                        self.fail_key(
                            index,
                            SessionEnd::Protocol("oversized control message".into()),
                        );
                        return;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    self.fail_key(
                        index,
                        SessionEnd::TlsFailed(format!("TLS stream ended: {error}")),
                    );
                    return;
                }
            }
        }
        // Per-client push: tell the caller who the client is as soon as TLS says so.
        if self.config.push_per_client
            && !self.peer_authenticated
            && !key.tls.is_handshaking()
            && key.key_id == KeyId::ZERO
            && matches!(self.config.mode, SessionMode::Server { .. })
        {
            self.peer_authenticated = true;
            let common_name = match &key.tls {
                rustls::Connection::Client(connection) => tls::peer_common_name(connection),
                rustls::Connection::Server(connection) => tls::peer_common_name(connection),
            };
            self.events
                .push_back(SessionEvent::PeerAuthenticated { common_name });
        }
        let Some(key) = self.keys.get_mut(index) else {
            return;
        };
        // Our key-method message once the handshake is done.
        if !key.tls.is_handshaking() && key.local_key_method.is_none() {
            let message = self.our_key_method();
            let key = &mut self.keys[index];
            let mut encoded = Vec::new();
            if let Err(error) = message.encode(&mut encoded) {
                self.fail_key(
                    index,
                    SessionEnd::Protocol(format!("cannot encode key-method 2: {error}")),
                );
                return;
            }
            if let Err(error) = key.tls.writer().write_all(&encoded) {
                self.fail_key(
                    index,
                    SessionEnd::TlsFailed(format!("cannot write key-method 2: {error}")),
                );
                return;
            }
            key.local_key_method = Some(message);
        }
        self.parse_plaintext(now, index);
        self.maybe_install_keys(now, index);
        self.maybe_activate(now, index);
    }

    fn our_key_method(&mut self) -> KeyMethod2 {
        let mut random1 = [0u8; 32];
        let mut random2 = [0u8; 32];
        (self.random)(&mut random1);
        (self.random)(&mut random2);
        let pre_master = if self.tls_role() == TlsRole::Client {
            let mut secret = [0u8; 48];
            (self.random)(&mut secret);
            Some(secret)
        } else {
            None
        };
        KeyMethod2 {
            pre_master,
            random1,
            random2,
            options: self.config.options_string.clone(),
            username: None,
            password: None,
            peer_info: Some(self.config.peer_info.to_wire()),
        }
    }

    fn parse_plaintext(&mut self, now: Instant, index: usize) {
        let from_tls_client = self.tls_role() == TlsRole::Server;
        let Some(key) = self.keys.get_mut(index) else {
            return;
        };
        if key.remote_key_method.is_none() {
            match KeyMethod2::decode(&key.plaintext, from_tls_client) {
                Ok((message, consumed)) => {
                    key.plaintext.drain(..consumed.min(key.plaintext.len()));
                    if let Some(info) = &message.peer_info {
                        self.remote_peer_info = Some(PeerInfo::parse(info));
                    }
                    let key = &mut self.keys[index];
                    key.remote_key_method = Some(message);
                }
                Err(KeyMethodError::Incomplete) => return,
                Err(error) => {
                    self.fail_key(
                        index,
                        SessionEnd::Protocol(format!("bad key-method message: {error}")),
                    );
                    return;
                }
            }
        }
        // Control messages (NUL-terminated strings).
        loop {
            let Some(key) = self.keys.get_mut(index) else {
                return;
            };
            let (message, consumed) = match parse_control_message(&key.plaintext) {
                Ok((message, consumed)) => (OwnedControlMessage::from(message), consumed),
                Err(ControlMessageError::NotPrintable { skip }) => {
                    key.plaintext.drain(..skip.min(key.plaintext.len()));
                    continue;
                }
                Err(_) => return,
            };
            key.plaintext.drain(..consumed.min(key.plaintext.len()));
            self.handle_control_message(now, index, message);
            if self.ended {
                return;
            }
        }
    }

    fn handle_control_message(&mut self, now: Instant, index: usize, message: OwnedControlMessage) {
        match message {
            OwnedControlMessage::PushRequest => {
                if let SessionMode::Server { .. } = self.config.mode {
                    self.answer_push_request(now, index);
                }
            }
            OwnedControlMessage::PushReply(options) => {
                if matches!(self.config.mode, SessionMode::Client) && self.params.is_none() {
                    self.handle_push_reply(now, index, &options);
                }
            }
            OwnedControlMessage::Exit => self.end(SessionEnd::PeerExit),
            OwnedControlMessage::Restart => self.end(SessionEnd::PeerRestart),
            OwnedControlMessage::AuthFailed(reason) => self.end(SessionEnd::Protocol(format!(
                "the server refused us: AUTH_FAILED {reason}"
            ))),
            OwnedControlMessage::Other(text) => {
                tracing::debug!(message = %text, "ignoring control message");
            }
        }
    }

    fn answer_push_request(&mut self, now: Instant, index: usize) {
        if self.config.push_per_client && !self.push_decided {
            // Answered by set_push, once the caller knows who the client is.
            self.push_request_waiting = true;
            return;
        }
        let SessionMode::Server { push, peer_id } = &self.config.mode else {
            return;
        };
        let mut reply = push.clone();
        let peer_info = self.remote_peer_info.clone().unwrap_or_default();
        let peer_options = self.keys[index]
            .remote_key_method
            .as_ref()
            .map(|message| message.options.clone())
            .unwrap_or_default();
        let cipher = match self.params {
            Some(params) => params.cipher,
            None => {
                match negotiate_server_cipher(&self.config.ciphers, &peer_info, &peer_options) {
                    Ok(cipher) => cipher,
                    Err(error) => {
                        self.send_control_message(&format!("AUTH_FAILED,{error}"));
                        self.end(SessionEnd::Protocol(format!(
                            "no common data cipher: {error}"
                        )));
                        return;
                    }
                }
            }
        };
        let tls_ekm = peer_info.supports(iv_proto::TLS_KEY_EXPORT);
        let data_v2 = peer_info.supports(iv_proto::DATA_V2);
        reply.add_per_client(&peer_info, *peer_id, cipher, self.config.tun_mtu);
        if let Some(keepalive) = self.keepalive {
            reply.ping = Some(keepalive.interval.as_secs() as u32);
            reply.ping_restart = Some(keepalive.timeout.as_secs() as u32);
        }
        self.params = Some(DataChannelParams {
            cipher,
            tls_ekm,
            format: if data_v2 {
                DataFormat::V2 { peer_id: *peer_id }
            } else {
                DataFormat::V1
            },
            compression: self.config.compression,
        });
        self.send_control_message(&reply.to_reply());
        self.maybe_install_keys(now, index);
        self.maybe_activate(now, index);
    }

    fn handle_push_reply(&mut self, now: Instant, index: usize, options: &str) {
        let parsed = match PushOptions::parse(options) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.end(SessionEnd::Protocol(format!(
                    "unusable PUSH_REPLY: {error}"
                )));
                return;
            }
        };
        let merged = match self.pushed.take() {
            Some(mut earlier) => {
                earlier.merge(parsed);
                earlier
            }
            None => parsed,
        };
        if merged.continuation == Some(2) {
            // More parts follow.
            self.pushed = Some(merged);
            return;
        }
        let cipher = match merged.cipher {
            Some(cipher) if self.config.ciphers.contains(&cipher) => cipher,
            Some(cipher) => {
                self.end(SessionEnd::Protocol(format!(
                    "the server pushed cipher {cipher}, which is not in our ciphers"
                )));
                return;
            }
            None => match self.config.ciphers.first() {
                Some(&cipher) => cipher,
                None => {
                    self.end(SessionEnd::Protocol("no data cipher configured".into()));
                    return;
                }
            },
        };
        if let (Some(ping), Some(restart)) = (merged.ping, merged.ping_restart) {
            if self.config.keepalive.is_none() && ping > 0 && restart > ping {
                self.keepalive = Some(Keepalive {
                    interval: Duration::from_secs(u64::from(ping)),
                    timeout: Duration::from_secs(u64::from(restart)),
                });
            }
        }
        self.params = Some(DataChannelParams {
            cipher,
            tls_ekm: merged.key_derivation_tls_ekm,
            format: match merged.peer_id {
                Some(peer_id) if peer_id != PEER_ID_UNSET => DataFormat::V2 { peer_id },
                _ => DataFormat::V1,
            },
            compression: merged
                .compression
                .as_deref()
                .map_or(self.config.compression, pushed_compression),
        });
        self.push_request_due = None;
        self.events.push_back(SessionEvent::Pushed(merged));
        self.maybe_install_keys(now, index);
        self.maybe_activate(now, index);
    }

    /// Derives and hands out the data keys once both key-method messages are known and the
    /// parameters are settled.
    fn maybe_install_keys(&mut self, now: Instant, index: usize) {
        let Some(key) = self.keys.get(index) else {
            return;
        };
        if !matches!(key.phase, KeyPhase::Negotiating | KeyPhase::AwaitingPush) {
            return;
        }
        let (Some(_), Some(remote)) = (&key.local_key_method, &key.remote_key_method) else {
            return;
        };
        if self.params.is_none() {
            match &self.config.mode {
                SessionMode::Client => {
                    // Key 0: the server pushes cipher and key derivation.
                    if self.push_request_due.is_none() {
                        self.keys[index].phase = KeyPhase::AwaitingPush;
                        self.send_control_message("PUSH_REQUEST");
                        self.push_request_due = Some(now + PUSH_REQUEST_INTERVAL);
                    }
                    return;
                }
                SessionMode::Server { .. } => {
                    // Key 0: the push settles the parameters. A 2.6 client announcing
                    // request-push expects it without asking; others send PUSH_REQUEST.
                    self.keys[index].phase = KeyPhase::AwaitingPush;
                    let asks_for_push = self
                        .remote_peer_info
                        .as_ref()
                        .is_some_and(|info| info.supports(iv_proto::REQUEST_PUSH));
                    if asks_for_push {
                        self.answer_push_request(now, index);
                    }
                    return;
                }
                SessionMode::P2p => {
                    let peer_info = self.remote_peer_info.clone().unwrap_or_default();
                    let options = remote.options.clone();
                    match negotiate_p2p(&self.config.ciphers, self.tls_role(), &peer_info, &options)
                    {
                        Ok((cipher, tls_ekm)) => {
                            // Both ends send DATA_V2 with one peer id: exported from TLS with
                            // TLS-EKM, a fixed value otherwise (ssl_ncp.c p2p_ncp_set_options).
                            let mut ekm_peer_id = [0u8; 3];
                            if tls_ekm {
                                let exported = match &self.keys[index].tls {
                                    rustls::Connection::Client(c) => c.export_keying_material(
                                        [0u8; 3],
                                        P2P_PEER_ID_EKM_LABEL.as_bytes(),
                                        None,
                                    ),
                                    rustls::Connection::Server(c) => c.export_keying_material(
                                        [0u8; 3],
                                        P2P_PEER_ID_EKM_LABEL.as_bytes(),
                                        None,
                                    ),
                                };
                                match exported {
                                    Ok(bytes) => ekm_peer_id = bytes,
                                    Err(error) => {
                                        self.end(SessionEnd::TlsFailed(format!(
                                            "TLS key export failed: {error}"
                                        )));
                                        return;
                                    }
                                }
                            }
                            self.params = Some(DataChannelParams {
                                cipher,
                                tls_ekm,
                                format: match p2p_peer_id(&peer_info, tls_ekm, ekm_peer_id) {
                                    Some(peer_id) => DataFormat::V2 { peer_id },
                                    None => DataFormat::V1,
                                },
                                compression: self.config.compression,
                            });
                        }
                        Err(error) => {
                            self.end(SessionEnd::Protocol(format!(
                                "no common data cipher: {error}"
                            )));
                            return;
                        }
                    }
                }
            }
        }
        let Some(params) = self.params else { return };
        let block = match self.key_block(index, params.tls_ekm) {
            Ok(block) => block,
            Err(end) => {
                self.fail_key(index, end);
                return;
            }
        };
        let role = self.tls_role();
        let keys = block.data_channel_keys(params.cipher, role);
        let key_id = self.keys[index].key_id;
        let send = SendKey::new(key_id, params.format, &keys.send, params.compression);
        let receive = ReceiveKey::new(
            key_id,
            &keys.receive,
            params.compression,
            self.config.replay,
        );
        match (send, receive) {
            (Ok(send), Ok(receive)) => {
                let key = &mut self.keys[index];
                key.send_key = Some(Arc::new(send));
                key.phase = KeyPhase::KeysInstalled;
                self.events
                    .push_back(SessionEvent::InstallReceiveKey(Box::new(receive)));
            }
            (Err(error), _) | (_, Err(error)) => {
                self.fail_key(
                    index,
                    SessionEnd::Protocol(format!("cannot set up data keys: {error}")),
                );
            }
        }
    }

    fn key_block(&self, index: usize, tls_ekm: bool) -> Result<KeyBlock, SessionEnd> {
        let key = &self.keys[index];
        if tls_ekm {
            let exported = match &key.tls {
                rustls::Connection::Client(connection) => tls::export_data_keys(connection),
                rustls::Connection::Server(connection) => tls::export_data_keys(connection),
            };
            return exported
                .map_err(|error| SessionEnd::TlsFailed(format!("TLS key export failed: {error}")));
        }
        let (Some(local), Some(remote)) = (&key.local_key_method, &key.remote_key_method) else {
            return Err(SessionEnd::Protocol("key-method messages missing".into()));
        };
        let (client, server) = match self.tls_role() {
            TlsRole::Client => (local, remote),
            TlsRole::Server => (remote, local),
        };
        let Some(pre_master) = client.pre_master.as_ref() else {
            return Err(SessionEnd::Protocol(
                "the TLS client's key-method message lacks pre_master".into(),
            ));
        };
        let Some(remote_session) = self.remote_session_id else {
            return Err(SessionEnd::Protocol("no peer session id".into()));
        };
        let (client_session, server_session) = match self.tls_role() {
            TlsRole::Client => (self.local_session_id, remote_session),
            TlsRole::Server => (remote_session, self.local_session_id),
        };
        Ok(key_block_from_legacy_prf(&LegacyKeySource {
            pre_master,
            client_random1: &client.random1,
            server_random1: &server.random1,
            client_random2: &client.random2,
            server_random2: &server.random2,
            client_session_id: client_session.as_bytes(),
            server_session_id: server_session.as_bytes(),
        }))
    }

    /// A key with installed keys becomes the send key once the peer acknowledged our key-method
    /// message (so it can decrypt what we send).
    fn maybe_activate(&mut self, now: Instant, index: usize) {
        let Some(key) = self.keys.get(index) else {
            return;
        };
        // Our key-method message may still sit in rustls's buffer (written, not yet drained
        // into the reliability layer): that is not acknowledged either.
        if key.phase != KeyPhase::KeysInstalled
            || !key.reliable.all_acked()
            || !key.tls_backlog.is_empty()
            || key.tls.wants_write()
        {
            return;
        }
        let Some(send_key) = key.send_key.clone() else {
            return;
        };
        let key_id = key.key_id;
        let transition = self.config.transition_window;
        for other in self.keys.iter_mut() {
            if other.phase == KeyPhase::Active {
                other.phase = KeyPhase::LameDuck {
                    expires: now + transition,
                };
            }
        }
        let key = &mut self.keys[index];
        key.phase = KeyPhase::Active;
        key.established_at = Some(now);
        self.stats.keys_negotiated += 1;
        self.events
            .push_back(SessionEvent::ActivateSendKey(send_key));
        if !self.established {
            self.established = true;
            let peer_common_name = match &self.keys[index].tls {
                rustls::Connection::Client(connection) => tls::peer_common_name(connection),
                rustls::Connection::Server(connection) => tls::peer_common_name(connection),
            };
            if let Some(params) = self.params {
                self.events.push_back(SessionEvent::Established {
                    params,
                    peer_common_name,
                });
            }
        } else {
            tracing::info!(key_id = key_id.get(), "data channel key renegotiated");
        }
    }

    fn fail_key(&mut self, index: usize, end: SessionEnd) {
        let key_id = self.keys.get(index).map(|key| key.key_id);
        if key_id == Some(KeyId::ZERO) || !self.established {
            self.end(end);
        } else {
            tracing::warn!(reason = %end, "renegotiation failed; keeping the current key");
            self.keys.remove(index);
        }
    }

    fn send_control_message(&mut self, text: &str) {
        // Control messages go on the newest key state whose TLS is up.
        let Some(index) = self.keys.iter().position(|key| !key.tls.is_handshaking()) else {
            return;
        };
        let mut bytes = Vec::new();
        if encode_control_message(text, &mut bytes).is_err() {
            tracing::warn!("refusing to send a control message with a NUL byte");
            return;
        }
        if let Err(error) = self.keys[index].tls.writer().write_all(&bytes) {
            tracing::warn!(%error, "cannot write a control message");
        }
    }

    fn drain_tls_output(&mut self, index: usize) {
        let Some(key) = self.keys.get_mut(index) else {
            return;
        };
        let mut output = Vec::new();
        while key.tls.wants_write() {
            if key.tls.write_tls(&mut output).is_err() {
                break;
            }
        }
        key.tls_backlog.extend(output);
    }

    /// Moves TLS output into the reliability layer and reliability output onto the wire.
    fn flush(&mut self, now: Instant) {
        let overhead = self.codec.overhead() + 64;
        let chunk_size = self
            .config
            .control_packet_size
            .saturating_sub(overhead)
            .max(256);
        for index in 0..self.keys.len() {
            // TLS output may only start after the peer's reset for this key arrived, so that a
            // stateless (HMAC cookie) server sees our ack of its reset first.
            if self.keys[index].peer_reset_received {
                self.drain_tls_output(index);
                let key = &mut self.keys[index];
                while !key.tls_backlog.is_empty() && key.reliable.can_send() {
                    let take = key.tls_backlog.len().min(chunk_size);
                    let chunk: Vec<u8> = key.tls_backlog.drain(..take).collect();
                    if key.reliable.send(now, Opcode::ControlV1, chunk).is_err() {
                        break;
                    }
                }
            }
            let key_id = self.keys[index].key_id;
            let outgoing = self.keys[index].reliable.poll_transmit(now);
            for packet in outgoing {
                let body = super::packet::ControlBody {
                    remote_session_id: if packet.acks.is_empty() {
                        None
                    } else {
                        self.remote_session_id
                    },
                    acks: if self.remote_session_id.is_some() {
                        packet.acks
                    } else {
                        Vec::new()
                    },
                    message_id: packet.message_id,
                    payload: &packet.payload,
                };
                if body.message_id.is_none() && body.acks.is_empty() {
                    continue;
                }
                let control = super::packet::ControlPacket {
                    header: super::packet::ControlHeader {
                        opcode: packet.opcode,
                        key_id,
                        session_id: self.local_session_id,
                    },
                    body,
                };
                let mut wire = Vec::new();
                let now_unix = unix_seconds(self.clock_anchor, now);
                match self.codec.encode(now_unix, &control, &mut wire) {
                    Ok(()) => self.events.push_back(SessionEvent::Transmit(wire)),
                    Err(error) => tracing::warn!(%error, "cannot encode a control packet"),
                }
            }
        }
        for index in 0..self.keys.len() {
            self.maybe_activate(now, index);
        }
    }
}

/// What a stateless UDP server makes of a packet from an address without a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstPacket {
    /// A client's hard reset (key 0, message 0): answer with [`stateless_reset_reply`].
    Reset {
        /// The client's session id.
        client_session: SessionId,
    },
    /// A `CONTROL_V1` or `ACK_V1` of the three-way handshake that acknowledges our reply: the
    /// caller checks `echoed` against the cookie it would have sent.
    Echo {
        /// The client's session id.
        client_session: SessionId,
        /// The session id the client acknowledged (our cookie, if it is genuine).
        echoed: SessionId,
    },
}

/// Why [`classify_first_packet`] creates nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirstPacketError {
    /// Unwrapping or decoding failed.
    #[error(transparent)]
    Codec(#[from] ControlCodecError),
    /// Authenticated, but not a packet that can start a session (ssl_pkt.c
    /// `check_session_hmac_and_pkt_id`: only a reset, or message and acked ids at most 1 with
    /// an ack naming our session).
    #[error("not a first packet of the three-way handshake")]
    NotFirst,
}

/// Classifies the first packet(s) from an unknown address without keeping state (ssl.c
/// `tls_pre_decrypt_lite`): authenticated by the codec's tls-auth/tls-crypt, replay ids not
/// checked (the session created later checks them).
pub fn classify_first_packet(
    codec: &ControlCodec,
    wire: &[u8],
) -> Result<FirstPacket, FirstPacketError> {
    let mut scratch = Vec::new();
    let packet = codec.decode_stateless(wire, &mut scratch)?;
    let header = packet.header;
    let body = packet.body;
    if header.key_id != KeyId::ZERO || header.session_id.is_zero() {
        return Err(FirstPacketError::NotFirst);
    }
    match header.opcode {
        Opcode::HardResetClientV2 if body.message_id == Some(0) => Ok(FirstPacket::Reset {
            client_session: header.session_id,
        }),
        Opcode::ControlV1 | Opcode::AckV1 => {
            let echoed = body.remote_session_id.ok_or(FirstPacketError::NotFirst)?;
            let small = |id: &u32| *id <= 1;
            if body.acks.is_empty()
                || !body.acks.iter().all(small)
                || !body.message_id.iter().all(small)
            {
                return Err(FirstPacketError::NotFirst);
            }
            Ok(FirstPacket::Echo {
                client_session: header.session_id,
                echoed,
            })
        }
        _ => Err(FirstPacketError::NotFirst),
    }
}

/// The stateless answer to a client's hard reset (ssl_pkt.c `tls_reset_standalone`):
/// `HARD_RESET_SERVER_V2` with `cookie` as our session id, acknowledging the client's message 0,
/// itself message 0, no payload, wrapped by `codec` (use a fresh codec per reply, so its
/// replay id is 1 as OpenVPN's `reset_packet_id_send` makes it).
pub fn stateless_reset_reply(
    codec: &mut ControlCodec,
    now_unix: u32,
    cookie: SessionId,
    client_session: SessionId,
) -> Result<Vec<u8>, ControlCodecError> {
    let packet = super::packet::ControlPacket {
        header: super::packet::ControlHeader {
            opcode: Opcode::HardResetServerV2,
            key_id: KeyId::ZERO,
            session_id: cookie,
        },
        body: super::packet::ControlBody {
            acks: vec![0],
            remote_session_id: Some(client_session),
            message_id: Some(0),
            payload: &[],
        },
    };
    let mut wire = Vec::new();
    codec.encode(now_unix, &packet, &mut wire)?;
    Ok(wire)
}

/// Control messages with owned text, so the plaintext buffer can be drained while handling them.
enum OwnedControlMessage {
    PushRequest,
    PushReply(String),
    Exit,
    Restart,
    AuthFailed(String),
    Other(String),
}

impl From<ControlMessage<'_>> for OwnedControlMessage {
    fn from(message: ControlMessage<'_>) -> Self {
        match message {
            ControlMessage::PushRequest => OwnedControlMessage::PushRequest,
            ControlMessage::PushReply(options) => {
                OwnedControlMessage::PushReply(options.to_owned())
            }
            ControlMessage::Exit => OwnedControlMessage::Exit,
            ControlMessage::Restart(_) | ControlMessage::Halt(_) => OwnedControlMessage::Restart,
            ControlMessage::AuthFailed(reason) => {
                OwnedControlMessage::AuthFailed(reason.unwrap_or("").to_owned())
            }
            ControlMessage::Info(text)
            | ControlMessage::InfoPre(text)
            | ControlMessage::Other(text) => OwnedControlMessage::Other(text.to_owned()),
            ControlMessage::AuthPending(_) => OwnedControlMessage::Other("AUTH_PENDING".to_owned()),
        }
    }
}

/// Wall-clock seconds at `now`, from the (instant, unix seconds) pair the caller gave at start:
/// the tls-auth/tls-crypt replay id carries wall-clock time, but this core never reads a clock.
fn unix_seconds(anchor: (Instant, u32), now: Instant) -> u32 {
    let elapsed = now.saturating_duration_since(anchor.0).as_secs();
    anchor.1.wrapping_add(elapsed as u32)
}

/// The framing a pushed `comp-lzo no` / `compress stub|stub-v2` selects (PushOptions only
/// accepts the stubs; anything else keeps no framing).
fn pushed_compression(option: &str) -> CompressionFraming {
    let words: Vec<&str> = option.split_whitespace().collect();
    match words.as_slice() {
        ["comp-lzo", ..] => CompressionFraming::LzoStub,
        ["compress", "stub-v2", ..] | ["compress", "lz4-v2", ..] => CompressionFraming::StubV2,
        ["compress", ..] => CompressionFraming::StubV1,
        _ => CompressionFraming::None,
    }
}
