//! Config loading end to end: the shipped examples, one test per error class (exact line and
//! column), and a mutation test that feeds thousands of broken variants of site-a.toml.
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::proto::tls::PkiFiles;
use crate::proto::vocabulary::{
    CertUsage, Cipher, IfconfigPool, Keepalive, KeyDirection, TlsAuthDigest, TlsRole, Topology,
    Transport,
};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn example_text(name: &str) -> String {
    let path = examples_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// A config path inside examples/, so that "pki/..." resolves to the example PKI. The file
/// itself need not exist: `parse` never reads it.
fn config_path() -> PathBuf {
    examples_dir().join("test.toml")
}

/// Lines 1-9; tests append `[[tunnel]]` tables from line 10 on.
const BASE: &str = r#"version = 1
[node]
name = "test"
[pki]
ca = "pki/ca.crt"
cert = "pki/site-a.crt"
key = "pki/site-a.key"
[interfaces]
wan = "eth0"
"#;

/// A valid p2p tunnel; after [`BASE`] it is lines 10-16, so appended keys land on line 17.
const P2P_TUNNEL: &str = r#"[[tunnel]]
name = "p"
role = "p2p"
local = "0.0.0.0:1194"
remote = ["192.0.2.2:1194"]
tls = "server"
ifconfig = { local = "10.99.0.1", remote = "10.99.0.2" }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &config_path())
}

/// Asserts that `text` fails at exactly `line`:`column` with a reason containing `reason`.
#[track_caller]
fn assert_error(text: &str, line: usize, column: usize, reason: &str) -> ConfigError {
    let error = match parse(text) {
        Ok(config) => panic!("expected an error, got {config:#?}"),
        Err(error) => error,
    };
    assert_eq!(
        (error.line, error.column),
        (line, column),
        "wrong location for: {error}"
    );
    assert!(
        error.reason.contains(reason),
        "reason {:?} does not contain {reason:?}",
        error.reason
    );
    error
}

#[test]
fn base_and_p2p_fragments_are_valid() {
    let config = parse(BASE).unwrap();
    assert!(config.tunnels.is_empty());
    assert_eq!(config.summary(), "test: 0 tunnels, wan eth0");
    let config = parse(&format!("{BASE}{P2P_TUNNEL}")).unwrap();
    assert_eq!(config.summary(), "test: 1 tunnel (p: p2p/udp), wan eth0");
}

#[test]
fn site_a_example_parses_with_the_documented_values() {
    let path = examples_dir().join("site-a.toml");
    let config = Config::load(&path).unwrap_or_else(|error| panic!("{error}"));
    let pki_dir = std::path::absolute(examples_dir().join("pki")).unwrap();
    assert_eq!(config.path, path);
    assert_eq!(config.node.name, "site-a");
    assert_eq!(
        config.node.control_socket,
        PathBuf::from("/run/vpn-daemon/site-a.sock")
    );
    assert_eq!(
        config.pki,
        PkiFiles {
            ca: pki_dir.join("ca.crt"),
            cert: pki_dir.join("site-a.crt"),
            key: pki_dir.join("site-a.key"),
            crl: Some(pki_dir.join("crl.pem")),
        }
    );
    assert_eq!(
        config.interfaces,
        Interfaces {
            wan: "eth0".to_owned(),
            lan: Some("eth1".to_owned()),
            xdp_mode: XdpMode::Auto,
        }
    );
    let [p2p, server] = config.tunnels.as_slice() else {
        panic!("expected two tunnels, got {:#?}", config.tunnels);
    };
    assert_eq!(
        *p2p,
        Tunnel {
            name: "to-site-b".to_owned(),
            role: Role::P2p,
            transport: Transport::Udp,
            local: Some("0.0.0.0:1194".parse().unwrap()),
            remotes: vec!["192.0.2.2:1194".parse().unwrap()],
            device: "vpn-to-site-b".to_owned(),
            ciphers: Cipher::ALL.to_vec(),
            control_protection: ControlProtection::TlsCrypt {
                key: pki_dir.join("tc.key")
            },
            keepalive: Some(Keepalive {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(60),
            }),
            reneg_interval: Duration::from_secs(3600),
            mtu: 1500,
            addressing: Addressing::P2p {
                tls: TlsRole::Server,
                local: Ipv4Addr::new(10, 99, 0, 1),
                remote: Ipv4Addr::new(10, 99, 0, 2),
            },
            routes: vec!["10.2.0.0/16".parse().unwrap()],
            remote_cert_tls: Some(CertUsage::Client),
            verify_x509_name: Some("site-b".to_owned()),
            compress: None,
            fast_path: TunnelFastPath {
                link_group: None,
                weight: 1,
                allowed_sources: None,
            },
            accept_pushed_default_route: false,
        }
    );
    assert_eq!(p2p.listen_port(), Some(1194));
    assert_eq!(server.role, Role::Server);
    assert_eq!(server.transport, Transport::Tcp);
    assert_eq!(server.device, "vpn-clients");
    assert_eq!(server.listen_port(), Some(443));
    assert!(server.remotes.is_empty());
    assert_eq!(
        server.control_protection,
        ControlProtection::TlsAuth {
            key: pki_dir.join("ta.key"),
            direction: Some(KeyDirection::Normal),
            digest: TlsAuthDigest::Sha256,
        }
    );
    assert_eq!(
        server.addressing,
        Addressing::Server {
            subnet: "10.8.0.0/24".parse().unwrap(),
            topology: Topology::Subnet,
            push_routes: vec![
                "10.1.0.0/16".parse().unwrap(),
                "10.2.0.0/16".parse().unwrap()
            ],
            server_address: Ipv4Addr::new(10, 8, 0, 1),
            pool: IfconfigPool {
                start: Ipv4Addr::new(10, 8, 0, 2),
                end: Ipv4Addr::new(10, 8, 0, 253),
            },
            push: vec!["dhcp-option DNS 10.8.0.1".to_owned()],
            client_to_client: false,
            duplicate_cn: false,
            client_config_dir: Some(examples_dir().join("ccd")),
            max_clients: 1024,
        }
    );
    assert_eq!(
        config.summary(),
        "site-a: 2 tunnels (to-site-b: p2p/udp, clients: server/tcp), wan eth0, lan eth1"
    );
    // The daemon's status output serialises the config.
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["tunnels"][0]["ciphers"][2], "CHACHA20-POLY1305");
    assert_eq!(json["tunnels"][1]["role"], "server");
}

#[test]
fn site_b_example_is_the_other_end_of_site_a() {
    let site_a = Config::load(&examples_dir().join("site-a.toml")).unwrap();
    let site_b =
        Config::load(&examples_dir().join("site-b.toml")).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        site_b.summary(),
        "site-b: 1 tunnel (to-site-a: p2p/udp), wan eth0, lan eth1"
    );
    let (a, b) = (&site_a.tunnels[0], &site_b.tunnels[0]);
    let (
        Addressing::P2p {
            tls: a_tls,
            local: a_local,
            remote: a_remote,
        },
        Addressing::P2p {
            tls: b_tls,
            local: b_local,
            remote: b_remote,
        },
    ) = (&a.addressing, &b.addressing)
    else {
        panic!("both ends must be p2p");
    };
    assert_eq!((a_tls, b_tls), (&TlsRole::Server, &TlsRole::Client));
    assert_eq!((a_local, a_remote), (b_remote, b_local));
    assert_eq!(a.control_protection, b.control_protection);
    assert_eq!(b.remote_cert_tls, Some(CertUsage::Server));
}

#[test]
fn defaults_apply_when_optional_keys_are_left_out() {
    let text = format!(
        "{BASE}[[tunnel]]\nname = \"a-rather-long-tunnel-name\"\nrole = \"client\"\nremote = [\"[2001:db8::1]:1194\"]\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.node.control_socket,
        PathBuf::from("/run/vpn-daemon/test.sock")
    );
    assert_eq!(config.interfaces.xdp_mode, XdpMode::Auto);
    assert_eq!(config.pki.crl, None);
    let tunnel = &config.tunnels[0];
    assert_eq!(tunnel.transport, Transport::Udp);
    assert_eq!(tunnel.device, "vpn-a-rather-lo");
    assert_eq!(tunnel.ciphers, Cipher::ALL.to_vec());
    assert_eq!(tunnel.control_protection, ControlProtection::None);
    assert_eq!(tunnel.keepalive, None);
    assert_eq!(tunnel.reneg_interval, Duration::from_secs(3600));
    assert_eq!(tunnel.mtu, 1500);
    assert_eq!(tunnel.addressing, Addressing::Client);
    assert_eq!(tunnel.local, None);
    assert_eq!(tunnel.listen_port(), None);
    assert_eq!(
        tunnel.remotes,
        vec!["[2001:db8::1]:1194".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn reneg_sec_zero_disables_and_ciphers_parse_case_insensitively() {
    let text = format!(
        "{BASE}{P2P_TUNNEL}reneg_sec = 0\nciphers = [\"chacha20-poly1305\", \"AES-128-GCM\"]\n"
    );
    let tunnel = &parse(&text).unwrap().tunnels[0];
    assert_eq!(tunnel.reneg_interval, Duration::ZERO);
    assert_eq!(
        tunnel.ciphers,
        vec![Cipher::Chacha20Poly1305, Cipher::Aes128Gcm]
    );
    assert_eq!(Cipher::Aes256Gcm.to_string(), "AES-256-GCM");
    assert_eq!("AES-256-GCM".parse::<Cipher>(), Ok(Cipher::Aes256Gcm));
}

#[test]
fn p2p_over_tcp_tls_server_end_may_omit_remote() {
    let text = format!(
        "{BASE}[[tunnel]]\nname = \"p\"\nrole = \"p2p\"\ntransport = \"tcp\"\nlocal = \"0.0.0.0:1194\"\ntls = \"server\"\nifconfig = {{ local = \"10.99.0.1\", remote = \"10.99.0.2\" }}\n"
    );
    assert!(parse(&text).unwrap().tunnels[0].remotes.is_empty());
    // The TLS client end over TCP does need it: the error points at the name (line 11, col 8).
    let client_end = text.replace("tls = \"server\"", "tls = \"client\"");
    assert_error(&client_end, 11, 8, "missing required key `remote`");
    // Over UDP both ends need it.
    let udp = text.replace("transport = \"tcp\"\n", "");
    assert_error(&udp, 11, 8, "missing required key `remote`");
}

// ---- one test per error class ------------------------------------------------------------------

#[test]
fn unknown_key_points_at_the_typo() {
    let text = format!("{BASE}{P2P_TUNNEL}trasport = \"udp\"\n");
    assert_error(&text, 17, 1, "unknown field `trasport`");
    // In a top-level table too.
    let text = BASE.replace("wan = ", "wna = ");
    assert_error(&text, 9, 1, "unknown field `wna`");
}

#[test]
fn wrong_type_points_at_the_value() {
    let text = format!("{BASE}{P2P_TUNNEL}mtu = \"big\"\n");
    let error = assert_error(&text, 17, 7, "invalid type: string \"big\"");
    assert!(error.reason.contains("expected an integer"), "{error}");
}

#[test]
fn out_of_range_numbers_point_at_the_value() {
    assert_error(
        &format!("{BASE}{P2P_TUNNEL}mtu = 100\n"),
        17,
        7,
        "mtu must be between 576 and 9000, got 100",
    );
    assert_error(
        &format!("{BASE}{P2P_TUNNEL}reneg_sec = 5\n"),
        17,
        13,
        "at least 10 seconds",
    );
    assert_error(
        &format!("{BASE}{P2P_TUNNEL}keepalive = {{ interval = 10, timeout = 10 }}\n"),
        17,
        40,
        "keepalive timeout (10s) must be longer than the interval (10s)",
    );
}

#[test]
fn bad_enum_variant_lists_the_valid_ones() {
    let text = format!("{BASE}{P2P_TUNNEL}").replace("role = \"p2p\"", "role = \"peer\"");
    assert_error(
        &text,
        12,
        8,
        "unknown variant `peer`, expected one of `client`, `server`, `p2p`",
    );
}

#[test]
fn bad_local_address() {
    let text = format!("{BASE}{P2P_TUNNEL}").replace("0.0.0.0:1194", "1.2.3:99");
    assert_error(&text, 13, 9, "`1.2.3:99` is not a valid IP:PORT address");
}

#[test]
fn hostname_in_remote_is_refused_with_a_reason() {
    let text = format!("{BASE}{P2P_TUNNEL}").replace(
        "remote = [\"192.0.2.2:1194\"]",
        "remote = [\"192.0.2.3:1194\", \"vpn.example.com:1194\"]",
    );
    assert_error(
        &text,
        14,
        29,
        "`vpn.example.com:1194` is a hostname; schema v1 needs an IP address",
    );
}

#[test]
fn bad_prefix_and_host_bits_set() {
    assert_error(
        &format!("{BASE}{P2P_TUNNEL}routes = [\"10.2.0.0/33\"]\n"),
        17,
        11,
        "route `10.2.0.0/33` is not a valid prefix",
    );
    assert_error(
        &format!("{BASE}{P2P_TUNNEL}routes = [\"10.3.0.0/16\", \"10.2.0.1/16\"]\n"),
        17,
        26,
        "route `10.2.0.1/16` has host bits set; did you mean \"10.2.0.0/16\"?",
    );
    assert_error(
        &format!("{BASE}{P2P_TUNNEL}routes = [\"10.2.0.0/16\", \"10.2.0.0/16\"]\n"),
        17,
        26,
        "route 10.2.0.0/16 is listed twice",
    );
}

#[test]
fn missing_certificate_file_names_the_resolved_path() {
    let text = BASE.replace("pki/site-a.crt", "pki/missing.crt");
    let error = assert_error(
        &text,
        6,
        8,
        "certificate file pki/missing.crt (resolved to /",
    );
    assert!(
        error
            .reason
            .ends_with("examples/pki/missing.crt): No such file or directory"),
        "{error}"
    );
}

#[test]
fn swapped_certificate_and_key_are_recognised() {
    let text = BASE.replace("pki/site-a.key", "pki/site-a.crt");
    assert_error(
        &text,
        7,
        7,
        "holds PEM \"CERTIFICATE\" but no \"PRIVATE KEY\" or \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\" block",
    );
}

#[test]
fn duplicate_tunnel_names_point_at_the_second_name() {
    let second = P2P_TUNNEL.replace("0.0.0.0:1194", "0.0.0.0:1195");
    let text = format!("{BASE}{P2P_TUNNEL}{second}");
    assert_error(
        &text,
        18,
        8,
        "duplicate tunnel name `p` (first used on line 11)",
    );
}

#[test]
fn duplicate_device_points_at_the_second_device() {
    let first = format!("{P2P_TUNNEL}device = \"tun0\"\n");
    let second = first
        .replace("name = \"p\"", "name = \"q\"")
        .replace("0.0.0.0:1194", "0.0.0.0:1195");
    let text = format!("{BASE}{first}{second}");
    assert_error(&text, 25, 10, "device `tun0` is already used by tunnel `p`");
    // A device may not be the WAN interface either.
    let text = format!("{BASE}{P2P_TUNNEL}device = \"eth0\"\n");
    assert_error(
        &text,
        17,
        10,
        "device `eth0` is already used by the wan interface",
    );
}

#[test]
fn port_clash_points_at_the_second_local() {
    let second = P2P_TUNNEL
        .replace("name = \"p\"", "name = \"q\"")
        .replace("0.0.0.0:1194", "192.0.2.1:1194");
    let text = format!("{BASE}{P2P_TUNNEL}{second}");
    assert_error(
        &text,
        20,
        9,
        "local 192.0.2.1:1194/udp clashes with tunnel `p` (0.0.0.0:1194/udp)",
    );
    // Same port over another transport, or on another specific address, is fine.
    let tcp = second.replace("role = \"p2p\"", "role = \"p2p\"\ntransport = \"tcp\"");
    assert!(parse(&format!("{BASE}{P2P_TUNNEL}{tcp}")).is_ok());
    let one = P2P_TUNNEL.replace("0.0.0.0:1194", "192.0.2.2:1194");
    assert!(parse(&format!("{BASE}{one}{second}")).is_ok());
}

#[test]
fn tls_auth_and_tls_crypt_together_point_at_the_second_key() {
    let text = format!(
        "{BASE}{P2P_TUNNEL}tls_crypt = \"pki/tc.key\"\ntls_auth = {{ key = \"pki/ta.key\" }}\n"
    );
    assert_error(
        &text,
        18,
        1,
        "`tls_auth` and `tls_crypt` cannot be used together",
    );
}

#[test]
fn role_specific_key_on_the_wrong_role_points_at_the_key() {
    let text = format!(
        "{BASE}[[tunnel]]\nname = \"c\"\nrole = \"client\"\nremote = [\"192.0.2.2:1194\"]\n  ifconfig = {{ local = \"10.99.0.1\", remote = \"10.99.0.2\" }}\n"
    );
    assert_error(&text, 14, 3, "`ifconfig` is only valid for role p2p");
    let text = format!("{BASE}{P2P_TUNNEL}push_routes = [\"10.1.0.0/16\"]\n");
    assert_error(&text, 17, 1, "`push_routes` is only valid for role server");
    let text = format!(
        "{BASE}[[tunnel]]\nname = \"s\"\nrole = \"server\"\nlocal = \"0.0.0.0:1194\"\nserver = \"10.8.0.0/24\"\nremote = [\"192.0.2.2:1194\"]\n"
    );
    assert_error(&text, 15, 1, "`remote` is not valid for role server");
}

#[test]
fn missing_role_required_key_points_at_the_tunnel_name() {
    let text = format!("{BASE}{P2P_TUNNEL}").replace("tls = \"server\"\n", "");
    assert_error(
        &text,
        11,
        8,
        "tunnel `p` (role p2p) is missing required key `tls`",
    );
    let text =
        format!("{BASE}[[tunnel]]\nname = \"s\"\nrole = \"server\"\nlocal = \"0.0.0.0:1194\"\n");
    assert_error(
        &text,
        11,
        8,
        "tunnel `s` (role server) is missing required key `server`",
    );
    // Keys every role needs are reported by the parser, at the [[tunnel]] header.
    let text = format!("{BASE}[[tunnel]]\nname = \"s\"\n");
    assert_error(&text, 10, 1, "missing required key `role`");
}

#[test]
fn server_subnet_rules() {
    let server = |subnet: &str| {
        format!(
            "{BASE}[[tunnel]]\nname = \"s\"\nrole = \"server\"\nlocal = \"0.0.0.0:1194\"\nserver = \"{subnet}\"\n"
        )
    };
    assert!(parse(&server("10.8.0.0/24")).is_ok());
    assert_error(
        &server("10.8.0.1/24"),
        14,
        10,
        "did you mean \"10.8.0.0/24\"?",
    );
    assert_error(&server("10.8.0.0/30"), 14, 10, "must be between /8 and /29");
    assert_error(&server("2001:db8::/64"), 14, 10, "only IPv4");
}

#[test]
fn version_must_be_1() {
    let text = BASE.replace("version = 1", "version = 2");
    assert_error(&text, 1, 11, "unsupported config version 2");
    // Judged before unknown keys, which a newer schema may well have.
    let text = format!("{text}[future]\nkey = 1\n");
    assert_error(&text, 1, 11, "unsupported config version 2");
    let text = BASE.replace("version = 1", "version = \"1\"");
    assert_error(
        &text,
        1,
        11,
        "`version` must be the integer 1, found a string",
    );
    let text = BASE.replace("version = 1\n", "");
    assert_error(&text, 1, 1, "missing required key `version`");
}

#[test]
fn bad_static_key_file_points_at_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let short_key = dir.path().join("short.key");
    let mut contents = String::from("-----BEGIN OpenVPN Static key V1-----\n");
    for _ in 0..15 {
        contents.push_str("0123456789abcdef0123456789abcdef\n");
    }
    contents.push_str("-----END OpenVPN Static key V1-----\n");
    std::fs::write(&short_key, contents).unwrap();
    let text = format!(
        "{BASE}{P2P_TUNNEL}tls_crypt = \"{}\"\n",
        short_key.display()
    );
    assert_error(
        &text,
        17,
        13,
        "holds 240 bytes of key material; an OpenVPN static key has 256",
    );
    // A PEM file is not a static key either.
    let text = format!("{BASE}{P2P_TUNNEL}tls_auth = {{ key = \"pki/ca.crt\" }}\n");
    assert_error(&text, 17, 20, "tls_auth key file pki/ca.crt (resolved to");
}

#[test]
fn unknown_cipher_lists_the_supported_ones() {
    let text = format!("{BASE}{P2P_TUNNEL}ciphers = [\"AES-256-CBC\"]\n");
    assert_error(
        &text,
        17,
        12,
        "unknown cipher `AES-256-CBC`; supported: AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305 (CBC ciphers are not supported)",
    );
}

#[test]
fn lan_equal_to_wan_points_at_lan() {
    let text = BASE.replace("wan = \"eth0\"\n", "wan = \"eth0\"\nlan = \"eth0\"\n");
    assert_error(&text, 10, 7, "lan and wan are both `eth0`");
}

#[test]
fn single_bracket_tunnel_table_gets_a_hint() {
    let text = format!("{BASE}{P2P_TUNNEL}").replace("[[tunnel]]", "[tunnel]");
    assert_error(&text, 10, 1, "write each tunnel as [[tunnel]]");
}

#[test]
fn toml_syntax_errors_are_located() {
    let text = BASE.replace("name = \"test\"", "name = \"test");
    let error = assert_error(&text, 3, 13, "invalid basic string");
    assert!(!error.reason.contains('\n'));
}

#[test]
fn empty_file_is_an_error_at_1_1() {
    assert_error("", 1, 1, "missing required key `version`");
}

#[test]
fn non_utf8_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"version = 1\n[node]\nname = \"caf\xe9\"\n").unwrap();
    let error = Config::load(&path).unwrap_err();
    assert_eq!((error.line, error.column), (3, 12), "{error}");
    assert!(error.reason.contains("not valid UTF-8"), "{error}");
    assert_eq!(error.file, path);
}

#[test]
fn unreadable_config_file_is_an_error_at_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let error = Config::load(&path).unwrap_err();
    assert_eq!((error.line, error.column), (1, 1));
    assert_eq!(
        error.to_string(),
        format!(
            "{}:1:1: cannot read the config file: No such file or directory",
            path.display()
        )
    );
    // A directory is not a config file either (and reading it must not hang or panic).
    let error = Config::load(dir.path()).unwrap_err();
    assert!(error.reason.contains("not a regular file"), "{error}");
}

#[test]
fn relative_config_path_keeps_the_callers_spelling_in_errors() {
    let error = Config::parse("version = 2\n", Path::new("some/dir/x.toml")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "some/dir/x.toml:1:11: unsupported config version 2; this daemon reads version 1"
    );
}

// ---- robustness ------------------------------------------------------------------------------

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

fn mutate(original: &[u8], rng: &mut Rng) -> Vec<u8> {
    const INTERESTING: &[u8] = b"\"'[]{}=,.#\n\\ 0129afz-_:/\xff\xc3";
    let mut bytes = original.to_vec();
    for _ in 0..=rng.below(3) {
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(
                bytes
                    .iter()
                    .enumerate()
                    .filter(|(_, &byte)| byte == b'\n')
                    .map(|(index, _)| index + 1),
            )
            .collect();
        let line_range = |rng: &mut Rng| {
            let line = rng.below(line_starts.len());
            let start = line_starts[line];
            let end = line_starts.get(line + 1).copied().unwrap_or(bytes.len());
            start..end
        };
        match rng.below(6) {
            0 | 1 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                bytes[at] = if rng.below(2) == 0 {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    rng.next() as u8
                };
            }
            2 => bytes.truncate(rng.below(bytes.len() + 1)),
            3 => {
                let range = line_range(rng);
                bytes.drain(range);
            }
            4 => {
                let range = line_range(rng);
                let line = bytes[range.clone()].to_vec();
                bytes.splice(range.start..range.start, line);
            }
            _ if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                bytes.insert(at, INTERESTING[rng.below(INTERESTING.len())]);
            }
            _ => {}
        }
    }
    bytes
}

#[test]
fn mutated_site_a_never_panics_and_errors_stay_inside_the_file() {
    let original = example_text("site-a.toml").into_bytes();
    let path = examples_dir().join("site-a.toml");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..3000 {
        let mutated = mutate(&original, &mut rng);
        match Config::parse_bytes(&mutated, &path) {
            Ok(_) => accepted += 1,
            Err(error) => {
                refused += 1;
                let lossy = String::from_utf8_lossy(&mutated);
                let lines: Vec<&str> = lossy.split('\n').collect();
                assert!(
                    error.line >= 1 && error.line <= lossy.lines().count() + 1,
                    "round {round}: line out of range: {error}"
                );
                let line_chars = lines
                    .get(error.line - 1)
                    .map_or(0, |line| line.chars().count());
                assert!(
                    error.column >= 1 && error.column <= line_chars + 1,
                    "round {round}: column out of range: {error}"
                );
                assert!(!error.reason.is_empty() && !error.reason.contains('\n'));
            }
        }
    }
    // Sanity: the mutations produce both outcomes, so both paths were exercised.
    assert!(refused > 1000, "only {refused} mutations refused");
    assert!(accepted > 10, "only {accepted} mutations accepted");
}

// ---- eBPF fast path (issue 5): `[fast_path]`, `link_group`, `weight`, `allowed_sources` ----

/// A second p2p tunnel for link-group tests (another port and device).
fn p2p_tunnel_named(name: &str, port: u16) -> String {
    P2P_TUNNEL
        .replace("name = \"p\"", &format!("name = \"{name}\""))
        .replace(":1194\"\nremote", &format!(":{port}\"\nremote"))
}

#[test]
fn fast_path_defaults_and_values() {
    let config = parse(&format!("{BASE}{P2P_TUNNEL}")).unwrap();
    assert_eq!(config.fast_path, FastPath::default());
    assert_eq!(config.tunnels[0].fast_path.weight, 1);
    let text = format!(
        "{BASE}lan = \"eth1\"\n[fast_path]\nprotected_prefixes = [\"10.2.0.0/16\", \"fd02::/32\"]\n\
         handshakes_per_sec = 0\nhandshake_burst = 5\nhandshake_window_secs = 10\n\
         {P2P_TUNNEL}link_group = \"dc2\"\nweight = 4\nallowed_sources = [\"10.99.0.2/32\"]\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.fast_path.protected_prefixes.len(), 2);
    assert_eq!(config.fast_path.handshakes_per_sec, 0);
    assert_eq!(config.fast_path.handshake_burst, 5);
    assert_eq!(config.fast_path.handshake_window, Duration::from_secs(10));
    let tunnel = &config.tunnels[0].fast_path;
    assert_eq!(tunnel.link_group.as_deref(), Some("dc2"));
    assert_eq!(tunnel.weight, 4);
    assert_eq!(
        tunnel.allowed_sources,
        Some(vec!["10.99.0.2/32".parse().unwrap()])
    );
}

#[test]
fn fast_path_errors_point_at_the_value() {
    assert_error(
        &format!("{BASE}{P2P_TUNNEL}weight = 2\n"),
        17,
        10,
        "`weight` only applies to a tunnel in a `link_group`",
    );
    let lan = BASE.replace("wan = \"eth0\"\n", "wan = \"eth0\"\nlan = \"eth1\"\n");
    // BASE with lan is one line longer: appended tunnel keys land on line 18.
    assert_error(
        &format!("{lan}{P2P_TUNNEL}link_group = \"b\"\nweight = 17\n"),
        19,
        10,
        "`weight` must be 1..=16, got 17",
    );
    assert_error(
        &format!("{BASE}{P2P_TUNNEL}link_group = \"b\"\n"),
        17,
        14,
        "`link_group` needs `lan` in [interfaces]",
    );
    assert_error(
        &format!("{lan}{P2P_TUNNEL}link_group = \"B!\"\n"),
        18,
        14,
        "link_group",
    );
    assert_error(
        &format!("{lan}{P2P_TUNNEL}allowed_sources = [\"10.0.0.1/8\"]\n"),
        18,
        20,
        "allowed source",
    );
    let two_groups = format!(
        "{lan}{P2P_TUNNEL}routes = [\"10.2.0.0/16\"]\nlink_group = \"x\"\n{}routes = [\"10.2.0.0/16\"]\nlink_group = \"y\"\n",
        p2p_tunnel_named("q", 1195)
    );
    assert_error(
        &two_groups,
        28,
        14,
        "route 10.2.0.0/16 of tunnel `q` is also routed by link group `x` (tunnel `p`)",
    );
    assert_error(
        &format!("{BASE}[fast_path]\nhandshakes_per_sec = -1\n"),
        11,
        22,
        "`handshakes_per_sec` must be 0..=1000000, got -1",
    );
    assert_error(
        &format!("{BASE}[fast_path]\nhandshake_window_secs = 0\n"),
        11,
        25,
        "`handshake_window_secs` must be 1..=600",
    );
    assert_error(
        &format!("{BASE}[fast_path]\nprotected = [\"10.2.0.0/16\"]\n"),
        11,
        1,
        "unknown field `protected`",
    );
}

/// A server tunnel after [`BASE`]: lines 10-14, so appended keys land on line 15.
fn server_tunnel(extra: &str) -> String {
    format!(
        "{BASE}[[tunnel]]\nname = \"s\"\nrole = \"server\"\nlocal = \"0.0.0.0:1194\"\nserver = \"10.8.0.0/24\"\n{extra}"
    )
}

fn server_addressing(text: &str) -> Addressing {
    let config = parse(text).unwrap_or_else(|error| panic!("{error}"));
    config.tunnels[0].addressing.clone()
}

#[test]
fn server_defaults_follow_openvpn_server_helper() {
    let Addressing::Server {
        server_address,
        pool,
        push,
        client_to_client,
        duplicate_cn,
        client_config_dir,
        max_clients,
        ..
    } = server_addressing(&server_tunnel(""))
    else {
        panic!("not a server");
    };
    assert_eq!(server_address, Ipv4Addr::new(10, 8, 0, 1));
    // helper.c: topology subnet pools .2 up to broadcast - 2.
    assert_eq!(
        pool,
        IfconfigPool {
            start: Ipv4Addr::new(10, 8, 0, 2),
            end: Ipv4Addr::new(10, 8, 0, 253)
        }
    );
    assert!(push.is_empty());
    assert!(!client_to_client && !duplicate_cn);
    assert_eq!(client_config_dir, None);
    assert_eq!(max_clients, 1024);

    // net30: .4 up to broadcast - 4; a /29 keeps everything up to the broadcast address.
    let Addressing::Server { pool, .. } =
        server_addressing(&server_tunnel("topology = \"net30\"\n"))
    else {
        panic!("not a server");
    };
    assert_eq!(
        (pool.start, pool.end),
        (Ipv4Addr::new(10, 8, 0, 4), Ipv4Addr::new(10, 8, 0, 251))
    );
    let text = server_tunnel("topology = \"net30\"\n").replace("10.8.0.0/24", "10.8.0.0/29");
    let Addressing::Server { pool, .. } = server_addressing(&text) else {
        panic!("not a server");
    };
    assert_eq!(
        (pool.start, pool.end),
        (Ipv4Addr::new(10, 8, 0, 4), Ipv4Addr::new(10, 8, 0, 7))
    );
}

#[test]
fn server_keys_are_read() {
    let text = server_tunnel(
        "server_address = \"10.8.0.254\"\nifconfig_pool = { start = \"10.8.0.100\", end = \"10.8.0.200\" }\npush = [\"dhcp-option DNS 10.8.0.1\", \"block-outside-dns\"]\nclient_to_client = true\nduplicate_cn = true\nclient_config_dir = \"ccd\"\nmax_clients = 65535\n",
    );
    assert_eq!(
        server_addressing(&text),
        Addressing::Server {
            subnet: "10.8.0.0/24".parse().unwrap(),
            topology: Topology::Subnet,
            push_routes: Vec::new(),
            server_address: Ipv4Addr::new(10, 8, 0, 254),
            pool: IfconfigPool {
                start: Ipv4Addr::new(10, 8, 0, 100),
                end: Ipv4Addr::new(10, 8, 0, 200),
            },
            push: vec![
                "dhcp-option DNS 10.8.0.1".to_owned(),
                "block-outside-dns".to_owned()
            ],
            client_to_client: true,
            duplicate_cn: true,
            client_config_dir: Some(examples_dir().join("ccd")),
            max_clients: 65535,
        }
    );
}

#[test]
fn server_key_errors_point_at_the_value() {
    assert_error(
        &server_tunnel("server_address = \"10.9.0.1\"\n"),
        15,
        18,
        "server_address 10.9.0.1 is outside the server subnet 10.8.0.0/24",
    );
    assert_error(
        &server_tunnel("server_address = \"10.8.0.255\"\n"),
        15,
        18,
        "network or broadcast",
    );
    assert_error(
        &server_tunnel("ifconfig_pool = { start = \"10.8.0.200\", end = \"10.8.0.100\" }\n"),
        15,
        47,
        "ifconfig_pool end 10.8.0.100 comes before its start 10.8.0.200",
    );
    assert_error(
        &server_tunnel("ifconfig_pool = { start = \"10.8.1.2\", end = \"10.8.0.100\" }\n"),
        15,
        27,
        "ifconfig_pool.start 10.8.1.2 is outside",
    );
    assert_error(&server_tunnel("push = [\"a,b\"]\n"), 15, 9, "contains ','");
    assert_error(
        &server_tunnel("push = [\"route 10.0.0.0 255.0.0.0\"]\n"),
        15,
        9,
        "put pushed routes in `push_routes`",
    );
    assert_error(
        &server_tunnel("max_clients = 0\n"),
        15,
        15,
        "max_clients must be between 1 and 65535, got 0",
    );
    assert_error(
        &server_tunnel("max_clients = 65536\n"),
        15,
        15,
        "max_clients must be between 1 and 65535",
    );
    assert_error(
        &server_tunnel("client_config_dir = \"no-such-dir\"\n"),
        15,
        21,
        "client_config_dir file no-such-dir",
    );
    assert_error(
        &server_tunnel("client_config_dir = \"site-a.toml\"\n"),
        15,
        21,
        "is not a directory",
    );
}

#[test]
fn server_keys_on_other_roles_are_refused() {
    for key in [
        "server_address = \"10.99.0.1\"",
        "ifconfig_pool = { start = \"10.99.0.2\", end = \"10.99.0.3\" }",
        "push = []",
        "client_to_client = true",
        "duplicate_cn = false",
        "client_config_dir = \"ccd\"",
        "max_clients = 5",
    ] {
        let text = format!("{BASE}{P2P_TUNNEL}{key}\n");
        let name = key.split(' ').next().unwrap();
        assert_error(
            &text,
            17,
            1,
            &format!("`{name}` is only valid for role server"),
        );
    }
}

#[test]
fn a_broken_ccd_file_stops_loading_with_its_own_line() {
    let dir = tempdir("ccd-broken");
    std::fs::write(dir.join("alice"), "iroute 10.1.0.0 255.255.0.0\n").unwrap();
    std::fs::write(dir.join("bob"), "# fine\n\n  comp-lzo yes\n").unwrap();
    let text = server_tunnel(&format!("client_config_dir = \"{}\"\n", dir.display()));
    let error = parse(&text).unwrap_err();
    assert_eq!(error.file, dir.join("bob"));
    assert_eq!((error.line, error.column), (3, 3));
    assert!(
        error.reason.contains("unsupported directive `comp-lzo`"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vpn-daemon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

mod ccd_files {
    use super::super::ccd::*;
    use super::*;
    use crate::proto::server::ClientConfig;

    fn parse_ccd(text: &str) -> Result<ClientConfig, ConfigError> {
        parse_client_config(text, Path::new("ccd/alice"))
    }

    #[track_caller]
    fn assert_ccd_error(text: &str, line: usize, column: usize, reason: &str) {
        let error = parse_ccd(text).unwrap_err();
        assert_eq!(error.file, Path::new("ccd/alice"));
        assert_eq!((error.line, error.column), (line, column), "{error}");
        assert!(error.reason.contains(reason), "{error}");
        assert!(error
            .to_string()
            .starts_with(&format!("ccd/alice:{line}:{column}: ")));
    }

    #[test]
    fn every_directive() {
        let text = "# alice's office\n; old comment style\n\nifconfig-push 10.8.0.50 255.255.255.0\niroute 192.168.50.0 255.255.255.0\niroute 192.168.51.7\npush \"dhcp-option DNS 192.168.50.1\"  # inline comment\npush 'route 172.16.0.0 255.240.0.0'\npush-reset\n";
        assert_eq!(
            parse_ccd(text).unwrap(),
            ClientConfig {
                ifconfig_push: Some((Ipv4Addr::new(10, 8, 0, 50), Ipv4Addr::new(255, 255, 255, 0))),
                iroutes: vec![
                    "192.168.50.0/24".parse().unwrap(),
                    "192.168.51.7/32".parse().unwrap()
                ],
                push: vec![
                    "dhcp-option DNS 192.168.50.1".to_owned(),
                    "route 172.16.0.0 255.240.0.0".to_owned()
                ],
                push_reset: true,
                disable: false,
            }
        );
        assert!(parse_ccd("disable\n").unwrap().disable);
        assert_eq!(parse_ccd("").unwrap(), ClientConfig::default());
        // net30 style: the second address is the peer of the /30.
        assert_eq!(
            parse_ccd("ifconfig-push 10.8.0.9 10.8.0.10")
                .unwrap()
                .ifconfig_push,
            Some((Ipv4Addr::new(10, 8, 0, 9), Ipv4Addr::new(10, 8, 0, 10)))
        );
        // Escapes inside double quotes.
        assert_eq!(
            parse_ccd(r#"push "setenv X \"y z\"""#).unwrap().push,
            vec!["setenv X \"y z\"".to_owned()]
        );
    }

    #[test]
    fn errors_name_line_column_and_directive() {
        assert_ccd_error(
            "\n  topology subnet\n",
            2,
            3,
            "unsupported directive `topology`",
        );
        assert_ccd_error(
            "ifconfig-push 10.8.0.5\n",
            1,
            1,
            "`ifconfig-push` takes 2 arguments",
        );
        assert_ccd_error(
            "ifconfig-push 10.8.0.5 255.255.255.0x\n",
            1,
            24,
            "`255.255.255.0x` is not an IPv4 address",
        );
        assert_ccd_error("iroute 10.0.0.0 255.0.255.0\n", 1, 17, "is not a netmask");
        assert_ccd_error(
            "iroute 10.0.0.1 255.255.255.0\n",
            1,
            8,
            "did you mean 10.0.0.0 255.255.255.0?",
        );
        assert_ccd_error(
            "push \"route 10.0.0.0 255.0.0.0\n",
            1,
            6,
            "unterminated \" quote",
        );
        assert_ccd_error("push a b\n", 1, 1, "`push` takes 1 argument");
        assert_ccd_error("push \"a,b\"\n", 1, 6, "contains ','");
        assert_ccd_error("disable now\n", 1, 1, "`disable` takes no arguments");
        assert_ccd_error(
            "iroute-ipv6 2001:db8::/64\n",
            1,
            1,
            "unsupported directive `iroute-ipv6`",
        );
    }

    #[test]
    fn read_finds_files_by_common_name_and_never_leaves_the_dir() {
        let dir = tempdir("ccd-read");
        std::fs::write(dir.join("alice"), "ifconfig-push 10.8.0.50 255.255.255.0\n").unwrap();
        std::fs::write(dir.join("broken"), "\n\nbogus\n").unwrap();
        let alice = read_client_config(&dir, "alice").unwrap().unwrap();
        assert_eq!(alice.ifconfig_push.unwrap().0, Ipv4Addr::new(10, 8, 0, 50));
        assert_eq!(read_client_config(&dir, "bob").unwrap(), None);
        for unsafe_name in ["", ".", "..", "../alice", "a/b", "a\0b"] {
            assert_eq!(
                read_client_config(&dir, unsafe_name).unwrap(),
                None,
                "{unsafe_name:?}"
            );
        }
        let error = read_client_config(&dir, "broken").unwrap_err();
        assert_eq!((error.file.clone(), error.line), (dir.join("broken"), 3));
        assert_eq!(
            check_client_config_dir(&dir).unwrap_err().file,
            dir.join("broken")
        );
        std::fs::remove_file(dir.join("broken")).unwrap();
        assert_eq!(check_client_config_dir(&dir).unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
