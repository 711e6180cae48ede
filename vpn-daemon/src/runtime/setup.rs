//! What every tunnel sets up the same way before its first packet: the tun device (with TCP
//! offloads), the UDP socket, control-channel protection keys, and the session configuration.
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

use crate::config::{Addressing, Compress, ControlProtection, Role, Tunnel};
use crate::io::tun::{TunDevice, TunOptions, OFFLOAD_TCP};
use crate::io::udp_batch::set_socket_buffers;
use crate::proto::control_codec::{ControlCodec, Protection};
use crate::proto::data::{CompressionFraming, ReplayConfig};
use crate::proto::keys::StaticKey;
use crate::proto::options::{options_string, OccOptions, OccTransport, PeerInfo, PushOptions};
use crate::proto::session::{
    RandomSource, Session, SessionConfig, SessionEnd, SessionMode, TlsSetup,
};
use crate::proto::tls::{self, PeerChecks, PkiFiles, PkiMaterial};
use crate::proto::tls_auth::TlsAuth;
use crate::proto::tls_crypt::TlsCrypt;
use crate::proto::vocabulary::{KeyDirection, TlsAuthDigest, TlsRole, Transport};

/// Socket buffers we ask for: a burst of 64 KiB super-segments must not overflow them.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// This end's TLS role.
pub(crate) fn tls_role(tunnel: &Tunnel) -> TlsRole {
    match (&tunnel.role, &tunnel.addressing) {
        (Role::Server, _) | (_, Addressing::Server { .. }) => TlsRole::Server,
        (Role::Client, _) => TlsRole::Client,
        (Role::P2p, Addressing::P2p { tls, .. }) => *tls,
        (Role::P2p, _) => TlsRole::Server,
    }
}

/// The rustls side of the tunnel's sessions, from the node PKI and the tunnel's peer checks.
pub(crate) fn tls_setup(
    pki: &PkiFiles,
    tunnel: &Tunnel,
    role: TlsRole,
) -> anyhow::Result<TlsSetup> {
    let pki = PkiMaterial::load(pki).context("loading the PKI")?;
    let checks = PeerChecks {
        remote_cert_tls: tunnel.remote_cert_tls,
        verify_x509_name: tunnel.verify_x509_name.clone(),
    };
    Ok(match role {
        TlsRole::Client => TlsSetup::Client(tls::client_config(&pki, &checks)?),
        TlsRole::Server => TlsSetup::Server(tls::server_config(&pki, &checks)?),
    })
}

/// The configuration every session of `tunnel` starts from. A server's sessions get their
/// push per client ([`SessionConfig::push_per_client`]).
pub(crate) fn session_config(tunnel: &Tunnel, tls: TlsSetup) -> SessionConfig {
    let tls_role = match &tls {
        TlsSetup::Client(_) => TlsRole::Client,
        TlsSetup::Server(_) => TlsRole::Server,
    };
    let mode = match &tunnel.addressing {
        Addressing::Client => SessionMode::Client,
        Addressing::P2p { .. } => SessionMode::P2p,
        Addressing::Server { .. } => SessionMode::Server {
            push: PushOptions::default(),
            peer_id: 0,
        },
    };
    let server = matches!(mode, SessionMode::Server { .. });
    let p2p = matches!(mode, SessionMode::P2p);
    let mut config = SessionConfig::new(tls, mode, tunnel.transport, tunnel.ciphers.clone());
    let ifconfig = match &tunnel.addressing {
        Addressing::P2p { local, remote, .. } => Some((*local, *remote)),
        _ => None,
    };
    let occ_transport = match (tunnel.transport, tls_role) {
        (Transport::Udp, _) => OccTransport::Udp,
        // OCC names the TCP end by TLS role, as OpenVPN's tcp-client / tcp-server.
        (Transport::Tcp, TlsRole::Client) => OccTransport::TcpClient,
        (Transport::Tcp, TlsRole::Server) => OccTransport::TcpServer,
    };
    let (tls_auth, key_direction) = match &tunnel.control_protection {
        ControlProtection::TlsAuth { direction, .. } => (true, *direction),
        _ => (false, None),
    };
    config.options_string = options_string(&OccOptions {
        role: tls_role,
        transport: occ_transport,
        tun_mtu: tunnel.mtu,
        cipher: tunnel.ciphers.first().copied(),
        ifconfig,
        tls_auth,
        key_direction,
    });
    config.tun_mtu = tunnel.mtu;
    config.peer_info = PeerInfo::ours(&tunnel.ciphers, p2p, tunnel.mtu);
    config.keepalive = tunnel.keepalive;
    config.reneg_interval = (!tunnel.reneg_interval.is_zero()).then_some(tunnel.reneg_interval);
    config.compression = match tunnel.compress {
        None => CompressionFraming::None,
        Some(Compress::LzoStub) => CompressionFraming::LzoStub,
        Some(Compress::Stub) => CompressionFraming::StubV1,
        Some(Compress::StubV2) => CompressionFraming::StubV2,
    };
    config.replay = ReplayConfig {
        tcp: tunnel.transport == Transport::Tcp,
        ..ReplayConfig::default()
    };
    config.push_per_client = server;
    config
}

/// The static key material of the control-channel protection, read once per tunnel start.
#[derive(Clone)]
pub(crate) enum ProtectionSource {
    None,
    TlsAuth(Arc<StaticKey>, Option<KeyDirection>, TlsAuthDigest),
    TlsCrypt(Arc<StaticKey>),
}

impl ProtectionSource {
    pub(crate) fn load(protection: &ControlProtection) -> anyhow::Result<ProtectionSource> {
        let read_key = |path: &std::path::Path| -> anyhow::Result<Arc<StaticKey>> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(Arc::new(
                StaticKey::parse(&text).with_context(|| format!("parsing {}", path.display()))?,
            ))
        };
        Ok(match protection {
            ControlProtection::None => ProtectionSource::None,
            ControlProtection::TlsAuth {
                key,
                direction,
                digest,
            } => ProtectionSource::TlsAuth(read_key(key)?, *direction, *digest),
            ControlProtection::TlsCrypt { key } => ProtectionSource::TlsCrypt(read_key(key)?),
        })
    }

    /// A fresh codec state (its own replay window and packet ids).
    pub(crate) fn codec(&self, role: TlsRole, now_unix: u32) -> ControlCodec {
        let protection = match self {
            ProtectionSource::None => Protection::None,
            ProtectionSource::TlsAuth(key, direction, digest) => {
                Protection::TlsAuth(TlsAuth::new(key, *direction, *digest))
            }
            ProtectionSource::TlsCrypt(key) => Protection::TlsCrypt(TlsCrypt::new(key, role)),
        };
        ControlCodec::new(protection, now_unix)
    }
}

/// Wall-clock seconds since the Unix epoch (OpenVPN's packet-id time, cookie slots, status).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// The session's random source: the system RNG.
pub(crate) fn system_random() -> RandomSource {
    Box::new(|buffer: &mut [u8]| {
        use ring::rand::SecureRandom;
        // The system RNG failing is not recoverable; zeroes would be worse than stopping.
        ring::rand::SystemRandom::new()
            .fill(buffer)
            .expect("the system random number generator failed");
    })
}

/// A new session from the tunnel's configuration.
pub(crate) fn new_session(
    config: &SessionConfig,
    protection: &ProtectionSource,
    role: TlsRole,
    now: Instant,
) -> Result<Session, SessionEnd> {
    let now_unix = unix_now() as u32;
    Session::new(
        config.clone(),
        protection.codec(role, now_unix),
        now,
        now_unix,
        system_random(),
    )
}

/// Opens the tun with TCP offloads (virtio-net header, TSO in both directions), so the data
/// path moves 64 KiB super-segments through one syscall; falls back to a plain tun if the
/// kernel refuses.
pub(crate) fn create_tun(name: &str) -> anyhow::Result<TunDevice> {
    let options = TunOptions {
        queues: 1,
        vnet_hdr: true,
        offload: OFFLOAD_TCP,
    };
    let device = match TunDevice::create_with(name, options) {
        Ok(device) => device,
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "tun offloads unavailable, one packet per syscall");
            TunDevice::create(name, 1).with_context(|| format!("creating tun {name}"))?
        }
    };
    disable_ipv6(name);
    Ok(device)
}

/// IPv6 off on a new (still down) tun: tunnels carry IPv4 only, and otherwise the kernel's own
/// link-local chatter (DAD, router solicitations, MLD reports) would cross the tunnel and land
/// in the peer's `dropped_spoofed` counter.
fn disable_ipv6(device: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => {}
        // A kernel without IPv6 has nothing to turn off.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(device, %error, "could not turn off IPv6 on the tun"),
    }
}

/// The tunnel's UDP socket, non-blocking, with large buffers.
pub(crate) fn bind_udp(tunnel: &Tunnel) -> anyhow::Result<UdpSocket> {
    let bind = local_address(tunnel);
    let socket = UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
    socket.set_nonblocking(true)?;
    if let Err(error) = set_socket_buffers(&socket, SOCKET_BUFFER_BYTES) {
        tracing::warn!(%error, "cannot enlarge the UDP socket buffers");
    }
    Ok(socket)
}

/// Where the tunnel listens or sends from: `local`, else any address and port.
pub(crate) fn local_address(tunnel: &Tunnel) -> SocketAddr {
    tunnel
        .local
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// site-a.toml: tunnel 0 is p2p with `tls = "server"`, tunnel 1 is a `role = "server"`.
    fn site_a() -> Config {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/site-a.toml");
        let text = std::fs::read_to_string(&path).expect("reading site-a.toml");
        Config::parse(&text, &path).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn every_role_gets_its_session_mode_from_one_config_function() {
        let config = site_a();
        let p2p = &config.tunnels[0];
        assert_eq!(p2p.role, Role::P2p);
        assert_eq!(tls_role(p2p), TlsRole::Server);
        let setup = tls_setup(&config.pki, p2p, TlsRole::Server).expect("p2p tls");
        let session = session_config(p2p, setup);
        assert!(matches!(session.mode, SessionMode::P2p));
        assert!(!session.push_per_client);

        let server = &config.tunnels[1];
        assert_eq!(server.role, Role::Server);
        assert_eq!(tls_role(server), TlsRole::Server);
        let setup = tls_setup(&config.pki, server, TlsRole::Server).expect("server tls");
        let session = session_config(server, setup);
        assert!(matches!(session.mode, SessionMode::Server { .. }));
        assert!(session.push_per_client, "a server pushes per client");
    }
}
