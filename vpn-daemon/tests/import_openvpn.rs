//! `vpn-daemon import-openvpn FILE`, run as a real process on the real-world style configs in
//! `tests/import/`: the TOML it prints matches the golden file next to the config (with the
//! directory written as `@DIR@`) and passes `vpn-daemon check-config`; a config with unsupported
//! options prints nothing on stdout, every problem on stderr, and exits 1.
//!
//! `UPDATE_GOLDEN=1 cargo test -p vpn-daemon --test import_openvpn` rewrites the golden files;
//! review the diff before committing it.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn import_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import")
}

fn vpn_daemon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpn-daemon"))
        .args(args)
        .current_dir(import_dir())
        .output()
        .expect("running vpn-daemon")
}

/// Imports `config` (a file in tests/import) with `extra` options; asserts success.
fn import_ok(config: &str, extra: &[&str]) -> String {
    let mut args = vec!["import-openvpn", config];
    args.extend_from_slice(extra);
    let output = vpn_daemon(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.is_empty(), "stderr:\n{stderr}");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Compares `actual` (with the absolute paths replaced) to the golden file `name`.
fn assert_golden(name: &str, actual: &str, replacements: &[(&str, &str)]) {
    let mut normalized = actual.to_owned();
    for (from, to) in replacements {
        normalized = normalized.replace(from, to);
    }
    let golden_path = import_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, &normalized).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(&golden_path)
        .unwrap_or_else(|error| panic!("{}: {error}", golden_path.display()));
    assert_eq!(
        normalized,
        golden,
        "output differs from {} (UPDATE_GOLDEN=1 rewrites it)",
        golden_path.display()
    );
}

/// Writes `toml` to a temp file, runs `check-config` on it and returns the summary line.
fn check_config(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imported.toml");
    std::fs::write(&path, toml).unwrap();
    let output = vpn_daemon(&["check-config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "check-config refused the import:\n{stderr}\n{toml}"
    );
    String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_owned()
}

fn dir_string() -> String {
    import_dir().display().to_string()
}

#[test]
fn p2p_site_link_with_tls_crypt_and_routes() {
    let toml = import_ok("p2p-site.conf", &["--wan", "eth0", "--node", "site-b"]);
    assert_golden("p2p-site.toml", &toml, &[(&dir_string(), "@DIR@")]);
    assert_eq!(
        check_config(&toml),
        "site-b: 1 tunnel (p2p-site: p2p/udp), wan eth0"
    );
}

#[test]
fn client_with_several_remotes_and_inline_blocks() {
    let inline = tempfile::tempdir().unwrap();
    let inline_dir = inline.path().join("keys");
    let toml = import_ok(
        "client-inline.ovpn",
        &[
            "--write-inline",
            inline_dir.to_str().unwrap(),
            "--wan",
            "ens3",
            "--tunnel",
            "provider",
        ],
    );
    assert_golden(
        "client-inline.toml",
        &toml,
        &[
            (inline_dir.to_str().unwrap(), "@INLINE@"),
            (&dir_string(), "@DIR@"),
        ],
    );
    assert_eq!(
        check_config(&toml),
        "client-inline: 1 tunnel (provider: client/udp), wan ens3"
    );
    // The blocks were written byte for byte.
    let inline_text = std::fs::read_to_string(import_dir().join("client-inline.ovpn")).unwrap();
    let ta = std::fs::read_to_string(inline_dir.join("tls-auth.key")).unwrap();
    assert!(ta.starts_with("#\n# 2048 bit OpenVPN static key\n"), "{ta}");
    assert!(inline_text.contains(&ta));
    let key = std::fs::read_to_string(inline_dir.join("key.pem")).unwrap();
    let example_key = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pki/site-b.key");
    assert_eq!(key, std::fs::read_to_string(example_key).unwrap());
}

#[test]
fn inline_blocks_without_write_inline_are_refused() {
    let output = vpn_daemon(&["import-openvpn", "client-inline.ovpn"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let options: Vec<&str> = stderr
        .lines()
        .map(|line| line.split(": ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        options,
        ["<ca>", "<cert>", "<key>", "<tls-auth>"],
        "{stderr}"
    );
    assert!(
        stderr.starts_with("client-inline.ovpn:20: <ca>: inline block:"),
        "{stderr}"
    );
}

#[test]
fn unsupported_options_are_all_reported_and_nothing_is_printed() {
    let output = vpn_daemon(&["import-openvpn", "unsupported.conf"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "stdout must stay empty");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_golden("unsupported.stderr", &stderr, &[]);
    let lines: Vec<usize> = stderr
        .lines()
        .map(|line| {
            let rest = line.strip_prefix("unsupported.conf:").unwrap();
            rest.split(':').next().unwrap().parse().unwrap()
        })
        .collect();
    // dev tap, remote host name, mixed transports, auth-user-pass, secret, plugin, fragment,
    // up, down, verify-x509-name subject, route net_gateway, an unknown option.
    assert_eq!(lines, [3, 5, 6, 7, 8, 9, 10, 12, 13, 14, 18, 19]);
}

#[test]
fn classic_server_with_push_ccd_and_keepalive() {
    let toml = import_ok("server-classic.conf", &["--wan", "eth0", "--node", "hq"]);
    assert_golden("server-classic.toml", &toml, &[(&dir_string(), "@DIR@")]);
    assert_eq!(
        check_config(&toml),
        "hq: 1 tunnel (server-classic: server/udp), wan eth0"
    );
}

#[test]
fn mode_server_long_form_over_tcp() {
    let toml = import_ok("server-manual.conf", &["--wan", "eth0", "--node", "legacy"]);
    assert_golden("server-manual.toml", &toml, &[(&dir_string(), "@DIR@")]);
    assert_eq!(
        check_config(&toml),
        "legacy: 1 tunnel (server-manual: server/tcp), wan eth0"
    );
}

#[test]
fn missing_file_is_an_error() {
    let output = vpn_daemon(&["import-openvpn", "no-such.conf"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "no-such.conf: cannot read: No such file or directory\n"
    );
}

#[test]
fn output_that_check_config_refuses_is_not_printed() {
    // An invalid node name only shows when the generated TOML is checked.
    let output = vpn_daemon(&["import-openvpn", "p2p-site.conf", "--node", "Bad Name"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("p2p-site.conf: the generated config does not pass check-config: line "),
        "{stderr}"
    );
    assert!(stderr.contains("node name"), "{stderr}");
}
