//! Unit tests of the importer on in-memory configs. The configs name the example PKI through
//! `../../examples/pki/`, as if they lived in `vpn-daemon/tests/import/`.
use std::path::{Path, PathBuf};

use super::plan::Plan;
use super::render::render;
use super::translate::translate;
use super::{Diagnostic, ImportOptions};
use crate::config::{Compress, Role};
use crate::proto::vocabulary::{Topology, Transport};

const PKI_CLIENT: &str = "ca ../../examples/pki/ca.crt\ncert ../../examples/pki/site-b.crt\nkey ../../examples/pki/site-b.key\n";
const PKI_SERVER: &str = "ca ../../examples/pki/ca.crt\ncert ../../examples/pki/site-a.crt\nkey ../../examples/pki/site-a.key\n";

fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import/unit-test.conf")
}

fn import_with(text: &str, options: &ImportOptions) -> Result<Plan, Vec<Diagnostic>> {
    translate(text, &config_path(), options)
}

fn import(text: &str) -> Plan {
    import_with(text, &ImportOptions::default()).unwrap_or_else(|errors| {
        panic!(
            "unexpected errors:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// (line, option) of each problem, and the whole text for messages.
fn problems(text: &str) -> Vec<(Option<usize>, String, String)> {
    match import_with(text, &ImportOptions::default()) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors
            .into_iter()
            .map(|error| {
                let shown = error.to_string();
                (error.line, error.option.unwrap_or_default(), shown)
            })
            .collect(),
    }
}

fn ignored_options(plan: &Plan) -> Vec<(usize, &str)> {
    plan.ignored
        .iter()
        .map(|(line, option, _)| (*line, option.as_str()))
        .collect()
}

#[test]
fn classic_server_translates_every_key() {
    let text = format!(
        "port 1195\nproto udp\ndev tun\n{PKI_SERVER}server 10.8.0.0 255.255.255.0\ntopology subnet\n\
         push \"route 192.168.10.0 255.255.255.0\"\npush \"dhcp-option DNS 192.168.10.53\"\n\
         client-to-client\nduplicate-cn\nmax-clients 50\nkeepalive 10 120\nremote-cert-tls client\n\
         persist-key\nuser nobody\n"
    );
    let plan = import(&text);
    assert_eq!(plan.role, Role::Server);
    assert_eq!(plan.transport, Transport::Udp);
    assert_eq!(plan.local, Some("0.0.0.0:1195".parse().unwrap()));
    assert_eq!(
        plan.device, None,
        "`dev tun` keeps the daemon's device name"
    );
    assert_eq!(plan.keepalive, Some((10, 120)));
    assert_eq!(plan.remote_cert_tls, Some("client"));
    let server = plan.server.as_ref().unwrap();
    assert_eq!(server.subnet.to_string(), "10.8.0.0/24");
    assert_eq!(server.topology, Topology::Subnet);
    assert_eq!(
        server.server_address, None,
        "the default (first host) is left to the daemon"
    );
    assert_eq!(
        server.push_routes,
        ["192.168.10.0/24".parse::<ipnet::Ipv4Net>().unwrap()]
    );
    assert_eq!(server.push, ["dhcp-option DNS 192.168.10.53"]);
    assert!(server.client_to_client && server.duplicate_cn);
    assert_eq!(server.max_clients, Some(50));
    assert_eq!(ignored_options(&plan), [(16, "persist-key"), (17, "user")]);
    let toml = render(&plan);
    for expected in [
        "role = \"server\"\n",
        "server = \"10.8.0.0/24\"\n",
        "topology = \"subnet\"\n",
        "push_routes = [\"192.168.10.0/24\"]\n",
        "push = [\"dhcp-option DNS 192.168.10.53\"]\n",
        "client_to_client = true\n",
        "duplicate_cn = true\n",
        "max_clients = 50\n",
        "#   line 16: persist-key: ",
    ] {
        assert!(toml.contains(expected), "missing {expected:?} in:\n{toml}");
    }
}

#[test]
fn server_without_topology_is_net30_like_openvpn_2_6() {
    let plan = import(&format!("server 10.8.0.0 255.255.255.0\n{PKI_SERVER}"));
    assert_eq!(plan.server.as_ref().unwrap().topology, Topology::Net30);
    assert!(
        plan.notes.iter().any(|note| note.contains("net30")),
        "{:?}",
        plan.notes
    );
}

#[test]
fn mode_server_subnet_takes_subnet_and_address_from_ifconfig() {
    let text = format!(
        "mode server\ntls-server\ntopology subnet\nifconfig 10.8.0.1 255.255.255.0\n\
         ifconfig-pool 10.8.0.50 10.8.0.99 255.255.255.0\npush \"topology subnet\"\n\
         push \"route-gateway 10.8.0.1\"\nroute 10.30.0.0 255.255.0.0\n{PKI_SERVER}"
    );
    let plan = import(&text);
    let server = plan.server.as_ref().unwrap();
    assert_eq!(server.subnet.to_string(), "10.8.0.0/24");
    assert_eq!(server.server_address, Some("10.8.0.1".parse().unwrap()));
    assert_eq!(
        server.ifconfig_pool,
        Some(("10.8.0.50".parse().unwrap(), "10.8.0.99".parse().unwrap()))
    );
    assert!(server.push.is_empty() && server.push_routes.is_empty());
    assert_eq!(
        plan.routes,
        ["10.30.0.0/16".parse::<ipnet::IpNet>().unwrap()]
    );
    // The daemon pushes topology and route-gateway itself.
    assert_eq!(ignored_options(&plan), [(6, "push"), (7, "push")]);
}

#[test]
fn mode_server_net30_takes_the_subnet_from_the_covering_route() {
    let text = format!(
        "mode server\ntls-server\nifconfig 10.9.0.1 10.9.0.2\nifconfig-pool 10.9.0.4 10.9.0.251\n\
         route 10.9.0.0 255.255.255.0\nroute 172.16.5.0 255.255.255.0\npush \"route 10.9.0.1\"\n{PKI_SERVER}"
    );
    let plan = import(&text);
    let server = plan.server.as_ref().unwrap();
    assert_eq!(server.topology, Topology::Net30);
    assert_eq!(server.subnet.to_string(), "10.9.0.0/24");
    assert_eq!(server.server_address, Some("10.9.0.1".parse().unwrap()));
    assert_eq!(
        plan.routes,
        ["172.16.5.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    assert!(server.push_routes.is_empty(), "{:?}", server.push_routes);
    assert_eq!(ignored_options(&plan), [(5, "route"), (7, "push")]);
}

#[test]
fn mode_server_mistakes_are_reported() {
    let missing_tls = problems(&format!(
        "mode server\nifconfig 10.8.0.1 10.8.0.2\n{PKI_SERVER}"
    ));
    assert_eq!(missing_tls[0].0, Some(1), "{missing_tls:?}");
    assert!(missing_tls[0].2.contains("needs tls-server"));
    let no_pool = problems(&format!(
        "mode server\ntls-server\ntopology subnet\nifconfig 10.8.0.1 255.255.255.0\n{PKI_SERVER}"
    ));
    assert!(
        no_pool
            .iter()
            .any(|p| p.2.contains("without ifconfig-pool")),
        "{no_pool:?}"
    );
    let no_route = problems(&format!(
        "mode server\ntls-server\nifconfig 10.9.0.1 10.9.0.2\nifconfig-pool 10.9.0.4 10.9.0.9\n{PKI_SERVER}"
    ));
    assert!(
        no_route
            .iter()
            .any(|p| p.2.contains("no `route NETWORK NETMASK` covers 10.9.0.1")),
        "{no_route:?}"
    );
}

#[test]
fn p2p_udp_and_tcp_ends() {
    let udp = import(&format!(
        "tls-server\nifconfig 10.99.0.1 10.99.0.2\nremote 192.0.2.2\nport 1300\n\
         route 10.2.0.0 255.255.0.0 10.99.0.2\n{PKI_SERVER}"
    ));
    assert_eq!(udp.role, Role::P2p);
    assert_eq!(udp.local, Some("0.0.0.0:1300".parse().unwrap()));
    assert_eq!(udp.remotes, ["192.0.2.2:1300".parse().unwrap()]);
    assert_eq!(udp.routes, ["10.2.0.0/16".parse::<ipnet::IpNet>().unwrap()]);
    let p2p = udp.p2p.as_ref().unwrap();
    assert!(p2p.tls_server);
    assert_eq!(
        (p2p.local.to_string(), p2p.remote.to_string()),
        ("10.99.0.1".into(), "10.99.0.2".into())
    );

    // The TCP listening end has no remote in our schema (the daemon listens only then).
    let listener = import(&format!(
        "tls-server\nproto tcp-server\nifconfig 10.99.0.1 10.99.0.2\nremote 192.0.2.2\n{PKI_SERVER}"
    ));
    assert_eq!(listener.transport, Transport::Tcp);
    assert!(listener.remotes.is_empty());
    let dialer = import(&format!(
        "tls-client\nproto tcp-client\nifconfig 10.99.0.2 10.99.0.1\nremote 192.0.2.1 443\n{PKI_CLIENT}"
    ));
    assert_eq!(dialer.remotes, ["192.0.2.1:443".parse().unwrap()]);

    let wrong_side = problems(&format!(
        "tls-client\nproto tcp-server\nifconfig 10.99.0.2 10.99.0.1\n{PKI_CLIENT}"
    ));
    assert!(
        wrong_side[0].2.contains("always the TLS server"),
        "{wrong_side:?}"
    );
    let no_remote = problems(&format!(
        "tls-client\nifconfig 10.99.0.2 10.99.0.1\n{PKI_CLIENT}"
    ));
    assert_eq!(no_remote[0].1, "remote");
    let bad_gateway = problems(&format!(
        "tls-client\nifconfig 10.99.0.2 10.99.0.1\nremote 192.0.2.1\nroute 10.1.0.0 255.255.0.0 192.168.1.1\n{PKI_CLIENT}"
    ));
    assert_eq!(bad_gateway[0].0, Some(4));
    let subnet = problems(&format!(
        "tls-client\ntopology subnet\nifconfig 10.99.0.2 255.255.255.0\nremote 192.0.2.1\n{PKI_CLIENT}"
    ));
    assert_eq!(subnet[0].1, "topology");
}

#[test]
fn client_remotes_ports_and_protocols() {
    let plan = import(&format!(
        "client\nport 1300\nremote 192.0.2.10\nremote 192.0.2.11 1195 udp\nremote 2001:db8::1\n{PKI_CLIENT}"
    ));
    assert_eq!(plan.role, Role::Client);
    assert_eq!(plan.local, None);
    assert_eq!(
        plan.remotes,
        [
            "192.0.2.10:1300".parse().unwrap(),
            "192.0.2.11:1195".parse().unwrap(),
            "[2001:db8::1]:1300".parse().unwrap()
        ]
    );
    let bound = import(&format!(
        "client\nlport 5000\nremote 192.0.2.10\n{PKI_CLIENT}"
    ));
    assert_eq!(bound.local, Some("0.0.0.0:5000".parse().unwrap()));
    let unbound = import(&format!(
        "client\nlport 5000\nnobind\nremote 192.0.2.10\n{PKI_CLIENT}"
    ));
    assert_eq!(unbound.local, None, "nobind wins, as in OpenVPN");
    let tcp = import(&format!(
        "client\nproto tcp\nremote 192.0.2.10 443\n{PKI_CLIENT}"
    ));
    assert_eq!(tcp.transport, Transport::Tcp);
    let mixed = problems(&format!(
        "client\nremote 192.0.2.10 1194 udp\nremote 192.0.2.11 443 tcp-client\nremote vpn.example.com\n{PKI_CLIENT}"
    ));
    let lines: Vec<Option<usize>> = mixed.iter().map(|p| p.0).collect();
    assert_eq!(lines, [Some(3), Some(4)], "{mixed:?}");
    assert!(mixed[1].2.contains("host name"));
    let none = problems(&format!("client\n{PKI_CLIENT}"));
    assert_eq!((none[0].0, none[0].1.as_str()), (None, "remote"));
}

#[test]
fn server_options_on_a_client_are_errors() {
    let found = problems(&format!(
        "client\nremote 192.0.2.1\npush \"route 10.0.0.0 255.0.0.0\"\nclient-to-client\nmax-clients 3\n{PKI_CLIENT}"
    ));
    let options: Vec<(Option<usize>, &str)> = found.iter().map(|p| (p.0, p.1.as_str())).collect();
    assert_eq!(
        options,
        [
            (Some(3), "push"),
            (Some(4), "client-to-client"),
            (Some(5), "max-clients")
        ]
    );
}

#[test]
fn tls_auth_direction_digest_and_inline_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let options = ImportOptions {
        write_inline: Some(dir.path().to_path_buf()),
        ..ImportOptions::default()
    };
    let key =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pki/ta.key"))
            .unwrap();
    let text = format!("client\nremote 192.0.2.1\nauth sha256\nkey-direction 1\n<tls-auth>\n{key}</tls-auth>\n{PKI_CLIENT}");
    let plan = import_with(&text, &options).unwrap();
    let tls_auth = plan.tls_auth.as_ref().unwrap();
    assert_eq!(tls_auth.direction, Some(1));
    assert_eq!(tls_auth.digest, Some("SHA256"));
    assert_eq!(tls_auth.key.path(), dir.path().join("tls-auth.key"));
    let written = plan.write_inline_files().unwrap();
    assert_eq!(written, [dir.path().join("tls-auth.key")]);
    assert_eq!(std::fs::read_to_string(&written[0]).unwrap(), key);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&written[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Same contents again: fine. Other contents: refused, the file is kept.
    plan.write_inline_files().unwrap();
    std::fs::write(&written[0], "other").unwrap();
    assert!(plan.write_inline_files().is_err());
    assert_eq!(std::fs::read_to_string(&written[0]).unwrap(), "other");

    // The direction on the tls-auth line wins over key-direction; SHA1 is the default digest.
    let plan = import(&format!(
        "client\nremote 192.0.2.1\nkey-direction 0\ntls-auth ../../examples/pki/ta.key 1\nauth SHA1\n{PKI_CLIENT}"
    ));
    let tls_auth = plan.tls_auth.as_ref().unwrap();
    assert_eq!((tls_auth.direction, tls_auth.digest), (Some(1), None));

    let sha512 = problems(&format!(
        "client\nremote 192.0.2.1\ntls-auth ../../examples/pki/ta.key\nauth SHA512\n{PKI_CLIENT}"
    ));
    assert_eq!((sha512[0].0, sha512[0].1.as_str()), (Some(4), "auth"));
    // Without tls-auth, `auth` does not matter.
    let plan = import(&format!(
        "client\nremote 192.0.2.1\nauth SHA512\n{PKI_CLIENT}"
    ));
    assert_eq!(ignored_options(&plan), [(3, "auth")]);

    let both = problems(&format!(
        "client\nremote 192.0.2.1\ntls-auth ../../examples/pki/ta.key\ntls-crypt ../../examples/pki/tc.key\n{PKI_CLIENT}"
    ));
    assert_eq!((both[0].0, both[0].1.as_str()), (Some(4), "tls-crypt"));
}

#[test]
fn inline_blocks_without_write_inline_are_errors_not_missing_keys() {
    let found = problems("client\nremote 192.0.2.1\n<ca>\nx\n</ca>\ncert ../../examples/pki/site-b.crt\nkey ../../examples/pki/site-b.key\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0, found[0].1.as_str()), (Some(3), "<ca>"));
    assert!(found[0].2.contains("--write-inline"));
}

#[test]
fn ciphers_compression_and_names() {
    let plan = import(&format!(
        "client\nremote 192.0.2.1\ndata-ciphers AES-128-GCM:AES-256-CBC:?chacha20-poly1305\ncipher BF-CBC\ncomp-lzo\n{PKI_CLIENT}"
    ));
    assert_eq!(
        plan.ciphers
            .as_deref()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["AES-128-GCM", "CHACHA20-POLY1305"]
    );
    assert_eq!(plan.compress, Some(Compress::LzoStub));
    let ignored: Vec<&str> = plan
        .ignored
        .iter()
        .map(|(_, _, reason)| reason.as_str())
        .collect();
    assert!(ignored[0].starts_with("AES-256-CBC dropped"), "{ignored:?}");
    assert!(
        ignored[1].contains("BF-CBC is not supported"),
        "{ignored:?}"
    );
    let cbc_only = problems(&format!(
        "client\nremote 192.0.2.1\ndata-ciphers AES-256-CBC:BF-CBC\n{PKI_CLIENT}"
    ));
    assert_eq!(cbc_only[0].1, "data-ciphers");
    for (line, expected) in [
        ("compress", Some(Compress::Stub)),
        ("compress lz4", Some(Compress::Stub)),
        ("compress lz4-v2", Some(Compress::StubV2)),
        ("comp-lzo no", Some(Compress::LzoStub)),
    ] {
        let plan = import(&format!("client\nremote 192.0.2.1\n{line}\n{PKI_CLIENT}"));
        assert_eq!(plan.compress, expected, "{line}");
    }
    assert_eq!(
        problems(&format!(
            "client\nremote 192.0.2.1\ncompress lzo\n{PKI_CLIENT}"
        ))[0]
            .1,
        "compress"
    );

    let plan = import(&format!(
        "client\nremote 192.0.2.1\nverify-x509-name 'hq gateway' name\n{PKI_CLIENT}"
    ));
    assert_eq!(plan.verify_x509_name.as_deref(), Some("hq gateway"));
    for bad in [
        "verify-x509-name hq",
        "verify-x509-name hq subject",
        "verify-x509-name hq name-prefix",
    ] {
        let found = problems(&format!("client\nremote 192.0.2.1\n{bad}\n{PKI_CLIENT}"));
        assert_eq!(
            (found[0].0, found[0].1.as_str()),
            (Some(3), "verify-x509-name"),
            "{bad}"
        );
    }
}

#[test]
fn every_unsupported_option_is_reported_in_line_order() {
    let text = format!(
        "client\ndev tap\nremote 192.0.2.1\nsecret static.key\nauth-user-pass\nplugin x.so\nfragment 1300\n\
         up /bin/true\ndown /bin/true\ntls-verify /bin/true\nccd-exclusive\nserver-ipv6 fd00::/64\nfrobnicate\n{PKI_CLIENT}"
    );
    let found = problems(&text);
    let options: Vec<(usize, &str)> = found.iter().map(|p| (p.0.unwrap(), p.1.as_str())).collect();
    assert_eq!(
        options,
        [
            (2, "dev"),
            (4, "secret"),
            (5, "auth-user-pass"),
            (6, "plugin"),
            (7, "fragment"),
            (8, "up"),
            (9, "down"),
            (10, "tls-verify"),
            (11, "ccd-exclusive"),
            (12, "server-ipv6"),
            (13, "frobnicate"),
        ]
    );
    let shown = &found[0].2;
    assert!(shown.ends_with("unit-test.conf:2: dev: layer-2 (tap) tunnels are not supported; the daemon only does tun (layer 3)"), "{shown}");
}

#[test]
fn syntax_errors_and_missing_files_are_located() {
    let found = problems("client\nremote 192.0.2.1 \"1194\nca ../../examples/pki/ca.crt\n");
    assert_eq!(
        (found[0].0, found[0].2.contains("closing quotation")),
        (Some(2), true)
    );
    let found = problems("client\nremote 192.0.2.1\nca no-such-ca.crt\ncert ../../examples/pki/site-b.crt\nkey ../../examples/pki/site-b.key\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0, found[0].1.as_str()), (Some(3), "ca"));
    assert!(found[0].2.contains("No such file"), "{found:?}");
    let found = problems("remote 192.0.2.1\n");
    assert!(
        found
            .iter()
            .any(|p| p.2.contains("static-key and plain-text")),
        "{found:?}"
    );
}

#[test]
fn rendered_strings_round_trip_through_toml() {
    let plan = import(&format!(
        "server 10.8.0.0 255.255.255.0\n{PKI_SERVER}push \"dhcp-option DOMAIN 'corp \\\"x\\\"'\"\npush 'setenv-safe A b\\c'\n"
    ));
    let toml_text = render(&plan);
    let value: toml::Value = toml::from_str(&toml_text).unwrap();
    let push = value["tunnel"][0]["push"].as_array().unwrap();
    let push: Vec<&str> = push.iter().map(|item| item.as_str().unwrap()).collect();
    assert_eq!(
        push,
        ["dhcp-option DOMAIN 'corp \"x\"'", "setenv-safe A b\\c"]
    );
}

#[test]
fn options_name_the_node_tunnel_and_interfaces() {
    let options = ImportOptions {
        wan: Some("ens3".into()),
        lan: Some("ens4".into()),
        node: Some("hq".into()),
        tunnel: Some("road-warriors".into()),
        ..ImportOptions::default()
    };
    let plan = import_with(
        &format!("server 10.8.0.0 255.255.255.0\n{PKI_SERVER}"),
        &options,
    )
    .unwrap();
    assert_eq!(
        (plan.node.as_str(), plan.tunnel.as_str()),
        ("hq", "road-warriors")
    );
    assert_eq!(
        (plan.wan.as_str(), plan.lan.as_deref()),
        ("ens3", Some("ens4"))
    );
    assert!(!plan.notes.iter().any(|note| note.contains("placeholder")));
    let default = import(&format!("server 10.8.0.0 255.255.255.0\n{PKI_SERVER}"));
    assert_eq!(
        (default.node.as_str(), default.wan.as_str()),
        ("unit-test", "eth0")
    );
    assert!(default
        .notes
        .iter()
        .any(|note| note.contains("placeholder")));
}

#[test]
fn ccd_files_are_checked_with_the_shared_parser_and_all_reported() {
    let ccd = tempfile::tempdir().unwrap();
    std::fs::write(
        ccd.path().join("alice"),
        "ifconfig-push 10.8.0.10 255.255.255.0\n",
    )
    .unwrap();
    std::fs::write(
        ccd.path().join("bob"),
        "# bob\niroute 10.20.0.0 255.255.255.0\nredirect-gateway\n",
    )
    .unwrap();
    std::fs::write(ccd.path().join("carol"), "iroute 10.30.0.1 255.255.255.0\n").unwrap();
    std::fs::write(ccd.path().join(".hidden"), "garbage\n").unwrap();
    let options = ImportOptions {
        ccd_dir: Some(ccd.path().to_path_buf()),
        ..ImportOptions::default()
    };
    let text =
        format!("server 10.8.0.0 255.255.255.0\nclient-config-dir /nonexistent\n{PKI_SERVER}");
    let errors = import_with(&text, &options).unwrap_err();
    let located: Vec<(PathBuf, Option<usize>)> = errors
        .iter()
        .map(|error| (error.file.clone(), error.line))
        .collect();
    assert_eq!(
        located,
        [
            (ccd.path().join("bob"), Some(3)),
            (ccd.path().join("carol"), Some(1))
        ],
        "{errors:?}"
    );
    assert!(
        errors[0].to_string().contains("redirect-gateway"),
        "{}",
        errors[0]
    );

    // Without --ccd the config's own directory is used, and a missing one is an error there.
    let errors = import_with(&text, &ImportOptions::default()).unwrap_err();
    assert_eq!(
        (errors[0].line, errors[0].option.as_deref()),
        (Some(2), Some("client-config-dir"))
    );

    // The good files alone pass, and --ccd wins over the config's path.
    std::fs::remove_file(ccd.path().join("bob")).unwrap();
    std::fs::remove_file(ccd.path().join("carol")).unwrap();
    let plan = import_with(&text, &options).unwrap();
    assert_eq!(
        plan.server.as_ref().unwrap().client_config_dir.as_deref(),
        Some(ccd.path())
    );

    let client = problems_with(&format!("client\nremote 192.0.2.1\n{PKI_CLIENT}"), &options);
    assert_eq!(client[0].1, "--ccd");
}

fn problems_with(text: &str, options: &ImportOptions) -> Vec<(Option<usize>, String, String)> {
    import_with(text, options)
        .unwrap_err()
        .into_iter()
        .map(|error| {
            let shown = error.to_string();
            (error.line, error.option.unwrap_or_default(), shown)
        })
        .collect()
}

#[test]
fn cd_and_double_dash_follow_openvpn() {
    let plan = import(
        "--client\n--remote 192.0.2.1\ncd ../../examples\nca pki/ca.crt\ncert pki/site-b.crt\nkey pki/site-b.key\n",
    );
    let expected =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import/../../examples/pki/ca.crt");
    assert_eq!(plan.ca.path(), expected);
    assert_eq!(plan.role, Role::Client);
}

mod no_panics {
    use proptest::prelude::*;

    use super::*;

    /// Lines built from real option names with arbitrary arguments, plus raw noise.
    fn line() -> impl Strategy<Value = String> {
        let names = prop::sample::select(vec![
            "server",
            "mode",
            "ifconfig",
            "ifconfig-pool",
            "route",
            "route-ipv6",
            "push",
            "remote",
            "proto",
            "port",
            "local",
            "dev",
            "keepalive",
            "ping",
            "ping-restart",
            "tls-auth",
            "key-direction",
            "auth",
            "data-ciphers",
            "compress",
            "comp-lzo",
            "topology",
            "client",
            "tls-server",
            "tls-client",
            "verify-x509-name",
            "reneg-sec",
            "tun-mtu",
            "max-clients",
            "<ca>",
            "</ca>",
            "#",
            "\"",
            "'",
        ]);
        let args = prop::collection::vec(
            prop_oneof![
                Just("10.8.0.0".to_owned()),
                Just("255.255.255.0".to_owned()),
                Just("\"route 10.1.0.0 255.255.0.0\"".to_owned()),
                "[0-9.]{0,15}",
                "[ -~]{0,12}",
            ],
            0..4,
        );
        prop_oneof![
            (names, args).prop_map(|(name, args)| format!("{name} {}", args.join(" "))),
            "[ -~\t]{0,40}",
        ]
    }

    proptest! {
        #[test]
        fn translate_never_panics(
            valid_start in any::<bool>(),
            lines in prop::collection::vec(line(), 0..25),
        ) {
            // Half the cases start from a valid client, so that some of them translate.
            let start = if valid_start {
                format!("client\nremote 192.0.2.1\n{PKI_CLIENT}")
            } else {
                String::new()
            };
            let text = format!("{start}{}", lines.join("\n"));
            if let Ok(plan) = import_with(&text, &ImportOptions::default()) {
                // Whatever translates also renders to TOML that parses.
                let rendered = render(&plan);
                prop_assert!(toml::from_str::<toml::Value>(&rendered).is_ok(), "{}", rendered);
            }
        }
    }
}
