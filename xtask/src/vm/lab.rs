//! A running topology: one hub per segment, one qemu per VM, all started together (they boot in
//! parallel), all torn down when the [`Lab`] drops: qemus killed by PID, hubs stopped, sockets
//! removed. Console logs, pcaps and the files handed to the guests stay in the log directory.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use super::{
    cleanup,
    qemu::{Boot, QemuSpec, Vm},
    topology::{Topology, VmKind},
    wire::{FaultControl, Hub},
};

/// What the VMs boot (from `cargo xtask build-image`).
#[derive(Clone, Debug)]
pub struct BootFiles {
    /// Uncompressed kernel for direct boot.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    /// The flashable disk image (copied per lab: boot counting writes to it).
    pub disk: Option<PathBuf>,
    /// A good update (a UKI that differs from the one in the slots), and one whose init fails.
    pub uki_next: Option<PathBuf>,
    pub uki_bad: Option<PathBuf>,
    /// UEFI firmware for `kind = "disk"` VMs.
    pub firmware: PathBuf,
}

/// Per-lab choices of a scenario.
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// Write `<segment>.pcap` for every segment.
    pub pcap: bool,
    /// More fw_cfg entries: (vm, entry name under opt/appliance/, file). Keep them small: the
    /// guest reads fw_cfg files a page at a time, re-reading from the start for each page.
    pub extra_fw_cfg: Vec<(String, String, PathBuf)>,
    /// Give `kind = "disk"` VMs the command channel too (through fw_cfg, which then replaces
    /// the APPCONFIG partition as the config source).
    pub disk_agent: bool,
    /// More read-only raw disks: (vm, file), e.g. an update image to install.
    pub extra_drives: Vec<(String, PathBuf)>,
}

/// The fw_cfg prefix the appliance init copies into /config (see briefs/image-contract.md).
const FW_CFG_PREFIX: &str = "opt/appliance";
/// The command channel every direct-boot guest runs (see tests/vm/agent.sh).
const AGENT_SCRIPT: &str = include_str!("../../../tests/vm/agent.sh");

/// A booting or booted topology.
pub struct Lab {
    // Field order is drop order: guests first, then the wire, then the socket directory.
    vms: Vec<Vm>,
    hubs: BTreeMap<String, Hub>,
    socket_dir: tempfile::TempDir,
    pub topology: Topology,
}

impl Lab {
    /// Starts the hubs, then every VM of `topology`; returns while they boot.
    pub fn start(
        topology: &Topology,
        boot: &BootFiles,
        log_dir: &Path,
        options: &LabOptions,
    ) -> anyhow::Result<Lab> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        // Short path under /tmp: a unix socket path must fit in 108 bytes.
        let socket_dir = tempfile::Builder::new()
            .prefix("vpnvm-")
            .tempdir_in("/tmp")
            .context("creating the socket directory")?;
        cleanup::register_directory(socket_dir.path().to_owned());
        let mut lab = Lab {
            vms: Vec::new(),
            hubs: BTreeMap::new(),
            socket_dir,
            topology: topology.clone(),
        };
        println!(
            "    topology {}: {}\n{}",
            topology.name,
            topology.description,
            topology.drawing.trim_end()
        );
        let segments = topology.segments();
        for (seed, (segment, ports)) in (1u64..).zip(&segments) {
            let pcap = options
                .pcap
                .then(|| log_dir.join(format!("{segment}.pcap")));
            let hub = Hub::start(
                lab.socket_dir.path(),
                segment,
                ports.len(),
                pcap.as_deref(),
                seed,
            )?;
            lab.hubs.insert(segment.clone(), hub);
        }
        let agent = log_dir.join("agent.sh");
        std::fs::write(&agent, AGENT_SCRIPT)?;
        for (vm_index, vm) in topology.vms.iter().enumerate() {
            let mut nics = Vec::new();
            for (nic_index, nic) in vm.nics.iter().enumerate() {
                let port = segments[&nic.segment]
                    .iter()
                    .position(|&entry| entry == (vm_index, nic_index))
                    .context("segment port of a NIC")?;
                let paths = lab.hubs[&nic.segment]
                    .port(port)
                    .context("hub port of a NIC")?;
                nics.push((
                    paths.qemu_netdev(&format!("n{nic_index}")),
                    Topology::mac(vm_index, nic_index),
                ));
            }
            let mut fw_cfg = Vec::new();
            let boot_kind = match vm.kind {
                VmKind::Appliance | VmKind::Host => {
                    let network = log_dir.join(format!("{}.network", vm.name));
                    std::fs::write(&network, topology.network_file(vm_index))?;
                    fw_cfg.push((format!("{FW_CFG_PREFIX}/network"), network));
                    fw_cfg.push((format!("{FW_CFG_PREFIX}/run"), agent.clone()));
                    if let Some(config) = &vm.config {
                        fw_cfg.push((format!("{FW_CFG_PREFIX}/config"), config.clone()));
                    }
                    for file in &vm.files {
                        let name = file
                            .file_name()
                            .and_then(|name| name.to_str())
                            .context("file name")?;
                        fw_cfg.push((format!("{FW_CFG_PREFIX}/{name}"), file.clone()));
                    }
                    Boot::Direct {
                        kernel: boot.kernel.clone(),
                        initramfs: boot.initramfs.clone(),
                        cmdline: boot.cmdline.clone(),
                    }
                }
                VmKind::Disk => {
                    let image = boot
                        .disk
                        .as_ref()
                        .context("this topology boots the disk image; none was built")?;
                    let disk = lab.socket_dir.path().join(format!("{}.img", vm.name));
                    std::fs::copy(image, &disk).with_context(|| {
                        format!("copying {} to {}", image.display(), disk.display())
                    })?;
                    if options.disk_agent {
                        fw_cfg.push((format!("{FW_CFG_PREFIX}/run"), agent.clone()));
                    }
                    Boot::Uefi {
                        firmware: boot.firmware.clone(),
                        disk,
                    }
                }
            };
            for (target, name, file) in &options.extra_fw_cfg {
                if *target == vm.name {
                    fw_cfg.push((format!("{FW_CFG_PREFIX}/{name}"), file.clone()));
                }
            }
            let spec = QemuSpec {
                name: vm.name.clone(),
                boot: boot_kind,
                memory_mib: vm.memory_mib,
                nics,
                fw_cfg,
                extra_drives: options
                    .extra_drives
                    .iter()
                    .filter(|(target, _)| *target == vm.name)
                    .map(|(_, file)| file.clone())
                    .collect(),
                console_log: log_dir.join(format!("{}.console.log", vm.name)),
                socket_dir: lab.socket_dir.path().to_owned(),
            };
            // A fresh log per lab: the console reader starts at offset 0.
            let _ = std::fs::remove_file(&spec.console_log);
            lab.vms.push(Vm::spawn(&spec)?);
        }
        Ok(lab)
    }

    /// The running VM named `name`.
    pub fn vm(&mut self, name: &str) -> anyhow::Result<&mut Vm> {
        let topology = &self.topology.name;
        self.vms
            .iter_mut()
            .find(|vm| vm.name == name)
            .with_context(|| format!("topology {topology} has no VM {name:?}"))
    }

    /// Waits until every VM printed `marker`, now or earlier (they boot in parallel, so the sum of the waits is
    /// the slowest boot).
    pub fn wait_all(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        for vm in &mut self.vms {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            vm.wait_seen(marker, left.max(Duration::from_secs(1)))?;
        }
        Ok(())
    }

    /// Fault control of a segment's hub.
    pub fn wire(&self, segment: &str) -> anyhow::Result<FaultControl> {
        Ok(self
            .hubs
            .get(segment)
            .with_context(|| format!("no segment {segment:?}"))?
            .faults())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.vms.clear();
        for (segment, hub) in std::mem::take(&mut self.hubs) {
            let counters = hub.counters();
            let count = |counter: &std::sync::atomic::AtomicU64| {
                counter.load(std::sync::atomic::Ordering::Relaxed)
            };
            println!(
                "    wire {segment}: {} frames in, {} copies delivered, {} lost, {} blocked, {} refused",
                count(&counters.received),
                count(&counters.delivered),
                count(&counters.lost),
                count(&counters.blocked),
                count(&counters.refused)
            );
            if let Err(error) = hub.stop() {
                eprintln!("wire {segment}: {error:#}");
            }
        }
        cleanup::unregister_directory(self.socket_dir.path());
    }
}
