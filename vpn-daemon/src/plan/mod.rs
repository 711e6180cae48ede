//! Planners: pure functions of the config and the node state that say what the kernel should
//! hold. The daemon runs them whenever the node state changes; io/ makes the kernel match.
pub(crate) mod fast_path;
pub(crate) mod routes;

/// A config for the planners' tests: node `n` with the example PKI, WAN `wan0` and LAN `lan0`,
/// then `body` (tables and `[[tunnel]]`s).
#[cfg(test)]
fn test_config(body: &str) -> crate::config::Config {
    const PKI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pki");
    let text = format!(
        r#"version = 1
[node]
name = "n"
control_socket = "/tmp/n.sock"
[pki]
ca = "{PKI}/ca.crt"
cert = "{PKI}/site-a.crt"
key = "{PKI}/site-a.key"
[interfaces]
wan = "wan0"
lan = "lan0"
{body}"#
    );
    crate::config::Config::parse(&text, std::path::Path::new("/tmp/n.toml"))
        .unwrap_or_else(|error| panic!("{error}"))
}
