//! Booting a disk image under qemu (TCG: this machine's /dev/kvm runs no ordinary guests)
//! through OVMF, and waiting for the init's marker lines on the serial console: for
//! `cargo xtask image-test partition`, which boots an image of its own. Topologies of VMs are the
//! VM harness's (xtask/src/vm/).

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// OVMF as one flash file (code + volatile variables): enough for systemd-boot and its counters.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// Everything about one VM besides its disk. No fw_cfg: the config comes from the disk's
/// APPCONFIG partition, as on hardware.
#[derive(Debug, Clone, Default)]
pub struct VmOptions {
    /// Shown in errors and log prefixes.
    pub name: String,
    /// Extra qemu arguments (NICs: `-netdev ... -device virtio-net-pci,...`).
    pub qemu_args: Vec<String>,
    /// Guest memory; UEFI needs 256 (default) with this image.
    pub memory_mib: u32,
}

/// A running qemu whose serial console is collected line by line.
pub struct Vm {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
    started: Instant,
}

impl Vm {
    /// Starts qemu: UEFI firmware -> systemd-boot -> UKI from `disk` (a writable copy of
    /// disk.img: boot counting renames files on its ESP). The VM reboots when the guest does.
    pub fn start(disk: &Path, options: &VmOptions) -> anyhow::Result<Self> {
        let memory = if options.memory_mib == 0 {
            256
        } else {
            options.memory_mib
        };
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-machine", "q35", "-smp", "1"])
            .args(["-m", &memory.to_string()])
            .args(["-nographic", "-nodefaults", "-serial", "stdio"])
            .args(["-device", "virtio-rng-pci"])
            .args(["-bios", OVMF])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .args(&options.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("starting qemu-system-x86_64")?;

        let (sender, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().context("qemu stdout")?) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().context("qemu stderr")?),
        ] {
            let sender = sender.clone();
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut raw = Vec::new();
                while reader
                    .read_until(b'\n', &mut raw)
                    .is_ok_and(|read| read > 0)
                {
                    let line = String::from_utf8_lossy(&raw).trim_end().replace('\r', "");
                    raw.clear();
                    if let Ok(mut log) = log.lock() {
                        log.push_str(&line);
                        log.push('\n');
                    }
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            name: options.name.clone(),
            child,
            lines,
            log,
            started: Instant::now(),
        })
    }

    /// Waits for a console line starting with `marker`; returns the line and the time since the
    /// VM started. Fails on timeout or when qemu ends first.
    pub fn wait_for(
        &mut self,
        marker: &str,
        timeout: Duration,
    ) -> anyhow::Result<(String, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    // The kernel may interleave its own text: look for the marker anywhere.
                    if let Some(at) = line.find(marker) {
                        return Ok((line[at..].to_owned(), self.started.elapsed()));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: no `{marker}` within {timeout:?}; console:\n{}",
                        self.name,
                        self.tail(60)
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "{}: qemu ended before `{marker}`; console:\n{}",
                        self.name,
                        self.tail(60)
                    )
                }
            }
        }
    }

    /// The whole console output so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    fn tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops qemu (it is killed; the appliance keeps no state that needs a clean shutdown).
    pub fn stop(mut self) -> anyhow::Result<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(self.log())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A point-to-point "cable" between two VMs: unix datagram sockets in `dir`, no host networking
/// and no root. Returns the qemu arguments for side 0 and side 1 (virtio-net NICs with the MACs).
pub fn cable(dir: &Path, name: &str, macs: [&str; 2]) -> [Vec<String>; 2] {
    let path = |side: usize| {
        dir.join(format!("{name}.{side}.sock"))
            .display()
            .to_string()
    };
    [0, 1].map(|side| {
        vec![
            "-netdev".to_owned(),
            format!(
                "dgram,id={name},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                path(side),
                path(1 - side)
            ),
            "-device".to_owned(),
            format!("virtio-net-pci,netdev={name},mac={}", macs[side]),
        ]
    })
}
