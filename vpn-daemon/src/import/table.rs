//! What the importer does with each OpenVPN 2.6 option: translate it (with the function of
//! `read` named here), ignore it (with the reason printed in the generated file), or refuse it
//! (with the reason in the error).
//!
//! The rule for choosing: an option is *ignored* only when dropping it cannot weaken access
//! control or change where traffic goes (logging, privilege dropping, timers, buffers). Anything
//! that authenticates, authorises, runs code or changes the data path and that the daemon cannot
//! do is *unsupported*, so that an import never silently opens or breaks a deployment. Scripts
//! (`up`, `down`, `client-connect`, `tls-verify`, ...) are therefore errors, not warnings: the
//! importer cannot know whether a script only sets DNS or also enforces a firewall rule or an
//! access check, and the operator has to decide. Options not listed here are unsupported too.

use super::read::{self, Handler};

/// What happens to one option.
#[derive(Debug, Clone, Copy)]
pub(super) enum Disposition {
    /// Translated by this function of `read` (which may still refuse a particular use of it).
    /// An inline `<option>` block is refused.
    Translate(Handler),
    /// Like `Translate`, for an option that names a key or certificate file: the file may also
    /// be given as an inline `<option>` block.
    TranslateFile(Handler),
    /// Listed in the output's header comment with this reason; no TOML key.
    Ignore(&'static str),
    /// An error naming the option, its line and this reason.
    Unsupported(&'static str),
}

use Disposition::{Ignore, Translate, TranslateFile, Unsupported};

const LOGGING: &str = "logging goes to stderr/the journal (RUST_LOG sets the level); live state is in `vpn-daemon status`";
const PRIVILEGES: &str =
    "privilege dropping and sandboxing are the service manager's job (the systemd unit), not the config's";
const SERVICE: &str = "the service manager starts and tracks the daemon";
const TIMERS: &str = "the daemon uses its own connect, retry and handshake timers";
const BUFFERS: &str = "the daemon sizes its sockets and queues itself";
const SCRIPTS: &str = "scripts are not supported: the daemon runs no external programs, and the importer cannot tell whether the script only sets DNS or also enforces firewall rules or access checks; do what it does in the appliance configuration, remove the line and import again";
const USER_PASS: &str = "username/password authentication is not supported: the daemon authenticates peers by certificate only";
pub(super) const TAP: &str =
    "layer-2 (tap) tunnels are not supported; the daemon only does tun (layer 3)";
const IPV6_TUNNEL: &str =
    "IPv6 tunnel addresses are not in config schema v1 (IPv6 routes through the tunnel are)";
const NOT_PEM: &str =
    "only PEM files are supported for certificates and keys (ca, cert, key, crl-verify)";
const CCD_ONLY: &str =
    "belongs in a client-config-dir file, not in the server config (OpenVPN ignores it there too)";
const PROXY: &str = "connecting through a proxy is not supported";
const TLS_LIB: &str =
    "TLS is rustls with its own safe TLS 1.2/1.3 cipher suites and key-exchange groups (X25519, P-256, P-384)";

/// Every option the importer knows, by name. Sorted by name for the binary search.
const TABLE: &[(&str, Disposition)] = &[
    ("allow-compression", Ignore("nothing is ever compressed; compressed packets from a peer are counted and dropped (like allow-compression no)")),
    ("allow-pull-fqdn", Ignore("pushed routes are IP prefixes")),
    ("auth", Translate(read::auth)),
    ("auth-gen-token", Unsupported(USER_PASS)),
    ("auth-nocache", Ignore("no passwords are used")),
    ("auth-retry", Ignore("no username/password authentication is used")),
    ("auth-token", Unsupported(USER_PASS)),
    ("auth-user-pass", Unsupported(USER_PASS)),
    ("auth-user-pass-optional", Unsupported(USER_PASS)),
    ("auth-user-pass-verify", Unsupported(SCRIPTS)),
    ("bcast-buffers", Ignore(BUFFERS)),
    ("ca", TranslateFile(read::ca)),
    ("capath", Unsupported(NOT_PEM)),
    ("ccd-exclusive", Unsupported("refusing clients that have no client-config-dir file is not supported; every client with a valid certificate is accepted unless its file says `disable`")),
    ("cd", Translate(read::cd)),
    ("cert", TranslateFile(read::cert)),
    ("chroot", Ignore(PRIVILEGES)),
    ("cipher", Translate(read::cipher)),
    ("client", Translate(read::client)),
    ("client-cert-not-required", Unsupported(USER_PASS)),
    ("client-config-dir", Translate(read::client_config_dir)),
    ("client-connect", Unsupported(SCRIPTS)),
    ("client-disconnect", Unsupported(SCRIPTS)),
    ("client-nat", Unsupported("client-nat is not supported")),
    ("client-to-client", Translate(read::client_to_client)),
    ("comp-lzo", Translate(read::comp_lzo)),
    ("comp-noadapt", Ignore("nothing is ever compressed")),
    ("compress", Translate(read::compress)),
    ("config", Unsupported("included config files are not followed; paste the included file's lines in its place and import again")),
    ("connect-freq", Unsupported("connection rate limiting is not configurable (the eBPF admission filter does it)")),
    ("connect-retry", Ignore(TIMERS)),
    ("connect-retry-max", Ignore(TIMERS)),
    ("connect-timeout", Ignore(TIMERS)),
    ("connection", Unsupported("<connection> profiles are not supported; write the servers as `remote` lines (one transport for all)")),
    ("crl-verify", TranslateFile(read::crl_verify)),
    ("cryptoapicert", Unsupported(NOT_PEM)),
    ("daemon", Ignore(SERVICE)),
    ("data-ciphers", Translate(read::data_ciphers)),
    ("data-ciphers-fallback", Translate(read::cipher)),
    ("dev", Translate(read::dev)),
    ("dev-node", Ignore("the daemon creates its tun device by name")),
    ("dev-type", Translate(read::dev_type)),
    ("dh", Ignore("TLS uses elliptic-curve key exchange (rustls); finite-field DH parameters are not needed")),
    ("dhcp-option", Ignore("on Linux only scripts read it; the daemon changes no DNS settings")),
    ("disable", Unsupported(CCD_ONLY)),
    ("disable-dco", Ignore("the daemon has its own data path (userspace and eBPF)")),
    ("disable-occ", Ignore("option-string consistency checks have no effect here")),
    ("down", Unsupported(SCRIPTS)),
    ("down-pre", Ignore("no down script is run")),
    ("duplicate-cn", Translate(read::duplicate_cn)),
    ("ecdh-curve", Ignore(TLS_LIB)),
    ("explicit-exit-notify", Ignore("always done: on a clean stop the daemon tells the peer (control-channel EXIT, or OCC EXIT on the data channel over UDP)")),
    ("extra-certs", Unsupported("extra-certs is not supported; put the intermediate CA certificates into the ca file")),
    ("fast-io", Ignore(BUFFERS)),
    ("float", Ignore("the daemon accepts authenticated packets from whatever address they come from")),
    ("fragment", Unsupported("OpenVPN's internal fragmentation is not supported; the peer's fragments could not be reassembled (use tun-mtu or path MTU discovery instead)")),
    ("group", Ignore(PRIVILEGES)),
    ("hand-window", Ignore(TIMERS)),
    ("hash-size", Ignore(BUFFERS)),
    ("http-proxy", Unsupported(PROXY)),
    ("http-proxy-option", Unsupported(PROXY)),
    ("http-proxy-user-pass", Unsupported(PROXY)),
    ("ifconfig", Translate(read::ifconfig)),
    ("ifconfig-ipv6", Unsupported(IPV6_TUNNEL)),
    ("ifconfig-ipv6-pool", Unsupported(IPV6_TUNNEL)),
    ("ifconfig-ipv6-push", Unsupported(CCD_ONLY)),
    ("ifconfig-noexec", Unsupported("the daemon always configures its tun device's addresses")),
    ("ifconfig-nowarn", Ignore("the daemon checks addresses at load time")),
    ("ifconfig-pool", Translate(read::ifconfig_pool)),
    ("ifconfig-pool-linear", Unsupported("removed from OpenVPN 2.5; use topology subnet")),
    ("ifconfig-pool-persist", Ignore("pool assignments are kept stable per certificate common name in memory (not written to a file, so not across restarts); use ifconfig-push in client-config-dir for fixed addresses")),
    ("ifconfig-push", Unsupported(CCD_ONLY)),
    ("ignore-unknown-option", Ignore("the importer decides about every option itself")),
    ("inactive", Unsupported("disconnecting after a period of no traffic is not supported")),
    ("inetd", Unsupported("inetd mode is not supported")),
    ("ipchange", Unsupported(SCRIPTS)),
    ("iroute", Unsupported(CCD_ONLY)),
    ("iroute-ipv6", Unsupported(CCD_ONLY)),
    ("keepalive", Translate(read::keepalive)),
    ("key", TranslateFile(read::key)),
    ("key-direction", Translate(read::key_direction)),
    ("key-method", Ignore("key-method 2 is the only method (1 was removed in OpenVPN 2.5)")),
    ("keying-material-exporter", Unsupported("exporting keying material to scripts is not supported")),
    ("learn-address", Unsupported(SCRIPTS)),
    ("link-mtu", Unsupported("link-mtu is not supported; set tun-mtu instead")),
    ("lladdr", Unsupported(TAP)),
    ("local", Translate(read::local)),
    ("log", Ignore(LOGGING)),
    ("log-append", Ignore(LOGGING)),
    ("lport", Translate(read::lport)),
    ("machine-readable-output", Ignore(LOGGING)),
    ("management", Ignore("use `vpn-daemon status` (the daemon's control socket) instead of the management interface")),
    ("management-client-auth", Unsupported("management-interface client authentication is not supported")),
    ("management-client-group", Ignore("no management interface")),
    ("management-client-user", Ignore("no management interface")),
    ("management-external-cert", Unsupported(NOT_PEM)),
    ("management-external-key", Unsupported(NOT_PEM)),
    ("management-hold", Ignore("no management interface; the daemon starts at once")),
    ("management-log-cache", Ignore("no management interface")),
    ("management-query-passwords", Ignore("no management interface; no passwords are used")),
    ("max-clients", Translate(read::max_clients)),
    ("max-routes-per-client", Ignore("client routes come only from client-config-dir iroutes, which the operator controls")),
    ("mktun", Unsupported("creating persistent tun devices is not supported; the daemon manages its devices")),
    ("mlock", Ignore("memory pages are not locked (key material is zeroed when dropped)")),
    ("mode", Translate(read::mode)),
    ("mssfix", Ignore("the daemon does not clamp TCP MSS: TCP through the tunnel relies on path MTU discovery (set tun-mtu to leave room for the ~60-byte overhead if it is blocked)")),
    ("multihome", Ignore("replies leave from the source address the kernel picks; if the host has several addresses, bind `local` to the one clients use")),
    ("mute", Ignore(LOGGING)),
    ("mute-replay-warnings", Ignore(LOGGING)),
    ("ncp-ciphers", Translate(read::data_ciphers)),
    ("ncp-disable", Unsupported("removed from OpenVPN 2.6; the daemon always negotiates the data cipher")),
    ("nice", Ignore(PRIVILEGES)),
    ("nobind", Translate(read::nobind)),
    ("ns-cert-type", Unsupported("removed from OpenVPN 2.5; use remote-cert-tls")),
    ("opt-verify", Ignore("option-string checks were deprecated in OpenVPN 2.6 and have no effect here")),
    ("passtos", Ignore("the outer packet's TOS is not copied from the inner packet")),
    ("persist-key", Ignore("the daemon keeps its keys in memory across reconnects")),
    ("persist-local-ip", Ignore("the local address is fixed by `local`")),
    ("persist-remote-ip", Ignore("remotes are IP addresses; nothing is re-resolved")),
    ("persist-tun", Ignore("the tun device stays up across reconnects and is removed only when the daemon stops")),
    ("ping", Translate(read::ping)),
    ("ping-exit", Translate(read::ping_exit)),
    ("ping-restart", Translate(read::ping_restart)),
    ("ping-timer-rem", Ignore("keepalive runs while a peer is connected, which is what ping-timer-rem asks for")),
    ("pkcs11-id", Unsupported(NOT_PEM)),
    ("pkcs11-providers", Unsupported(NOT_PEM)),
    ("pkcs12", Unsupported(NOT_PEM)),
    ("plugin", Unsupported("plugins are not supported (they usually add authentication or accounting the daemon would silently skip)")),
    ("port", Translate(read::port)),
    ("port-share", Unsupported("sharing the port with a web server is not supported")),
    ("proto", Translate(read::proto)),
    ("pull", Translate(read::pull)),
    ("pull-filter", Unsupported("filtering pushed options is not supported")),
    ("push", Translate(read::push)),
    ("push-peer-info", Ignore("the daemon always sends its peer info (IV_ variables)")),
    ("push-remove", Unsupported("push-remove is not supported; edit the push list")),
    ("push-reset", Unsupported(CCD_ONLY)),
    ("rcvbuf", Ignore(BUFFERS)),
    ("redirect-gateway", Unsupported("redirecting the default route on a client is not supported; list the prefixes to send through the tunnel with `route`")),
    ("redirect-private", Unsupported("redirect-private is not supported; list the prefixes with `route`")),
    ("remap-usr1", Ignore("signals: SIGHUP reloads, SIGTERM/SIGINT stop")),
    ("remote", Translate(read::remote)),
    ("remote-cert-eku", Unsupported("remote-cert-eku is not supported; use remote-cert-tls")),
    ("remote-cert-ku", Unsupported("remote-cert-ku is not supported; use remote-cert-tls")),
    ("remote-cert-tls", Translate(read::remote_cert_tls)),
    ("remote-random", Ignore("remotes are tried in file order")),
    ("remote-random-hostname", Ignore("remotes are IP addresses")),
    ("reneg-bytes", Ignore("only time-based renegotiation (reneg-sec); byte limits matter for 64-bit block ciphers, which are not supported")),
    ("reneg-pkts", Ignore("only time-based renegotiation (reneg-sec)")),
    ("reneg-sec", Translate(read::reneg_sec)),
    ("replay-persist", Unsupported("replay-persist is a static-key-mode option; static-key mode is not supported")),
    ("replay-window", Ignore("the data channel uses its own replay window")),
    ("resolv-retry", Ignore("remotes are IP addresses; nothing is resolved")),
    ("rmtun", Unsupported("removing persistent tun devices is not supported")),
    ("route", Translate(read::route)),
    ("route-delay", Ignore("routes are installed as soon as the tunnel is up")),
    ("route-gateway", Translate(read::route_gateway)),
    ("route-ipv6", Translate(read::route_ipv6)),
    ("route-method", Ignore("routes are installed over rtnetlink")),
    ("route-metric", Ignore("routes are installed with the kernel's default metric")),
    ("route-noexec", Unsupported("the daemon always installs its routes")),
    ("route-nopull", Unsupported("ignoring the server's pushed routes is not supported")),
    ("route-pre-down", Unsupported(SCRIPTS)),
    ("route-up", Unsupported(SCRIPTS)),
    ("rport", Translate(read::rport)),
    ("script-security", Ignore("the daemon runs no scripts")),
    ("secret", Unsupported("static-key mode (no TLS) is not supported (OpenVPN 2.6 deprecates it): set up certificates and use tls-server/tls-client")),
    ("server", Translate(read::server)),
    ("server-bridge", Unsupported(TAP)),
    ("server-ipv6", Unsupported(IPV6_TUNNEL)),
    ("server-poll-timeout", Ignore(TIMERS)),
    ("setenv", Ignore("environment variables are for scripts; the daemon runs none")),
    ("setenv-safe", Ignore("environment variables are for scripts; the daemon runs none")),
    ("shaper", Unsupported("traffic shaping is not supported")),
    ("sndbuf", Ignore(BUFFERS)),
    ("socks-proxy", Unsupported(PROXY)),
    ("stale-routes-check", Ignore("a client's iroutes are removed when it disconnects")),
    ("static-challenge", Unsupported(USER_PASS)),
    ("status", Ignore(LOGGING)),
    ("status-version", Ignore(LOGGING)),
    ("suppress-timestamps", Ignore(LOGGING)),
    ("syslog", Ignore(LOGGING)),
    ("tap-sleep", Unsupported(TAP)),
    ("tcp-nodelay", Ignore("the daemon sets TCP_NODELAY on its TCP connections")),
    ("tcp-queue-limit", Ignore(BUFFERS)),
    ("tls-auth", TranslateFile(read::tls_auth)),
    ("tls-cipher", Ignore(TLS_LIB)),
    ("tls-ciphersuites", Ignore(TLS_LIB)),
    ("tls-client", Translate(read::tls_client)),
    ("tls-crypt", TranslateFile(read::tls_crypt)),
    ("tls-crypt-v2", Unsupported("tls-crypt-v2 (per-client keys) is not supported; use tls-crypt")),
    ("tls-crypt-v2-verify", Unsupported(SCRIPTS)),
    ("tls-exit", Ignore("the daemon keeps retrying after a TLS failure")),
    ("tls-export-cert", Ignore("certificates are not exported for scripts")),
    ("tls-groups", Ignore(TLS_LIB)),
    ("tls-remote", Unsupported("removed from OpenVPN 2.3; use verify-x509-name NAME name")),
    ("tls-server", Translate(read::tls_server)),
    ("tls-timeout", Ignore(TIMERS)),
    ("tls-verify", Unsupported(SCRIPTS)),
    ("tls-version-max", Ignore("TLS 1.2 and 1.3 are used (rustls); 1.0 and 1.1 are never offered")),
    ("tls-version-min", Ignore("TLS 1.2 and 1.3 are used (rustls); 1.0 and 1.1 are never offered")),
    ("topology", Translate(read::topology)),
    ("tran-window", Ignore(TIMERS)),
    ("tun-ipv6", Ignore("obsolete since OpenVPN 2.4")),
    ("tun-mtu", Translate(read::tun_mtu)),
    ("tun-mtu-extra", Ignore("a tap-only option")),
    ("txqueuelen", Ignore(BUFFERS)),
    ("up", Unsupported(SCRIPTS)),
    ("up-delay", Ignore("the tun device is configured when the daemon starts")),
    ("up-restart", Ignore("no up script is run")),
    ("user", Ignore(PRIVILEGES)),
    ("username-as-common-name", Unsupported(USER_PASS)),
    ("verb", Ignore(LOGGING)),
    ("verify-client-cert", Translate(read::verify_client_cert)),
    ("verify-hash", Unsupported("pinning the peer's certificate hash is not supported; use ca with verify-x509-name")),
    ("verify-x509-name", Translate(read::verify_x509_name)),
    ("vlan-accept", Unsupported(TAP)),
    ("vlan-pvid", Unsupported(TAP)),
    ("vlan-tagging", Unsupported(TAP)),
    ("writepid", Ignore(SERVICE)),
    ("x509-track", Ignore("certificate fields are not exported for scripts")),
    ("x509-username-field", Unsupported("the peer is always identified by its certificate's common name")),
];

/// What to do with option `name`. Unknown options are unsupported: the importer only lets
/// through what it understands.
pub(super) fn disposition(name: &str) -> Disposition {
    TABLE
        .binary_search_by(|(known, _)| (*known).cmp(name))
        .map(|index| TABLE[index].1)
        .unwrap_or(Unsupported(
            "not an OpenVPN 2.6 option this importer knows; remove it or translate it by hand",
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_without_duplicates() {
        for pair in TABLE.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn lookups() {
        assert!(matches!(disposition("remote"), Translate(_)));
        assert!(matches!(disposition("ca"), TranslateFile(_)));
        assert!(matches!(disposition("persist-key"), Ignore(_)));
        assert!(matches!(disposition("up"), Unsupported(reason) if reason.contains("scripts")));
        assert!(matches!(disposition("no-such-option"), Unsupported(_)));
        assert!(matches!(disposition(""), Unsupported(_)));
    }
}
