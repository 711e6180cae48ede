//! Proof against the real thing: a Debian `openvpn` 2.6 `--tls-server` on 127.0.0.1 answers our
//! tls-crypt- and tls-auth-wrapped HARD_RESET_CLIENT_V2 with a HARD_RESET_SERVER_V2 that our
//! unwrap authenticates and that acknowledges our message id 0.
//!
//! ```text
//!   this test (UDP, 127.0.0.1:random)  --HARD_RESET_CLIENT_V2-->  openvpn --tls-server --dev null
//!                                      <--HARD_RESET_SERVER_V2--  (127.0.0.1:free port)
//! ```
//!
//! Test-only: the sans-IO core itself never touches sockets or processes. Needs no root
//! (`--dev null`, loopback UDP). Skips, saying so, where `/usr/sbin/openvpn` is absent.
use std::fs::File;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::control_replay::{ControlReplayWindow, ReplayIdSequence};
use super::keys::StaticKey;
use super::packet::CONTROL_HEADER_LEN;
use super::tls_auth::TlsAuth;
use super::tls_crypt::{TlsCrypt, TlsCryptError};
use super::vocabulary::{KeyDirection, TlsAuthDigest, TlsRole};

const OPENVPN: &str = "/usr/sbin/openvpn";
const HARD_RESET_CLIENT_V2: u8 = 7;
const HARD_RESET_SERVER_V2: u8 = 8;

fn pki(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/pki")
        .join(name)
}

fn static_key(name: &str) -> StaticKey {
    StaticKey::parse(&std::fs::read_to_string(pki(name)).unwrap()).unwrap()
}

/// An `openvpn` process we started; killed by its PID when dropped, also when a test fails.
struct OpenVpnServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for OpenVpnServer {
    fn drop(&mut self) {
        // Child::kill signals exactly this process id.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OpenVpnServer {
    /// Starts `openvpn --tls-server` with `protection` (e.g. `--tls-crypt FILE`) on a free
    /// loopback port and waits until it has bound it. `None` (after printing why) when OpenVPN
    /// is not installed.
    fn start(protection: &[&str]) -> Option<Self> {
        if !Path::new(OPENVPN).exists() {
            // CI installs openvpn (cargo xtask setup): a missing peer there is a failure.
            if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                panic!("{OPENVPN} is not installed and CI=true forbids skipping the interop test");
            }
            eprintln!("SKIPPED: {OPENVPN} is not installed; the OpenVPN interop test did not run");
            return None;
        }
        // A port just freed by the kernel can be taken by someone else before openvpn binds it:
        // try a few.
        for _ in 0..5 {
            let port = UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("openvpn.log");
            let child = Command::new(OPENVPN)
                .args(["--dev", "null", "--proto", "udp4", "--local", "127.0.0.1"])
                .args(["--lport", &port.to_string(), "--tls-server", "--dh", "none"])
                .arg("--ca")
                .arg(pki("ca.crt"))
                .arg("--cert")
                .arg(pki("site-a.crt"))
                .arg("--key")
                .arg(pki("site-a.key"))
                .args(protection)
                .args(["--verb", "4"])
                .stdin(Stdio::null())
                .stdout(File::create(&log).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut server = Self {
                child,
                port,
                log,
                _dir: dir,
            };
            if server.wait_until_bound() {
                return Some(server);
            }
        }
        panic!("openvpn never bound a loopback port");
    }

    /// Waits (at most 10 s) for openvpn to log that it bound its socket; false if it exited.
    fn wait_until_bound(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log_text().contains("link local (bound)") {
                return true;
            }
            if let Ok(Some(_status)) = self.child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("openvpn did not bind in 10 s:\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn socket(&self) -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(("127.0.0.1", self.port)).unwrap();
        socket
    }
}

/// Not cryptographic: only needs to differ between runs and between the two tests.
fn session_id(salt: u8) -> [u8; 8] {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (nanos ^ (u64::from(std::process::id()) << 32) ^ u64::from(salt)).to_be_bytes()
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

/// HARD_RESET_CLIENT_V2, key id 0: header and body (no acks, message id 0, no payload).
fn hard_reset_client(session_id: [u8; 8]) -> ([u8; CONTROL_HEADER_LEN], Vec<u8>) {
    let mut header = [0u8; CONTROL_HEADER_LEN];
    header[0] = HARD_RESET_CLIENT_V2 << 3;
    header[1..].copy_from_slice(&session_id);
    let body = vec![0, 0, 0, 0, 0];
    (header, body)
}

/// Waits up to `timeout` for one datagram.
fn receive(socket: &UdpSocket, timeout: Duration) -> Option<Vec<u8>> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buffer = vec![0u8; 2048];
    match socket.recv(&mut buffer) {
        Ok(len) => {
            buffer.truncate(len);
            Some(buffer)
        }
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(error) => panic!("recv: {error}"),
    }
}

/// Checks the server's reply: HARD_RESET_SERVER_V2 that acks our message id 0, names our
/// session id as the remote one and carries message id 0 itself.
fn assert_server_reset(header: &[u8; CONTROL_HEADER_LEN], body: &[u8], our_session: [u8; 8]) {
    assert_eq!(header[0] >> 3, HARD_RESET_SERVER_V2, "opcode");
    assert_eq!(header[0] & 7, 0, "key id");
    assert_eq!(body.first(), Some(&1), "one ack: {body:02x?}");
    assert_eq!(body.get(1..5), Some(&[0u8, 0, 0, 0][..]), "acked id 0");
    assert_eq!(body.get(5..13), Some(&our_session[..]), "remote session id");
    assert_eq!(body.get(13..17), Some(&[0u8, 0, 0, 0][..]), "message id 0");
}

/// Sends `wrong`, which openvpn must ignore (no answer at all), then `right`, and returns
/// openvpn's answer to `right`.
fn silence_then_reply(
    server: &OpenVpnServer,
    socket: &UdpSocket,
    wrong: &[u8],
    right: &[u8],
) -> Vec<u8> {
    socket.send(wrong).unwrap();
    assert_eq!(
        receive(socket, Duration::from_millis(1500)),
        None,
        "openvpn answered the wrong key"
    );
    socket.send(right).unwrap();
    receive(socket, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reply from openvpn:\n{}", server.log_text()))
}

#[test]
fn openvpn_answers_our_tls_crypt_hard_reset() {
    let key_path = pki("tc.key");
    let Some(server) = OpenVpnServer::start(&["--tls-crypt", key_path.to_str().unwrap()]) else {
        return;
    };
    let key = static_key("tc.key");
    let client = TlsCrypt::new(&key, TlsRole::Client);
    let socket = server.socket();
    let our_session = session_id(1);
    let (header, body) = hard_reset_client(our_session);
    let mut ids = ReplayIdSequence::new(unix_now());

    // Wrapped with the server's direction, openvpn cannot authenticate it and stays silent.
    let mut wrong = Vec::new();
    let wrong_direction = TlsCrypt::new(&key, TlsRole::Server);
    wrong_direction.wrap(&header, ids.next_id(unix_now()).unwrap(), &body, &mut wrong);
    let mut packet = Vec::new();
    client.wrap(
        &header,
        ids.next_id(unix_now()).unwrap(),
        &body,
        &mut packet,
    );
    let reply = silence_then_reply(&server, &socket, &wrong, &packet);

    let mut plaintext = Vec::new();
    let opened = client
        .unwrap(&reply, &mut plaintext)
        .unwrap_or_else(|error| {
            panic!("{error}: {reply:02x?}\n{}", server.log_text());
        });
    assert_server_reset(opened.header, &plaintext, our_session);
    let mut window = ControlReplayWindow::default();
    assert_eq!(
        window.check_and_mark(opened.replay_id, Instant::now()),
        Ok(())
    );
    assert_eq!(
        window.check_and_mark(opened.replay_id, Instant::now()),
        Err(super::control_replay::ReplayError::Duplicate)
    );
    // We cannot open our own packet: we receive with the other key.
    assert_eq!(
        client.unwrap(&packet, &mut Vec::new()),
        Err(TlsCryptError::Unauthenticated)
    );
}

#[test]
fn openvpn_answers_our_tls_auth_hard_reset() {
    let key_path = pki("ta.key");
    let Some(server) = OpenVpnServer::start(&[
        "--tls-auth",
        key_path.to_str().unwrap(),
        "0",
        "--auth",
        "SHA1",
    ]) else {
        return;
    };
    let key = static_key("ta.key");
    let client = TlsAuth::new(&key, Some(KeyDirection::Inverse), TlsAuthDigest::Sha1);
    let socket = server.socket();
    let our_session = session_id(2);
    let (header, body) = hard_reset_client(our_session);
    let mut ids = ReplayIdSequence::new(unix_now());

    // Direction 0 on both sides: openvpn refuses the HMAC and stays silent.
    let mut wrong = Vec::new();
    let wrong_direction = TlsAuth::new(&key, Some(KeyDirection::Normal), TlsAuthDigest::Sha1);
    wrong_direction.wrap(&header, ids.next_id(unix_now()).unwrap(), &body, &mut wrong);
    let mut packet = Vec::new();
    client.wrap(
        &header,
        ids.next_id(unix_now()).unwrap(),
        &body,
        &mut packet,
    );
    let reply = silence_then_reply(&server, &socket, &wrong, &packet);

    let opened = client.unwrap(&reply).unwrap_or_else(|error| {
        panic!("{error}: {reply:02x?}\n{}", server.log_text());
    });
    assert_server_reset(opened.header, opened.body, our_session);
    let mut window = ControlReplayWindow::default();
    assert_eq!(
        window.check_and_mark(opened.replay_id, Instant::now()),
        Ok(())
    );
}
