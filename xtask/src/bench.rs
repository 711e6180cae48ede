//! `cargo xtask bench`: throughput, CPU and latency of stock OpenVPN 2.6 and of our daemon over
//! the same two-namespace topology, side by side with the bare veth.
//!
//! ```text
//!   ns vpnb-<pid>-N-a (iperf3 -c, ping)            ns vpnb-<pid>-N-b (iperf3 -s)
//!   veth0 10.250.0.1/24    <-------- veth -------> veth0 10.250.0.2/24
//!
//!   leg                    tun in a                tun in b
//!   OpenVPN p2p            bench-ovpn  10.251.0.1  bench-ovpn  10.251.0.2
//!   ours p2p               bench-ours  10.252.0.1  bench-ours  10.252.0.2
//!   OpenVPN server+client  bench-ovcli (pool)      bench-ovsrv 10.253.0.1 (server 10.253.0.0/24)
//!   ours server+client     bench-ocli  (pool)      bench-osrv  10.254.0.1 (server 10.254.0.0/24)
//! ```
//! Legs run one after the other: bare veth; p2p: OpenVPN p2p TLS (UDP, AES-256-GCM, userspace
//! data channel), then ours (p2p, UDP, AES-256-GCM); server + one client: stock `openvpn` in
//! `server` mode with one stock client, then our daemon with a `role = "server"` tunnel and our
//! daemon with a `role = "client"` tunnel (UDP, AES-256-GCM; the client gets its address from the
//! server's pool). Traffic goes a → b, client to server. Each run: iperf3 TCP with 1 and 4
//! streams (`-O 1`), CPU of the VPN processes of both ends from /proc/PID/stat over the iperf3
//! measurement window (% of one core; this box has 2), and `ping -c 100 -i 0.01`.
//! Results: one table per mode (p2p, server + client) of medians [min–max] over the runs, and
//! `<target>/bench/results.json`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use vpn_tests::{
    daemon::Daemon,
    netns::BENCH_PREFIX,
    openvpn::{OpenVpnConfig, OpenVpnPeer},
    pki::Pki,
    traffic::{iperf3, ping_with_interval, wait_for_ping, Iperf3Options, Iperf3Server},
    veth_pair, NetNs,
};

use crate::{is_root, step, workspace_root};

const IP_A: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const OVPN_A: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const OVPN_B: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
const OURS_A: Ipv4Addr = Ipv4Addr::new(10, 252, 0, 1);
const OURS_B: Ipv4Addr = Ipv4Addr::new(10, 252, 0, 2);
/// Stock OpenVPN's `server` subnet; the server has its first host, the client one from the pool.
const OVPN_SERVER_SUBNET: &str = "10.253.0.0/24";
const OVPN_SERVER: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 1);
/// Our server tunnel's `server` subnet and its own address (the default, the first host).
const OURS_SERVER_SUBNET: &str = "10.254.0.0/24";
const OURS_SERVER: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 1);
const TUNNEL_PORT: u16 = 1194;
const IPERF_PORT: u16 = 5201;
/// How long our daemons get to bring the tunnel up before their leg is reported as not runnable.
const OURS_UP_TIMEOUT: Duration = Duration::from_secs(15);
const PING_COUNT: u32 = 100;
const STREAM_COUNTS: [u32; 2] = [1, 4];

/// Command-line knobs of `cargo xtask bench`.
pub struct BenchOptions {
    pub runs: u32,
    pub duration: u32,
    /// A `vpn-daemon` executable to measure instead of building the workspace's (release).
    pub daemon: Option<PathBuf>,
}

/// The two benchmark namespaces and their veth.
struct Topology {
    a: NetNs,
    b: NetNs,
}

impl Topology {
    fn create() -> anyhow::Result<Self> {
        let a = NetNs::with_prefix(BENCH_PREFIX, "a")?;
        let b = NetNs::with_prefix(BENCH_PREFIX, "b")?;
        veth_pair(
            (&a, "veth0", &format!("{IP_A}/24")),
            (&b, "veth0", &format!("{IP_B}/24")),
        )?;
        wait_for_ping(&a, IP_B.into(), Duration::from_secs(10))?;
        Ok(Self { a, b })
    }
}

/// A tunnel that is up: where traffic goes and which processes do the VPN work.
struct UpLeg {
    target: IpAddr,
    vpn_pids: Vec<u32>,
    info: Value,
    // Whatever must stay alive while the leg is measured (peers, daemons, temp dirs).
    _keep: Box<dyn std::any::Any>,
}

pub fn run(options: &BenchOptions) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark creates network namespaces: run it as root");
    }
    if options.runs == 0 || options.duration < 2 {
        bail!("--runs must be at least 1 and --duration at least 2 seconds");
    }
    let daemon_binary = match &options.daemon {
        Some(path) => given_daemon(path),
        None => step("build vpn-daemon (release)", build_release_daemon),
    };
    // Configs and logs stay after the run (next to results.json) for a look at failures.
    let work = results_path()
        .parent()
        .context("results path has a parent")?
        .join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let pki = step("generate PKI", || Pki::generate(&work.join("pki")))?;
    let topology = step("create namespaces and veth", Topology::create)?;
    let server = Iperf3Server::start(&topology.b, IP_B.into(), IPERF_PORT)?;

    let mut legs: BTreeMap<&str, Value> = BTreeMap::new();
    let bare = step("leg bare veth", || {
        measure_leg(
            &topology,
            options,
            UpLeg {
                target: IP_B.into(),
                vpn_pids: Vec::new(),
                info: json!({}),
                _keep: Box::new(()),
            },
            None,
        )
    })?;
    let bare_rtt = bare["summary"]["rtt_ms"]["median"].as_f64();
    legs.insert("bare", bare);

    let openvpn = step("leg OpenVPN 2.6 p2p", || {
        let up = openvpn_up(&topology, &pki)?;
        measure_leg(&topology, options, up, bare_rtt)
    })
    .unwrap_or_else(|error| not_runnable(&error));
    legs.insert("openvpn", openvpn);

    let ours = step("leg ours (vpn-daemon p2p)", || {
        let binary = daemon_binary
            .as_ref()
            .map_err(|error| anyhow!("building vpn-daemon: {error:#}"))?;
        let up = ours_up(&topology, &pki, binary, &work)?;
        measure_leg(&topology, options, up, bare_rtt)
    })
    .unwrap_or_else(|error| not_runnable(&error));
    legs.insert("ours", ours);

    let openvpn_server = step("leg OpenVPN 2.6 server + one client", || {
        let up = openvpn_server_up(&topology, &pki)?;
        measure_leg(&topology, options, up, bare_rtt)
    })
    .unwrap_or_else(|error| not_runnable(&error));
    legs.insert("openvpn_server", openvpn_server);

    let ours_server = step(
        "leg ours server + client (vpn-daemon role server / client)",
        || {
            let binary = daemon_binary
                .as_ref()
                .map_err(|error| anyhow!("building vpn-daemon: {error:#}"))?;
            let up = ours_server_up(&topology, &pki, binary, &work)?;
            measure_leg(&topology, options, up, bare_rtt)
        },
    )
    .unwrap_or_else(|error| not_runnable(&error));
    legs.insert("ours_server", ours_server);
    drop(server);

    let p2p_ratios = ratios(&legs["ours"], &legs["openvpn"]);
    let server_ratios = ratios(&legs["ours_server"], &legs["openvpn_server"]);
    print_table("p2p", &legs, ("openvpn", "ours"), &p2p_ratios);
    print_table(
        "server + one client",
        &legs,
        ("openvpn_server", "ours_server"),
        &server_ratios,
    );

    let results = json!({
        "meta": {
            "runs": options.runs,
            "duration_s": options.duration,
            "ping_count": PING_COUNT,
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs())
                .unwrap_or(0),
            "openvpn_version": first_line(Command::new("openvpn").arg("--version")),
            "kernel": first_line(Command::new("uname").arg("-r")),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "legs": legs,
        "ratio_ours_openvpn": p2p_ratios,
        "ratio_ours_openvpn_server": server_ratios,
    });
    let path = results_path();
    std::fs::create_dir_all(path.parent().context("results path has a parent")?)?;
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results: {}", path.display());
    Ok(())
}

fn not_runnable(error: &anyhow::Error) -> Value {
    let reason = format!("not yet runnable: {error:#}");
    json!({ "status": reason })
}

/// `<target dir>/bench/results.json` (`CARGO_TARGET_DIR` if set, else `<workspace>/target`).
fn results_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("bench/results.json")
}

fn first_line(command: &mut Command) -> String {
    command
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}

/// The `--daemon` executable, absolute (the daemons run with other working directories).
fn given_daemon(path: &Path) -> anyhow::Result<PathBuf> {
    let path =
        std::fs::canonicalize(path).with_context(|| format!("--daemon {}", path.display()))?;
    println!(
        "vpn-daemon: {} ({})",
        path.display(),
        first_line(Command::new(&path).arg("--version"))
    );
    Ok(path)
}

/// `cargo build --release -p vpn-daemon`, returning the executable cargo reports.
fn build_release_daemon() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["build", "--release", "--package", "vpn-daemon", "--bin"])
        .args(["vpn-daemon", "--message-format=json"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build --release")?;
    if !output.status.success() {
        bail!(
            "cargo build --release -p vpn-daemon failed ({})",
            output.status
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["target"]["name"] == "vpn-daemon")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo build did not report the vpn-daemon executable")
}

fn openvpn_up(topology: &Topology, pki: &Pki) -> anyhow::Result<UpLeg> {
    let mut server = OpenVpnConfig::p2p(
        true,
        Some(SocketAddr::new(IP_A.into(), TUNNEL_PORT)),
        OVPN_B,
        OVPN_A,
    );
    let mut client = OpenVpnConfig::p2p(
        false,
        Some(SocketAddr::new(IP_B.into(), TUNNEL_PORT)),
        OVPN_A,
        OVPN_B,
    );
    server.dev = "bench-ovpn".to_owned();
    client.dev = "bench-ovpn".to_owned();
    start_openvpn_pair(topology, pki, server, client, OVPN_B)
}

/// Stock OpenVPN in `server` mode (topology subnet) in b and one stock client in a.
fn openvpn_server_up(topology: &Topology, pki: &Pki) -> anyhow::Result<UpLeg> {
    let mut server = OpenVpnConfig::server(OVPN_SERVER_SUBNET.parse().context("subnet")?);
    server.dev = "bench-ovsrv".to_owned();
    let mut client = OpenVpnConfig::client(vec![SocketAddr::new(IP_B.into(), TUNNEL_PORT)]);
    client.dev = "bench-ovcli".to_owned();
    start_openvpn_pair(topology, pki, server, client, OVPN_SERVER)
}

/// Starts stock OpenVPN with `server` in b and `client` in a (the tunnel port, AES-256-GCM),
/// and waits until `target` (b's tunnel address) answers from a.
fn start_openvpn_pair(
    topology: &Topology,
    pki: &Pki,
    mut server: OpenVpnConfig,
    mut client: OpenVpnConfig,
    target: Ipv4Addr,
) -> anyhow::Result<UpLeg> {
    for config in [&mut server, &mut client] {
        config.port = TUNNEL_PORT;
        config.cipher = "AES-256-GCM".to_owned();
    }
    let server = OpenVpnPeer::start(&topology.b, &server, pki)?;
    let client = OpenVpnPeer::start(&topology.a, &client, pki)?;
    for peer in [&server, &client] {
        peer.wait_for_log("Initialization Sequence Completed", Duration::from_secs(30))?;
    }
    wait_for_ping(&topology.a, target.into(), Duration::from_secs(10))?;
    let cipher = client
        .log()
        .lines()
        .rfind(|line| line.contains("Data Channel: cipher"))
        .map(|line| line.trim().to_owned())
        .unwrap_or_default();
    Ok(UpLeg {
        target: target.into(),
        vpn_pids: vec![client.pid(), server.pid()],
        info: json!({ "cipher": cipher, "config_b": server.config_text() }),
        _keep: Box::new((server, client)),
    })
}

/// One of our daemons in the benchmark: which namespace, its name in file names, its config.
struct OursEnd<'a> {
    ns: &'a NetNs,
    side: &'a str,
    config: PathBuf,
}

/// Writes our daemon's config for one end, `<work>/ours-<side>.toml` (the schema is
/// vpn-daemon/examples/site-a.toml): node `vb<pid><node_suffix>`, the certificate and key
/// given, WAN veth0, and `tunnel` as the one [[tunnel]] table.
fn write_ours_config(
    dir: &Path,
    pki: &Pki,
    side: &str,
    node_suffix: char,
    (cert, key): (&Path, &Path),
    tunnel: &str,
) -> anyhow::Result<PathBuf> {
    let text = format!(
        r#"version = 1
[node]
name = "vb{pid}{node_suffix}"
control_socket = "{dir}/ours-{side}.sock"
[pki]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
[interfaces]
wan = "veth0"
[[tunnel]]
{tunnel}"#,
        pid = std::process::id(),
        dir = dir.display(),
        ca = pki.ca.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let path = dir.join(format!("ours-{side}.toml"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Our p2p config for one end: b runs the TLS server, a the TLS client.
fn ours_p2p_config(dir: &Path, pki: &Pki, side: char) -> anyhow::Result<PathBuf> {
    let tls_server = side == 'b';
    let (local, remote, identity, peer_eku, ifconfig_local, ifconfig_remote) = if tls_server {
        (
            IP_B,
            IP_A,
            (pki.server_cert.as_path(), pki.server_key.as_path()),
            "client",
            OURS_B,
            OURS_A,
        )
    } else {
        (
            IP_A,
            IP_B,
            (pki.client_cert.as_path(), pki.client_key.as_path()),
            "server",
            OURS_A,
            OURS_B,
        )
    };
    let tunnel = format!(
        r#"name = "bench"
role = "p2p"
transport = "udp"
local = "{local}:{port}"
remote = ["{remote}:{port}"]
device = "bench-ours"
ciphers = ["AES-256-GCM"]
remote_cert_tls = "{peer_eku}"
tls = "{tls}"
ifconfig = {{ local = "{ifconfig_local}", remote = "{ifconfig_remote}" }}
"#,
        port = TUNNEL_PORT,
        tls = if tls_server { "server" } else { "client" },
    );
    write_ours_config(dir, pki, &side.to_string(), side, identity, &tunnel)
}

/// Our multi-client server in b (`role = "server"`, address pool `OURS_SERVER_SUBNET`) and our
/// client in a (`role = "client"`), UDP, AES-256-GCM.
fn ours_server_client_configs(dir: &Path, pki: &Pki) -> anyhow::Result<(PathBuf, PathBuf)> {
    let server = format!(
        r#"name = "bench"
role = "server"
transport = "udp"
local = "{IP_B}:{TUNNEL_PORT}"
device = "bench-osrv"
ciphers = ["AES-256-GCM"]
remote_cert_tls = "client"
server = "{OURS_SERVER_SUBNET}"
"#
    );
    let client = format!(
        r#"name = "bench"
role = "client"
transport = "udp"
remote = ["{IP_B}:{TUNNEL_PORT}"]
device = "bench-ocli"
ciphers = ["AES-256-GCM"]
remote_cert_tls = "server"
"#
    );
    Ok((
        write_ours_config(
            dir,
            pki,
            "server",
            's',
            (&pki.server_cert, &pki.server_key),
            &server,
        )?,
        write_ours_config(
            dir,
            pki,
            "client",
            'c',
            (&pki.client_cert, &pki.client_key),
            &client,
        )?,
    ))
}

fn ours_up(topology: &Topology, pki: &Pki, binary: &Path, work: &Path) -> anyhow::Result<UpLeg> {
    let ends = [
        OursEnd {
            ns: &topology.b,
            side: "b",
            config: ours_p2p_config(work, pki, 'b')?,
        },
        OursEnd {
            ns: &topology.a,
            side: "a",
            config: ours_p2p_config(work, pki, 'a')?,
        },
    ];
    start_ours(topology, binary, work, &ends, OURS_B)
}

fn ours_server_up(
    topology: &Topology,
    pki: &Pki,
    binary: &Path,
    work: &Path,
) -> anyhow::Result<UpLeg> {
    let (server, client) = ours_server_client_configs(work, pki)?;
    let ends = [
        OursEnd {
            ns: &topology.b,
            side: "server",
            config: server,
        },
        OursEnd {
            ns: &topology.a,
            side: "client",
            config: client,
        },
    ];
    start_ours(topology, binary, work, &ends, OURS_SERVER)
}

/// Checks each config, starts our daemons in order and waits until a pings `target` through
/// the tunnel; on a timeout the error carries the tails of their logs.
fn start_ours(
    topology: &Topology,
    binary: &Path,
    work: &Path,
    ends: &[OursEnd],
    target: Ipv4Addr,
) -> anyhow::Result<UpLeg> {
    let mut daemons = Vec::new();
    for end in ends {
        let check = Command::new(binary)
            .arg("check-config")
            .arg(&end.config)
            .output()
            .context("running vpn-daemon check-config")?;
        if !check.status.success() {
            bail!(
                "vpn-daemon check-config {}: {}",
                end.config.display(),
                String::from_utf8_lossy(&check.stderr).trim()
            );
        }
        let socket = work.join(format!("ours-{}.sock", end.side));
        let log = work.join(format!("ours-{}.log", end.side));
        daemons.push((
            Daemon::start_binary(binary, "info", end.ns, &end.config, &socket, &log)?,
            log,
        ));
    }
    if let Err(error) = wait_for_ping(&topology.a, target.into(), OURS_UP_TIMEOUT) {
        let tails: Vec<String> = daemons
            .iter()
            .map(|(daemon, log)| {
                let text = daemon.log();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "{} (pid {:?}): {}",
                    log.display(),
                    daemon.pid(),
                    lines[lines.len().saturating_sub(3)..].join(" | ")
                )
            })
            .collect();
        bail!(
            "no tunnel within {OURS_UP_TIMEOUT:?} ({error:#}); log tails: {}",
            tails.join("; ")
        );
    }
    Ok(UpLeg {
        target: target.into(),
        vpn_pids: daemons
            .iter()
            .filter_map(|(daemon, _)| daemon.pid())
            .collect(),
        info: json!({
            "binary": binary.display().to_string(),
            "version": first_line(Command::new(binary).arg("--version")),
        }),
        _keep: Box::new(daemons),
    })
}

/// Runs every measurement `runs` times on a leg that is up, then summarizes.
fn measure_leg(
    topology: &Topology,
    options: &BenchOptions,
    up: UpLeg,
    bare_rtt_ms: Option<f64>,
) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    for run in 1..=options.runs {
        let mut record = serde_json::Map::new();
        record.insert("run".into(), json!(run));
        for streams in STREAM_COUNTS {
            let sample = measure_iperf3(topology, options, &up, streams)?;
            println!("    run {run} tcp{streams}: {sample}");
            record.insert(format!("tcp{streams}"), sample);
        }
        let ping = ping_with_interval(
            &topology.a,
            up.target,
            PING_COUNT,
            Duration::from_millis(10),
        )?;
        let rtt_ms = ping.rtt_median.map(|rtt| round3(rtt.as_secs_f64() * 1e3));
        let added = rtt_ms
            .zip(bare_rtt_ms)
            .map(|(rtt, bare)| round3(rtt - bare));
        let sample = json!({
            "received": ping.received,
            "sent": ping.sent,
            "rtt_ms": rtt_ms,
            "added_rtt_ms": added,
        });
        println!("    run {run} ping: {sample}");
        record.insert("ping".into(), sample);
        runs.push(Value::Object(record));
    }
    let mut summary = serde_json::Map::new();
    for streams in STREAM_COUNTS {
        for metric in ["gbps", "vpn_cpu_pct", "cpu_pct_per_gbps"] {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|run| run[format!("tcp{streams}")][metric].as_f64())
                .collect();
            summary.insert(format!("tcp{streams}_{metric}"), summarize(&values));
        }
    }
    for metric in ["rtt_ms", "added_rtt_ms"] {
        let values: Vec<f64> = runs
            .iter()
            .filter_map(|run| run["ping"][metric].as_f64())
            .collect();
        summary.insert(metric.to_owned(), summarize(&values));
    }
    Ok(json!({ "status": "ok", "info": up.info, "runs": runs, "summary": summary }))
}

/// One iperf3 run with the VPN processes' CPU sampled over its measurement window.
fn measure_iperf3(
    topology: &Topology,
    options: &BenchOptions,
    up: &UpLeg,
    streams: u32,
) -> anyhow::Result<Value> {
    let iperf_options = Iperf3Options {
        streams,
        seconds: options.duration,
        omit: 1,
        port: IPERF_PORT,
        ..Iperf3Options::default()
    };
    let pids = up.vpn_pids.clone();
    let window = Duration::from_secs_f64(f64::from(options.duration) - 0.5);
    // The sampler skips the omitted first second and stops before the end of the run.
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1200));
        let start = CpuSnapshot::take(&pids);
        std::thread::sleep(window.saturating_sub(Duration::from_millis(700)));
        start.usage_since(&CpuSnapshot::take(&pids))
    });
    let result = iperf3(&topology.a, up.target, &iperf_options);
    let cpu = sampler
        .join()
        .map_err(|_| anyhow!("CPU sampler panicked"))?;
    let result = result?;
    let gbps = result.gbit_per_second();
    let vpn_cpu_pct = (!up.vpn_pids.is_empty()).then_some(cpu.process_pct);
    Ok(json!({
        "gbps": round3(gbps),
        "retransmits": result.retransmits,
        "vpn_cpu_pct": vpn_cpu_pct.map(round3),
        "cpu_pct_per_gbps": vpn_cpu_pct.filter(|_| gbps > 0.0).map(|pct| round3(pct / gbps)),
        "box_busy_pct": round3(cpu.box_busy_pct),
        "min_interval_gbps": result
            .intervals_bps
            .iter()
            .cloned()
            .reduce(f64::min)
            .map(|bps| round3(bps / 1e9)),
    }))
}

/// utime+stime of some processes (all their threads) and the whole box, at one instant.
struct CpuSnapshot {
    at: Instant,
    process_ticks: u64,
    box_busy: u64,
    box_total: u64,
}

struct CpuUsage {
    /// The processes' CPU in % of one core.
    process_pct: f64,
    /// The whole machine's busy time in % of all cores.
    box_busy_pct: f64,
}

impl CpuSnapshot {
    fn take(pids: &[u32]) -> Self {
        let process_ticks = pids.iter().filter_map(|pid| process_ticks(*pid)).sum();
        let (box_busy, box_total) = box_ticks().unwrap_or((0, 0));
        Self {
            at: Instant::now(),
            process_ticks,
            box_busy,
            box_total,
        }
    }

    fn usage_since(&self, later: &CpuSnapshot) -> CpuUsage {
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let process = later.process_ticks.saturating_sub(self.process_ticks) as f64;
        let total = later.box_total.saturating_sub(self.box_total).max(1) as f64;
        CpuUsage {
            process_pct: 100.0 * process / ticks_per_second / seconds,
            box_busy_pct: 100.0 * later.box_busy.saturating_sub(self.box_busy) as f64 / total,
        }
    }
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat; they count every thread of the process).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may contain spaces): state is field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) jiffies of all CPUs from the first line of /proc/stat.
fn box_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let values: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|value| value.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn summarize(values: &[f64]) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    };
    json!({
        "median": round3(median),
        "min": round3(sorted[0]),
        "max": round3(sorted[sorted.len() - 1]),
        "n": sorted.len(),
    })
}

/// The rows of the table: summary key and label.
const ROWS: [(&str, &str); 8] = [
    ("tcp1_gbps", "1 stream Gbit/s"),
    ("tcp4_gbps", "4 streams Gbit/s"),
    ("tcp1_vpn_cpu_pct", "1 stream VPN CPU %"),
    ("tcp4_vpn_cpu_pct", "4 streams VPN CPU %"),
    ("tcp1_cpu_pct_per_gbps", "1 stream CPU % per Gbit/s"),
    ("tcp4_cpu_pct_per_gbps", "4 streams CPU % per Gbit/s"),
    ("rtt_ms", "ping RTT ms"),
    ("added_rtt_ms", "added RTT ms"),
];

/// ours / OpenVPN for each summary median both legs have.
fn ratios(ours: &Value, openvpn: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (key, _) in ROWS {
        let ours = ours["summary"][key]["median"].as_f64();
        let theirs = openvpn["summary"][key]["median"].as_f64();
        if let (Some(ours), Some(theirs)) = (ours, theirs) {
            if theirs != 0.0 {
                out.insert(key.to_owned(), json!(round3(ours / theirs)));
            }
        }
    }
    Value::Object(out)
}

/// One table: the bare veth, then OpenVPN's and our leg of one mode (`pair`: their keys in
/// `legs`), and ours/OpenVPN; then why a leg shown did not run, if one did not.
fn print_table(
    mode: &str,
    legs: &BTreeMap<&str, Value>,
    (openvpn, ours): (&str, &str),
    ratios: &Value,
) {
    let cell = |leg: &Value, key: &str| -> String {
        let summary = &leg["summary"][key];
        match (
            summary["median"].as_f64(),
            summary["min"].as_f64(),
            summary["max"].as_f64(),
        ) {
            (Some(median), Some(min), Some(max)) => {
                format!("{median:.2} [{min:.2}–{max:.2}]")
            }
            _ => "-".to_owned(),
        }
    };
    println!();
    println!("{mode}:");
    println!(
        "{:<28} {:>22} {:>22} {:>22} {:>10}",
        "metric (median [min–max])", "bare veth", "OpenVPN 2.6", "ours", "ours/ovpn"
    );
    for (key, label) in ROWS {
        let ratio = ratios[key]
            .as_f64()
            .map(|ratio| format!("{ratio:.2}"))
            .unwrap_or_else(|| "-".to_owned());
        println!(
            "{label:<28} {:>22} {:>22} {:>22} {ratio:>10}",
            cell(&legs["bare"], key),
            cell(&legs[openvpn], key),
            cell(&legs[ours], key),
        );
    }
    for name in ["bare", openvpn, ours] {
        if let Some(status) = legs[name]["status"]
            .as_str()
            .filter(|status| *status != "ok")
        {
            println!("{name}: {status}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_median_min_max() {
        let summary = summarize(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!(summary["median"], json!(2.5));
        assert_eq!(summary["min"], json!(1.0));
        assert_eq!(summary["max"], json!(10.0));
        assert_eq!(summarize(&[]), Value::Null);
    }

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let pid = std::process::id();
        let before = process_ticks(pid).expect("reading own /proc stat");
        let started = Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        assert!(process_ticks(pid).expect("reading again") > before);
        assert!(process_ticks(u32::MAX).is_none());
    }
}
