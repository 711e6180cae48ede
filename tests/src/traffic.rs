//! Traffic through a tunnel: `ping` and `iperf3` run inside namespaces, their output parsed.
//! Every process started here is ended by its PID.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{wait_for, NetNs};

/// What `ping` saw.
#[derive(Debug, Clone, PartialEq)]
pub struct PingResult {
    pub sent: u32,
    /// Echo replies received (duplicates not counted).
    pub received: u32,
    /// Median round-trip time of the replies; `None` without replies.
    pub rtt_median: Option<Duration>,
    /// Every reply's round-trip time, in arrival order.
    pub rtts: Vec<Duration>,
}

/// `ping -c COUNT -i 0.05 DST` from `ns` (1 s per-reply timeout). Lost replies are not an error:
/// check `received`.
pub fn ping(ns: &NetNs, dst: IpAddr, count: u32) -> anyhow::Result<PingResult> {
    ping_with_interval(ns, dst, count, Duration::from_millis(50))
}

/// `ping` with an explicit interval (root may go down to 1 ms; the benchmark uses 10 ms).
pub fn ping_with_interval(
    ns: &NetNs,
    dst: IpAddr,
    count: u32,
    interval: Duration,
) -> anyhow::Result<PingResult> {
    // An overall deadline so a dead tunnel costs at most the run time plus one timeout.
    let deadline = (interval.as_secs_f64() * f64::from(count)).ceil() as u64 + 2;
    let output = ns
        .command("ping")?
        .args(["-n", "-W", "1"])
        .args(["-c", &count.to_string()])
        .args(["-i", &format!("{:.3}", interval.as_secs_f64())])
        .args(["-w", &deadline.to_string()])
        .arg(dst.to_string())
        .stdin(Stdio::null())
        .output()
        .context("running ping")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // ping exits 1 when replies are missing and 2 on other errors (bad address, no route).
    if output.status.code() == Some(2) {
        bail!(
            "ping {dst} failed: {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(parse_ping(&stdout, count))
}

fn parse_ping(stdout: &str, sent: u32) -> PingResult {
    let rtts: Vec<Duration> = stdout
        .lines()
        .filter(|line| line.contains("bytes from") && !line.contains("(DUP!)"))
        .filter_map(|line| line.split("time=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|ms| ms.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    PingResult {
        sent,
        received: u32::try_from(rtts.len()).unwrap_or(u32::MAX),
        rtt_median: median_duration(&rtts),
        rtts,
    }
}

fn median_duration(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        len if len % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2),
    }
}

/// Pings `dst` once a second-ish until one reply comes back (a tunnel that just logged
/// "Initialization Sequence Completed" may still be installing its address and routes).
pub fn wait_for_ping(ns: &NetNs, dst: IpAddr, timeout: Duration) -> anyhow::Result<()> {
    wait_for(&format!("a ping reply from {dst}"), timeout, || {
        ping(ns, dst, 1).ok().filter(|result| result.received == 1)
    })
    .map(drop)
}

/// An `iperf3 -s` in a namespace; ended by PID on drop.
pub struct Iperf3Server {
    child: Child,
    port: u16,
}

impl Iperf3Server {
    /// Starts `iperf3 -s -p PORT` in `ns` and waits until it accepts connections on `listen`
    /// (an address of `ns` the clients will use).
    pub fn start(ns: &NetNs, listen: IpAddr, port: u16) -> anyhow::Result<Iperf3Server> {
        let child = ns
            .command("iperf3")?
            .args(["-s", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        let mut server = Iperf3Server { child, port };
        let address = SocketAddr::new(listen, port);
        let probe = wait_for(
            &format!("iperf3 server listening on {address}"),
            Duration::from_secs(10),
            || {
                if !matches!(server.child.try_wait(), Ok(None)) {
                    return Some(false);
                }
                // Ask the kernel, not iperf3: a probe connection that closes at once can make
                // iperf3 3.12 reset the real client that queues behind it.
                let listening = ns
                    .exec(&["ss", "-Hltn", &format!("sport = :{port}")])
                    .map(|output| !String::from_utf8_lossy(&output.stdout).trim().is_empty())
                    .unwrap_or(false);
                listening.then_some(true)
            },
        )?;
        if !probe {
            server.stop();
            bail!("iperf3 -s exited at start (port {port} taken?)");
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(3));
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Options of one iperf3 client run (TCP, client → server).
#[derive(Debug, Clone)]
pub struct Iperf3Options {
    /// `-P`, parallel streams.
    pub streams: u32,
    /// `-t`, seconds.
    pub seconds: u32,
    /// `-O`, leading seconds left out of the totals (TCP slow start).
    pub omit: u32,
    /// `-i`, report interval in seconds (what `intervals_bps` resolves).
    pub interval: f64,
    pub port: u16,
    /// `-B`, the client's source address.
    pub bind: Option<IpAddr>,
}

impl Default for Iperf3Options {
    fn default() -> Self {
        Self {
            streams: 1,
            seconds: 5,
            omit: 0,
            interval: 1.0,
            port: 5201,
            bind: None,
        }
    }
}

/// What one iperf3 run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Iperf3Result {
    /// Receiver-side rate over the run (`end.sum_received.bits_per_second`).
    pub bits_per_second: f64,
    /// Rate of each report interval, from the receiver's (server's) side when iperf3 returned
    /// the server output, else from the sender's side.
    pub intervals_bps: Vec<f64>,
    /// TCP retransmissions seen by the sender.
    pub retransmits: Option<u64>,
}

impl Iperf3Result {
    pub fn gbit_per_second(&self) -> f64 {
        self.bits_per_second / 1e9
    }

    /// Fails naming the intervals in which nothing arrived: the stream stalled there.
    pub fn check_no_stall(&self) -> anyhow::Result<()> {
        let stalled: Vec<usize> = self
            .intervals_bps
            .iter()
            .enumerate()
            .filter(|(_, bps)| **bps <= 0.0)
            .map(|(index, _)| index)
            .collect();
        if self.intervals_bps.is_empty() {
            bail!("iperf3 reported no intervals");
        }
        if !stalled.is_empty() {
            bail!(
                "the stream stalled: intervals {stalled:?} of {} carried 0 bytes ({:?})",
                self.intervals_bps.len(),
                self.intervals_bps
            );
        }
        Ok(())
    }
}

/// Runs `iperf3 -c TARGET --json --get-server-output` in `ns` and parses the result. The client
/// is killed (by PID) if it runs 30 s past its planned duration.
pub fn iperf3(ns: &NetNs, target: IpAddr, options: &Iperf3Options) -> anyhow::Result<Iperf3Result> {
    let mut command = ns.command("iperf3")?;
    command
        .args(["-c", &target.to_string(), "--json", "--get-server-output"])
        .args(["-p", &options.port.to_string()])
        .args(["-P", &options.streams.to_string()])
        .args(["-t", &options.seconds.to_string()])
        .args(["-O", &options.omit.to_string()])
        .args(["-i", &options.interval.to_string()])
        .args(["--connect-timeout", "5000"]);
    if let Some(bind) = options.bind {
        command.args(["-B", &bind.to_string()]);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting iperf3 -c")?;
    let limit = Duration::from_secs(u64::from(options.seconds + options.omit) + 30);
    let output = wait_with_limit(child, limit)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_iperf3(&stdout).with_context(|| {
        format!(
            "iperf3 -c {target} ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })
}

/// Parses iperf3's `--json` output (TCP).
pub fn parse_iperf3(json: &str) -> anyhow::Result<Iperf3Result> {
    let report: serde_json::Value = serde_json::from_str(json).with_context(|| {
        format!(
            "iperf3 gave no JSON: {}",
            json.chars().take(300).collect::<String>()
        )
    })?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3 error: {error}");
    }
    let end = &report["end"];
    let bits_per_second = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON lacks end.sum_received.bits_per_second")?;
    let retransmits = end["sum_sent"]["retransmits"].as_u64();
    let intervals = |report: &serde_json::Value| -> Vec<f64> {
        report["intervals"]
            .as_array()
            .map(|intervals| {
                intervals
                    .iter()
                    // Omitted (warm-up) intervals are not part of the measurement.
                    .filter(|interval| !interval["sum"]["omitted"].as_bool().unwrap_or(false))
                    .filter_map(|interval| interval["sum"]["bits_per_second"].as_f64())
                    .collect()
            })
            .unwrap_or_default()
    };
    let server_intervals = intervals(&report["server_output_json"]);
    let intervals_bps = if server_intervals.is_empty() {
        intervals(&report)
    } else {
        server_intervals
    };
    Ok(Iperf3Result {
        bits_per_second,
        intervals_bps,
        retransmits,
    })
}

/// Waits for `child` and collects its output; kills it (by PID) after `limit`.
fn wait_with_limit(mut child: Child, limit: Duration) -> anyhow::Result<std::process::Output> {
    use std::io::Read as _;
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stdout.read_to_end(&mut buffer);
        buffer
    });
    let err_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stderr.read_to_end(&mut buffer);
        buffer
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{:?} still running after {limit:?}; killed", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(std::process::Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// SIGTERM by PID, SIGKILL after `timeout`, then reap.
pub(crate) fn stop_child(child: &mut Child, timeout: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the PID of our own child, which try_wait says is not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_is_parsed_without_duplicates() {
        let stdout = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\
            64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.300 ms\n\
            64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.900 ms (DUP!)\n\
            64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=0.100 ms\n\
            64 bytes from 10.0.0.2: icmp_seq=4 ttl=64 time=0.200 ms\n\n\
            --- 10.0.0.2 ping statistics ---\n\
            4 packets transmitted, 3 received, +1 duplicates, 25% packet loss, time 3ms\n";
        let result = parse_ping(stdout, 4);
        assert_eq!(result.received, 3);
        assert_eq!(result.rtt_median, Some(Duration::from_micros(200)));
        assert_eq!(parse_ping("", 3).rtt_median, None);
    }

    #[test]
    fn iperf3_json_prefers_receiver_intervals_and_skips_omitted() {
        let json = r#"{
            "intervals": [{"sum": {"bits_per_second": 5.0, "omitted": false}}],
            "end": {"sum_received": {"bits_per_second": 2.5e9},
                    "sum_sent": {"bits_per_second": 2.6e9, "retransmits": 7}},
            "server_output_json": {"intervals": [
                {"sum": {"bits_per_second": 9.0, "omitted": true}},
                {"sum": {"bits_per_second": 1.0, "omitted": false}},
                {"sum": {"bits_per_second": 0.0, "omitted": false}}]}
        }"#;
        let result = parse_iperf3(json).unwrap();
        assert_eq!(result.bits_per_second, 2.5e9);
        assert_eq!(result.retransmits, Some(7));
        assert_eq!(result.intervals_bps, vec![1.0, 0.0]);
        let error = result.check_no_stall().unwrap_err().to_string();
        assert!(error.contains("intervals [1]"), "{error}");
        assert!(parse_iperf3(r#"{"error": "unable to connect"}"#).is_err());
    }
}
