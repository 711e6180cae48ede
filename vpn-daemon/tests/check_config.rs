//! `vpn-daemon check-config FILE`, run as a real process: a summary line and exit 0 for a good
//! file; `FILE:LINE:COL: reason` on stderr and exit 1 for a bad one.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn check_config(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpn-daemon"))
        .arg("check-config")
        .arg(file)
        .output()
        .expect("running vpn-daemon")
}

/// site-a.toml with its `pki/...` paths made absolute, so that a copy works from a temp dir.
fn site_a_with_absolute_pki_paths() -> String {
    let text = std::fs::read_to_string(examples_dir().join("site-a.toml")).unwrap();
    let pki_dir = examples_dir().join("pki");
    text.replace("\"pki/", &format!("\"{}/", pki_dir.display()))
}

/// 1-based number of the first line starting with `prefix`.
fn line_starting_with(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
        + 1
}

#[test]
fn good_example_prints_one_summary_line_and_exits_0() {
    let output = check_config(&examples_dir().join("site-a.toml"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout}");
    assert!(stdout.contains("site-a"), "stdout: {stdout}");
    assert_eq!(
        stdout.trim_end(),
        "site-a: 2 tunnels (to-site-b: p2p/udp, clients: server/tcp), wan eth0, lan eth1"
    );
}

#[test]
fn typo_in_a_key_exits_1_with_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    let text = site_a_with_absolute_pki_paths().replacen("transport = ", "trasport = ", 1);
    std::fs::write(&path, &text).unwrap();
    let line = line_starting_with(&text, "trasport = ");

    let output = check_config(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(output.stdout.is_empty());
    let expected = format!("{}:{line}:1: unknown field `trasport`", path.display());
    assert!(
        stderr.starts_with(&expected),
        "stderr {stderr:?} does not start with {expected:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
}

#[test]
fn missing_certificate_exits_1_at_the_cert_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-cert.toml");
    let text = site_a_with_absolute_pki_paths().replace("/site-a.crt\"", "/no-such-site.crt\"");
    std::fs::write(&path, &text).unwrap();
    let line = line_starting_with(&text, "cert = ");

    let output = check_config(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    let expected = format!("{}:{line}:8: certificate file ", path.display());
    assert!(
        stderr.starts_with(&expected),
        "stderr {stderr:?} does not start with {expected:?}"
    );
    assert!(
        stderr.contains("no-such-site.crt: No such file or directory"),
        "stderr: {stderr}"
    );
}
