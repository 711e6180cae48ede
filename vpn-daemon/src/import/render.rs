//! A [`Plan`] as TOML text: a header comment (source, ignored options, notes), then the keys in
//! the order `examples/site-a.toml` documents them. Strings are quoted by the `toml` crate so
//! that any path or pushed option round-trips.
use std::fmt::Write as _;

use super::plan::Plan;
use crate::config::{Compress, Role, Topology};

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

pub(super) fn render(plan: &Plan) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "# Imported from {} by `vpn-daemon import-openvpn`.",
        comment_text(&plan.source.to_string_lossy())
    ));
    line(format!(
        "# Read with OpenVPN 2.6 semantics; relative paths resolved against {}.",
        comment_text(&plan.base_dir.to_string_lossy())
    ));
    if !plan.ignored.is_empty() {
        line("#".to_owned());
        line("# Ignored OpenVPN options (no effect here, or done differently):".to_owned());
        for (number, option, reason) in &plan.ignored {
            line(format!(
                "#   line {number}: {option}: {}",
                comment_text(reason)
            ));
        }
    }
    if !plan.notes.is_empty() {
        line("#".to_owned());
        line("# Notes:".to_owned());
        for note in &plan.notes {
            line(format!("#   - {}", comment_text(note)));
        }
    }
    line(String::new());
    line("version = 1".to_owned());
    line(String::new());
    line("[node]".to_owned());
    line(format!("name = {}", quoted(&plan.node)));
    line(String::new());
    line("[pki]".to_owned());
    line(format!("ca = {}", path(plan.ca.path())));
    line(format!("cert = {}", path(plan.cert.path())));
    line(format!("key = {}", path(plan.key.path())));
    if let Some(crl) = &plan.crl {
        line(format!("crl = {}", path(crl.path())));
    }
    line(String::new());
    line("[interfaces]".to_owned());
    line(format!("wan = {}", quoted(&plan.wan)));
    if let Some(lan) = &plan.lan {
        line(format!("lan = {}", quoted(lan)));
    }
    line(String::new());
    line("[[tunnel]]".to_owned());
    line(format!("name = {}", quoted(&plan.tunnel)));
    line(format!("role = {}", quoted(&plan.role.to_string())));
    line(format!(
        "transport = {}",
        quoted(&plan.transport.to_string())
    ));
    if let Some(local) = plan.local {
        line(format!("local = {}", quoted(&local.to_string())));
    }
    if !plan.remotes.is_empty() {
        line(format!("remote = {}", quoted_list(&plan.remotes)));
    }
    if let Some(device) = &plan.device {
        line(format!("device = {}", quoted(device)));
    }
    if let Some(ciphers) = &plan.ciphers {
        line(format!("ciphers = {}", quoted_list(ciphers)));
    }
    if let Some(tls_auth) = &plan.tls_auth {
        let mut table = format!("key = {}", path(tls_auth.key.path()));
        if let Some(direction) = tls_auth.direction {
            let _ = write!(table, ", direction = {direction}");
        }
        if let Some(digest) = tls_auth.digest {
            let _ = write!(table, ", digest = {}", quoted(digest));
        }
        line(format!("tls_auth = {{ {table} }}"));
    }
    if let Some(tls_crypt) = &plan.tls_crypt {
        line(format!("tls_crypt = {}", path(tls_crypt.path())));
    }
    if let Some((interval, timeout)) = plan.keepalive {
        line(format!(
            "keepalive = {{ interval = {interval}, timeout = {timeout} }}"
        ));
    }
    if let Some(seconds) = plan.reneg_sec {
        line(format!("reneg_sec = {seconds}"));
    }
    if let Some(mtu) = plan.mtu {
        line(format!("mtu = {mtu}"));
    }
    if let Some(usage) = plan.remote_cert_tls {
        line(format!("remote_cert_tls = {}", quoted(usage)));
    }
    if let Some(name) = &plan.verify_x509_name {
        line(format!("verify_x509_name = {}", quoted(name)));
    }
    if let Some(compress) = plan.compress {
        let name = match compress {
            Compress::LzoStub => "comp-lzo",
            Compress::Stub => "stub",
            Compress::StubV2 => "stub-v2",
        };
        line(format!("compress = {}", quoted(name)));
    }
    if !plan.routes.is_empty() {
        line(format!("routes = {}", quoted_list(&plan.routes)));
    }
    match (plan.role, &plan.p2p, &plan.server) {
        (Role::P2p, Some(p2p), _) => {
            let tls = if p2p.tls_server { "server" } else { "client" };
            line(format!("tls = {}", quoted(tls)));
            line(format!(
                "ifconfig = {{ local = {}, remote = {} }}",
                quoted(&p2p.local.to_string()),
                quoted(&p2p.remote.to_string())
            ));
        }
        (Role::Server, _, Some(server)) => {
            line(format!("server = {}", quoted(&server.subnet.to_string())));
            let topology = match server.topology {
                Topology::Subnet => "subnet",
                Topology::Net30 => "net30",
            };
            line(format!("topology = {}", quoted(topology)));
            if let Some(address) = server.server_address {
                line(format!("server_address = {}", quoted(&address.to_string())));
            }
            if let Some((start, end)) = server.ifconfig_pool {
                line(format!(
                    "ifconfig_pool = {{ start = {}, end = {} }}",
                    quoted(&start.to_string()),
                    quoted(&end.to_string())
                ));
            }
            if !server.push_routes.is_empty() {
                line(format!(
                    "push_routes = {}",
                    quoted_list(&server.push_routes)
                ));
            }
            if !server.push.is_empty() {
                line(format!("push = {}", quoted_list(&server.push)));
            }
            if server.client_to_client {
                line("client_to_client = true".to_owned());
            }
            if server.duplicate_cn {
                line("duplicate_cn = true".to_owned());
            }
            if let Some(dir) = &server.client_config_dir {
                line(format!("client_config_dir = {}", path(dir)));
            }
            if let Some(count) = server.max_clients {
                line(format!("max_clients = {count}"));
            }
        }
        _ => {}
    }
    out
}
