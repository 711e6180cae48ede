//! A [`Plan`] as TOML text: a header comment (source, ignored options, notes), then the keys in
//! the order `examples/site-a.toml` documents them. Strings are quoted by the `toml` crate so
//! that any path or pushed option round-trips.
use std::fmt::Write as _;

use super::plan::{P2pPlan, Plan, ServerPlan};
use crate::config::{Compress, Role};
use crate::proto::vocabulary::Topology;

/// A TOML basic string.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn quoted_list<T: ToString>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(|item| quoted(&item.to_string())).collect();
    format!("[{}]", items.join(", "))
}

fn path(path: &std::path::Path) -> String {
    quoted(&path.to_string_lossy())
}

/// Comment lines never contain a newline that would end the comment early.
fn comment_text(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `plan` as the TOML text `import-openvpn` prints.
pub(super) fn render(plan: &Plan) -> String {
    let mut toml = Toml::default();
    header(&mut toml, plan);
    toml.line("");
    toml.line("version = 1");
    toml.line("");
    node_pki_interfaces(&mut toml, plan);
    toml.line("");
    toml.line("[[tunnel]]");
    tunnel(&mut toml, plan);
    match (plan.role, &plan.p2p, &plan.server) {
        (Role::P2p, Some(p2p), _) => p2p_keys(&mut toml, p2p),
        (Role::Server, _, Some(server)) => server_keys(&mut toml, server),
        _ => {}
    }
    toml.0
}

/// The text being written, one line at a time.
#[derive(Default)]
struct Toml(String);

impl Toml {
    fn line(&mut self, text: impl AsRef<str>) {
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }
}

/// The comment block: where the file came from, the ignored options and the notes.
fn header(toml: &mut Toml, plan: &Plan) {
    toml.line(format!(
        "# Imported from {} by `vpn-daemon import-openvpn`.",
        comment_text(&plan.source.to_string_lossy())
    ));
    toml.line(format!(
        "# Read with OpenVPN 2.6 semantics; relative paths resolved against {}.",
        comment_text(&plan.base_dir.to_string_lossy())
    ));
    if !plan.ignored.is_empty() {
        toml.line("#");
        toml.line("# Ignored OpenVPN options (no effect here, or done differently):");
        for (number, option, reason) in &plan.ignored {
            toml.line(format!(
                "#   line {number}: {option}: {}",
                comment_text(reason)
            ));
        }
    }
    if !plan.notes.is_empty() {
        toml.line("#");
        toml.line("# Notes:");
        for note in &plan.notes {
            toml.line(format!("#   - {}", comment_text(note)));
        }
    }
}

/// `[node]`, `[pki]` and `[interfaces]`.
fn node_pki_interfaces(toml: &mut Toml, plan: &Plan) {
    toml.line("[node]");
    toml.line(format!("name = {}", quoted(&plan.node)));
    toml.line("");
    toml.line("[pki]");
    toml.line(format!("ca = {}", path(plan.ca.path())));
    toml.line(format!("cert = {}", path(plan.cert.path())));
    toml.line(format!("key = {}", path(plan.key.path())));
    if let Some(crl) = &plan.crl {
        toml.line(format!("crl = {}", path(crl.path())));
    }
    toml.line("");
    toml.line("[interfaces]");
    toml.line(format!("wan = {}", quoted(&plan.wan)));
    if let Some(lan) = &plan.lan {
        toml.line(format!("lan = {}", quoted(lan)));
    }
}

/// The `[[tunnel]]` keys every role has.
fn tunnel(toml: &mut Toml, plan: &Plan) {
    toml.line(format!("name = {}", quoted(&plan.tunnel)));
    toml.line(format!("role = {}", quoted(&plan.role.to_string())));
    toml.line(format!(
        "transport = {}",
        quoted(&plan.transport.to_string())
    ));
    if let Some(local) = plan.local {
        toml.line(format!("local = {}", quoted(&local.to_string())));
    }
    if !plan.remotes.is_empty() {
        toml.line(format!("remote = {}", quoted_list(&plan.remotes)));
    }
    if let Some(device) = &plan.device {
        toml.line(format!("device = {}", quoted(device)));
    }
    if let Some(ciphers) = &plan.ciphers {
        toml.line(format!("ciphers = {}", quoted_list(ciphers)));
    }
    if let Some(tls_auth) = &plan.tls_auth {
        let mut table = format!("key = {}", path(tls_auth.key.path()));
        if let Some(direction) = tls_auth.direction {
            let _ = write!(table, ", direction = {direction}");
        }
        if let Some(digest) = tls_auth.digest {
            let _ = write!(table, ", digest = {}", quoted(digest));
        }
        toml.line(format!("tls_auth = {{ {table} }}"));
    }
    if let Some(tls_crypt) = &plan.tls_crypt {
        toml.line(format!("tls_crypt = {}", path(tls_crypt.path())));
    }
    if let Some((interval, timeout)) = plan.keepalive {
        toml.line(format!(
            "keepalive = {{ interval = {interval}, timeout = {timeout} }}"
        ));
    }
    if let Some(seconds) = plan.reneg_sec {
        toml.line(format!("reneg_sec = {seconds}"));
    }
    if let Some(mtu) = plan.mtu {
        toml.line(format!("mtu = {mtu}"));
    }
    if let Some(usage) = plan.remote_cert_tls {
        toml.line(format!("remote_cert_tls = {}", quoted(usage)));
    }
    if let Some(name) = &plan.verify_x509_name {
        toml.line(format!("verify_x509_name = {}", quoted(name)));
    }
    if let Some(compress) = plan.compress {
        let name = match compress {
            Compress::LzoStub => "comp-lzo",
            Compress::Stub => "stub",
            Compress::StubV2 => "stub-v2",
        };
        toml.line(format!("compress = {}", quoted(name)));
    }
    if !plan.routes.is_empty() {
        toml.line(format!("routes = {}", quoted_list(&plan.routes)));
    }
}

/// The p2p role's keys: which end runs TLS, and the tunnel addresses.
fn p2p_keys(toml: &mut Toml, p2p: &P2pPlan) {
    let tls = if p2p.tls_server { "server" } else { "client" };
    toml.line(format!("tls = {}", quoted(tls)));
    toml.line(format!(
        "ifconfig = {{ local = {}, remote = {} }}",
        quoted(&p2p.local.to_string()),
        quoted(&p2p.remote.to_string())
    ));
}

/// The server role's keys: the client subnet and pool, what is pushed, the per-client rules.
fn server_keys(toml: &mut Toml, server: &ServerPlan) {
    toml.line(format!("server = {}", quoted(&server.subnet.to_string())));
    let topology = match server.topology {
        Topology::Subnet => "subnet",
        Topology::Net30 => "net30",
    };
    toml.line(format!("topology = {}", quoted(topology)));
    if let Some(address) = server.server_address {
        toml.line(format!("server_address = {}", quoted(&address.to_string())));
    }
    if let Some((start, end)) = server.ifconfig_pool {
        toml.line(format!(
            "ifconfig_pool = {{ start = {}, end = {} }}",
            quoted(&start.to_string()),
            quoted(&end.to_string())
        ));
    }
    if !server.push_routes.is_empty() {
        toml.line(format!(
            "push_routes = {}",
            quoted_list(&server.push_routes)
        ));
    }
    if !server.push.is_empty() {
        toml.line(format!("push = {}", quoted_list(&server.push)));
    }
    if server.client_to_client {
        toml.line("client_to_client = true");
    }
    if server.duplicate_cn {
        toml.line("duplicate_cn = true");
    }
    if let Some(dir) = &server.client_config_dir {
        toml.line(format!("client_config_dir = {}", path(dir)));
    }
    if let Some(count) = server.max_clients {
        toml.line(format!("max_clients = {count}"));
    }
}
