//! The virtual wire: one L2 hub per LAN segment for qemu `-netdev dgram` unix datagram sockets.
//!
//! ```text
//!   qemu A  <guest-0.sock> --dgram-- <port-0.sock>  ┐
//!   qemu B  <guest-1.sock> --dgram-- <port-1.sock>  ├─ hub thread: floods every frame to the
//!   qemu C  <guest-2.sock> --dgram-- <port-2.sock>  ┘  other ports, applies faults, writes pcap
//! ```
//! No root and no host IP traffic: every port is a pair of unix datagram sockets, one bound by the
//! hub and one by qemu. Faults (loss, delay, cut links, partitions) change at run time through a
//! [`FaultControl`] handle the scenario holds. A frame from port `i` to port `j` is dropped when
//! either port is cut or the two are in different partition groups; each port's loss applies to
//! frames through that port in both directions (a lossy cable), and each port's delay adds up.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io::{self, BufWriter, Write as _},
    os::{fd::AsRawFd as _, unix::net::UnixDatagram},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

/// Largest frame we carry: qemu's dgram netdev sends one Ethernet frame per datagram, and the
/// guests use a 1500-byte MTU; headroom for VLAN tags and jumbo experiments.
const MAX_FRAME: usize = 65536;
/// How often the hub thread looks at its stop flag when the wire is idle.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// pcap link type for Ethernet frames.
const LINKTYPE_ETHERNET: u32 = 1;

/// Socket paths of one hub port: the hub binds `hub`, qemu binds `guest`.
#[derive(Clone, Debug)]
pub struct PortPaths {
    pub hub: PathBuf,
    pub guest: PathBuf,
}

impl PortPaths {
    /// The qemu `-netdev` argument for this port.
    pub fn qemu_netdev(&self, id: &str) -> String {
        format!(
            "dgram,id={id},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            self.guest.display(),
            self.hub.display()
        )
    }
}

/// Faults of one port (one cable into the hub).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortFaults {
    /// Probability in percent (0-100) that a frame through this port is lost.
    pub loss_percent: f64,
    /// Added one-way delay for frames through this port.
    pub delay: Duration,
    /// The cable is pulled: nothing passes.
    pub cut: bool,
    /// Partition group; frames only pass between ports of the same group.
    pub group: u32,
}

/// Frame counters of one hub.
#[derive(Debug, Default)]
pub struct HubCounters {
    /// Frames received from a port.
    pub received: AtomicU64,
    /// Frame copies delivered to a port.
    pub delivered: AtomicU64,
    /// Frame copies dropped by a loss fault.
    pub lost: AtomicU64,
    /// Frame copies dropped by a cut link or a partition.
    pub blocked: AtomicU64,
    /// Frame copies the receiving socket refused (not yet bound, or its queue full).
    pub refused: AtomicU64,
}

/// Run-time fault control of one hub; cheap to clone, usable from any thread.
#[derive(Clone, Debug)]
pub struct FaultControl {
    faults: Arc<Mutex<Vec<PortFaults>>>,
}

impl FaultControl {
    fn lock(&self) -> MutexGuard<'_, Vec<PortFaults>> {
        // A panicking hub thread cannot leave the plain data inconsistent: keep using it.
        self.faults
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn with_port(&self, port: usize, change: impl FnOnce(&mut PortFaults)) -> anyhow::Result<()> {
        let mut faults = self.lock();
        let count = faults.len();
        let entry = faults
            .get_mut(port)
            .with_context(|| format!("no port {port} on this hub (it has {count})"))?;
        change(entry);
        Ok(())
    }

    /// Sets the loss probability (percent, clamped to 0-100) of one port.
    pub fn set_loss(&self, port: usize, percent: f64) -> anyhow::Result<()> {
        self.with_port(port, |faults| {
            faults.loss_percent = percent.clamp(0.0, 100.0)
        })
    }

    /// Sets the one-way delay of one port.
    pub fn set_delay(&self, port: usize, delay: Duration) -> anyhow::Result<()> {
        self.with_port(port, |faults| faults.delay = delay)
    }

    /// Pulls the cable of one port.
    pub fn cut(&self, port: usize) -> anyhow::Result<()> {
        self.with_port(port, |faults| faults.cut = true)
    }

    /// Splits the segment: ports in the same inner slice still reach each other; ports not
    /// named form one more group of their own.
    pub fn partition(&self, groups: &[&[usize]]) -> anyhow::Result<()> {
        let mut faults = self.lock();
        let rest = u32::try_from(groups.len()).context("too many partition groups")? + 1;
        for entry in faults.iter_mut() {
            entry.group = rest;
        }
        for (group, ports) in (1u32..).zip(groups) {
            for &port in *ports {
                faults
                    .get_mut(port)
                    .with_context(|| format!("no port {port} on this hub"))?
                    .group = group;
            }
        }
        Ok(())
    }

    /// Clears every fault on every port.
    pub fn heal(&self) {
        for faults in self.lock().iter_mut() {
            *faults = PortFaults::default();
        }
    }

    /// The current faults of every port.
    pub fn snapshot(&self) -> Vec<PortFaults> {
        self.lock().clone()
    }
}

/// One LAN segment's hub, forwarding on its own thread until dropped.
pub struct Hub {
    name: String,
    ports: Vec<PortPaths>,
    faults: FaultControl,
    counters: Arc<HubCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Hub {
    /// Binds `port_count` hub sockets under `dir` (as `<name>-<n>.hub` / `<name>-<n>.guest`) and
    /// starts forwarding. With `pcap`, every frame the hub receives is written there. `seed`
    /// drives the loss decisions, so a run with the same seed drops the same frames.
    pub fn start(
        dir: &Path,
        name: &str,
        port_count: usize,
        pcap: Option<&Path>,
        seed: u64,
    ) -> anyhow::Result<Hub> {
        let mut ports = Vec::with_capacity(port_count);
        let mut sockets = Vec::with_capacity(port_count);
        for index in 0..port_count {
            let paths = PortPaths {
                hub: dir.join(format!("{name}-{index}.hub")),
                guest: dir.join(format!("{name}-{index}.guest")),
            };
            for path in [&paths.hub, &paths.guest] {
                match std::fs::remove_file(path) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => {
                        return Err(error).with_context(|| format!("removing {}", path.display()))
                    }
                    _ => {}
                }
            }
            let socket = UnixDatagram::bind(&paths.hub)
                .with_context(|| format!("binding hub port {}", paths.hub.display()))?;
            socket.set_nonblocking(true)?;
            sockets.push(socket);
            ports.push(paths);
        }
        let capture = match pcap {
            Some(path) => Some(PcapWriter::create(path)?),
            None => None,
        };
        let faults = FaultControl {
            faults: Arc::new(Mutex::new(vec![PortFaults::default(); port_count])),
        };
        let counters = Arc::new(HubCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut forwarder = Forwarder {
            sockets,
            guests: ports.iter().map(|paths| paths.guest.clone()).collect(),
            faults: faults.clone(),
            counters: counters.clone(),
            stop: stop.clone(),
            capture,
            random: XorShift::new(seed),
            delayed: BinaryHeap::new(),
            sequence: 0,
        };
        let thread = std::thread::Builder::new()
            .name(format!("hub-{name}"))
            .spawn(move || forwarder.run())
            .context("starting hub thread")?;
        Ok(Hub {
            name: name.to_owned(),
            ports,
            faults,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// Socket paths of port `index`.
    pub fn port(&self, index: usize) -> Option<&PortPaths> {
        self.ports.get(index)
    }

    /// The fault control handle.
    pub fn faults(&self) -> FaultControl {
        self.faults.clone()
    }

    pub fn counters(&self) -> &HubCounters {
        &self.counters
    }

    /// Stops forwarding, flushes the pcap and removes the hub's sockets.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let result = match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("hub {} thread panicked", self.name))
                .and_then(|result| result),
            None => Ok(()),
        };
        for paths in &self.ports {
            let _ = std::fs::remove_file(&paths.hub);
            let _ = std::fs::remove_file(&paths.guest);
        }
        result
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            eprintln!("hub {}: {error:#}", self.name);
        }
    }
}

/// A frame copy waiting out its delay: ordered by due time, then arrival order.
struct DelayedFrame {
    due: Instant,
    sequence: u64,
    port: usize,
    frame: Vec<u8>,
}

impl PartialEq for DelayedFrame {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.sequence) == (other.due, other.sequence)
    }
}
impl Eq for DelayedFrame {}
impl PartialOrd for DelayedFrame {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for DelayedFrame {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.sequence).cmp(&(other.due, other.sequence))
    }
}

/// The hub thread's state.
struct Forwarder {
    sockets: Vec<UnixDatagram>,
    guests: Vec<PathBuf>,
    faults: FaultControl,
    counters: Arc<HubCounters>,
    stop: Arc<AtomicBool>,
    capture: Option<PcapWriter>,
    random: XorShift,
    delayed: BinaryHeap<Reverse<DelayedFrame>>,
    sequence: u64,
}

impl Forwarder {
    fn run(&mut self) -> anyhow::Result<()> {
        let mut buffer = vec![0u8; MAX_FRAME];
        let mut poll_fds: Vec<libc::pollfd> = self
            .sockets
            .iter()
            .map(|socket| libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.release_due(now);
            let wait = self.delayed.peek().map_or(IDLE_POLL, |Reverse(next)| {
                next.due.saturating_duration_since(now).min(IDLE_POLL)
            });
            // Round up so a frame due in 0.4 ms does not spin on a zero timeout.
            let timeout_ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
            // SAFETY: poll_fds is a valid, exclusively borrowed array of pollfd of the given
            // length, and every fd in it stays open for the duration of the call.
            let ready = unsafe {
                libc::poll(
                    poll_fds.as_mut_ptr(),
                    poll_fds.len() as libc::nfds_t,
                    timeout_ms,
                )
            };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error).context("poll on hub sockets");
            }
            let ready_ports: Vec<usize> = poll_fds
                .iter_mut()
                .enumerate()
                .filter_map(|(index, entry)| {
                    (std::mem::take(&mut entry.revents) != 0).then_some(index)
                })
                .collect();
            for ingress in ready_ports {
                // Drain the socket: one wake-up may cover many frames.
                loop {
                    match self.sockets[ingress].recv(&mut buffer) {
                        Ok(length) => self.forward(ingress, &buffer[..length])?,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                        Err(error) => return Err(error).context("receiving on a hub port"),
                    }
                }
            }
        }
        if let Some(capture) = self.capture.as_mut() {
            capture.flush()?;
        }
        Ok(())
    }

    fn forward(&mut self, ingress: usize, frame: &[u8]) -> anyhow::Result<()> {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if let Some(capture) = self.capture.as_mut() {
            capture.write_frame(SystemTime::now(), frame)?;
        }
        let faults = self.faults.snapshot();
        let now = Instant::now();
        for (egress, egress_faults) in faults.iter().enumerate() {
            if egress == ingress {
                continue;
            }
            let ingress_faults = &faults[ingress];
            if ingress_faults.cut
                || egress_faults.cut
                || ingress_faults.group != egress_faults.group
            {
                self.counters.blocked.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if self.random.chance_percent(ingress_faults.loss_percent)
                || self.random.chance_percent(egress_faults.loss_percent)
            {
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let delay = ingress_faults.delay + egress_faults.delay;
            if delay.is_zero() {
                self.send(egress, frame);
            } else {
                self.sequence += 1;
                self.delayed.push(Reverse(DelayedFrame {
                    due: now + delay,
                    sequence: self.sequence,
                    port: egress,
                    frame: frame.to_vec(),
                }));
            }
        }
        Ok(())
    }

    fn release_due(&mut self, now: Instant) {
        while self
            .delayed
            .peek()
            .is_some_and(|Reverse(next)| next.due <= now)
        {
            if let Some(Reverse(frame)) = self.delayed.pop() {
                self.send(frame.port, &frame.frame);
            }
        }
    }

    fn send(&self, egress: usize, frame: &[u8]) {
        // A guest that has not bound its socket yet (still starting) or whose queue is full
        // loses the frame, as on a real wire.
        match self.sockets[egress].send_to(frame, &self.guests[egress]) {
            Ok(_) => self.counters.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.refused.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A classic pcap file (microsecond timestamps, Ethernet link type).
struct PcapWriter {
    out: BufWriter<std::fs::File>,
}

impl PcapWriter {
    fn create(path: &Path) -> anyhow::Result<PcapWriter> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating pcap {}", path.display()))?;
        let mut out = BufWriter::new(file);
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?; // magic: microsecond resolution
        out.write_all(&2u16.to_le_bytes())?; // version 2.4
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?; // thiszone
        out.write_all(&0u32.to_le_bytes())?; // sigfigs
        out.write_all(&(MAX_FRAME as u32).to_le_bytes())?; // snaplen
        out.write_all(&LINKTYPE_ETHERNET.to_le_bytes())?;
        Ok(PcapWriter { out })
    }

    fn write_frame(&mut self, at: SystemTime, frame: &[u8]) -> anyhow::Result<()> {
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let length = u32::try_from(frame.len()).context("frame larger than 4 GiB")?;
        let seconds = u32::try_from(since_epoch.as_secs()).unwrap_or(u32::MAX);
        self.out.write_all(&seconds.to_le_bytes())?;
        self.out
            .write_all(&since_epoch.subsec_micros().to_le_bytes())?;
        self.out.write_all(&length.to_le_bytes())?; // captured length
        self.out.write_all(&length.to_le_bytes())?; // original length
        self.out.write_all(frame)?;
        // Flush per frame so a capture read while the scenario runs (or after a crash) is whole.
        self.out.flush()?;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("flushing pcap")
    }
}

/// xorshift64*: plenty for loss decisions, and reproducible from a seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Zero is the one state xorshift never leaves.
        XorShift(seed | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `percent`/100.
    fn chance_percent(&mut self, percent: f64) -> bool {
        if percent <= 0.0 {
            return false;
        }
        // 53 random bits give a uniform float in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit * 100.0 < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest's end of every port of `hub`, bound like qemu binds it.
    fn guests(hub: &Hub) -> Vec<UnixDatagram> {
        (0..hub.ports.len())
            .map(|index| {
                let socket = UnixDatagram::bind(&hub.port(index).unwrap().guest).unwrap();
                socket
                    .connect(&hub.port(index).unwrap().hub)
                    .expect("connect to hub port");
                socket
                    .set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                socket
            })
            .collect()
    }

    /// An Ethernet/IPv4/UDP frame tcpdump can decode, carrying `payload`.
    fn udp_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
        frame.extend_from_slice(&[0x08, 0x00]); // IPv4
        let total = 20 + 8 + payload.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0,
            0,
            64,
            17,
            0,
            0,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            2,
        ];
        let mut sum: u32 = ip
            .chunks(2)
            .map(|pair| u32::from(pair[0]) << 8 | u32::from(pair[1]))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let checksum = !(sum as u16);
        ip[10] = (checksum >> 8) as u8;
        ip[11] = checksum as u8;
        frame.extend_from_slice(&ip);
        let udp_length = 8 + payload.len();
        frame.extend_from_slice(&[0x30, 0x39, 0x04, 0xd2]); // ports 12345 -> 1234
        frame.extend_from_slice(&[(udp_length >> 8) as u8, udp_length as u8, 0, 0]);
        frame.extend_from_slice(payload);
        frame
    }

    fn receive_all(socket: &UnixDatagram) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buffer = [0u8; 2048];
        while let Ok(length) = socket.recv(&mut buffer) {
            frames.push(buffer[..length].to_vec());
        }
        frames
    }

    #[test]
    fn frames_reach_every_other_port_and_not_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::start(dir.path(), "lan", 3, None, 1).unwrap();
        let ends = guests(&hub);
        ends[0].send(b"from zero").unwrap();
        ends[2].send(b"from two").unwrap();
        assert_eq!(
            receive_all(&ends[1]),
            vec![b"from zero".to_vec(), b"from two".to_vec()]
        );
        assert_eq!(receive_all(&ends[0]), vec![b"from two".to_vec()]);
        assert_eq!(receive_all(&ends[2]), vec![b"from zero".to_vec()]);
        assert_eq!(hub.counters().received.load(Ordering::Relaxed), 2);
        assert_eq!(hub.counters().delivered.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn pcap_is_read_back_by_tcpdump() {
        let dir = tempfile::tempdir().unwrap();
        let pcap = dir.path().join("lan.pcap");
        let hub = Hub::start(dir.path(), "lan", 2, Some(&pcap), 1).unwrap();
        let ends = guests(&hub);
        for index in 0..5u8 {
            ends[0].send(&udp_frame(&[index; 10])).unwrap();
        }
        assert_eq!(receive_all(&ends[1]).len(), 5);
        hub.stop().unwrap();
        let output = std::process::Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&pcap)
            .output()
            .expect("tcpdump is installed by cargo xtask setup");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "tcpdump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "tcpdump output:\n{text}");
        assert!(
            lines
                .iter()
                .all(|line| line.contains("10.0.0.1.12345 > 10.0.0.2.1234: UDP, length 10")),
            "tcpdump output:\n{text}"
        );
    }

    #[test]
    fn loss_drops_about_the_set_share() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::start(dir.path(), "lan", 2, None, 42).unwrap();
        let ends = guests(&hub);
        hub.faults().set_loss(1, 30.0).unwrap();
        let mut received = 0;
        // In rounds, so the receiving socket's queue never overflows.
        for _ in 0..10 {
            for sequence in 0..100u32 {
                ends[0].send(&sequence.to_be_bytes()).unwrap();
            }
            received += receive_all(&ends[1]).len();
        }
        assert!(
            (600..=800).contains(&received),
            "30 % loss let {received} of 1000 through"
        );
        let lost = hub.counters().lost.load(Ordering::Relaxed);
        assert_eq!(lost as usize, 1000 - received);

        hub.faults().heal();
        for sequence in 0..100u32 {
            ends[0].send(&sequence.to_be_bytes()).unwrap();
        }
        assert_eq!(receive_all(&ends[1]).len(), 100, "healed link loses frames");
    }

    #[test]
    fn cut_and_partition_block_and_heal_restores() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::start(dir.path(), "lan", 3, None, 1).unwrap();
        let ends = guests(&hub);
        let faults = hub.faults();

        faults.cut(1).unwrap();
        ends[0].send(b"a").unwrap();
        assert!(receive_all(&ends[1]).is_empty(), "cut port received");
        assert_eq!(receive_all(&ends[2]), vec![b"a".to_vec()]);

        faults.heal();
        faults.partition(&[&[0, 1]]).unwrap();
        ends[0].send(b"b").unwrap();
        ends[2].send(b"c").unwrap();
        assert_eq!(receive_all(&ends[1]), vec![b"b".to_vec()]);
        assert!(
            receive_all(&ends[2]).is_empty(),
            "partitioned port received"
        );
        assert!(
            receive_all(&ends[0]).is_empty(),
            "partitioned port received"
        );

        faults.heal();
        ends[2].send(b"d").unwrap();
        assert_eq!(receive_all(&ends[0]), vec![b"d".to_vec()]);
        assert!(faults.cut(7).is_err(), "a port that does not exist");
    }

    #[test]
    fn delay_holds_frames_back() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::start(dir.path(), "lan", 2, None, 1).unwrap();
        let ends = guests(&hub);
        hub.faults()
            .set_delay(1, Duration::from_millis(150))
            .unwrap();
        ends[1]
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let sent = Instant::now();
        ends[0].send(b"late").unwrap();
        let mut buffer = [0u8; 16];
        let length = ends[1].recv(&mut buffer).unwrap();
        let elapsed = sent.elapsed();
        assert_eq!(&buffer[..length], b"late");
        assert!(
            elapsed >= Duration::from_millis(150),
            "arrived after {elapsed:?}"
        );
    }

    #[test]
    fn netdev_argument_names_both_sockets() {
        let paths = PortPaths {
            hub: "/run/h.hub".into(),
            guest: "/run/h.guest".into(),
        };
        assert_eq!(
            paths.qemu_netdev("n0"),
            "dgram,id=n0,local.type=unix,local.path=/run/h.guest,remote.type=unix,remote.path=/run/h.hub"
        );
    }
}
