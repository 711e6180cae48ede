//! The VM end-to-end harness (`cargo xtask vm-test`): appliance and host VMs under qemu TCG,
//! wired through harness-owned L2 hubs ([`wire`]), described by topology files ([`topology`]),
//! driven by scenarios ([`scenario`]) that pass or fail on what the guests print.

pub mod cleanup;
pub mod lab;
pub mod qemu;
pub mod scenario;
pub mod topology;
pub mod wire;

use std::path::PathBuf;

use anyhow::bail;

use lab::BootFiles;

/// UEFI firmware from Debian's `ovmf` package (installed by `cargo xtask setup`).
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// Where scenario logs, consoles and pcaps go: `<target>/vm-test/<scenario>/`.
pub fn log_root() -> PathBuf {
    target_dir().join("vm-test")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
}

/// `cargo xtask vm-test [--smoke] [SCENARIO...]`.
pub fn run(names: &[String], smoke: bool) -> anyhow::Result<()> {
    cleanup::install();
    if names.iter().any(|name| name == "list") {
        for scenario in scenario::SCENARIOS {
            let tag = if scenario.smoke { " (smoke)" } else { "" };
            println!("{:10} {}{tag}", scenario.name, scenario.about);
        }
        return Ok(());
    }
    scenario::run_all(names, smoke, boot_files, &log_root())
}

/// The kernel, initramfs (and disk image with its UKIs when `needs_disk`) the VMs boot.
/// `VPN_VM_KERNEL` + `VPN_VM_INITRAMFS` (+ `VPN_VM_CMDLINE`) boot other files directly, for
/// working on the harness itself.
pub fn boot_files(needs_disk: bool) -> anyhow::Result<BootFiles> {
    if let (Some(kernel), Some(initramfs)) = (
        std::env::var_os("VPN_VM_KERNEL"),
        std::env::var_os("VPN_VM_INITRAMFS"),
    ) {
        if needs_disk {
            bail!(
                "VPN_VM_KERNEL/VPN_VM_INITRAMFS give no disk image; choose direct-boot scenarios"
            );
        }
        return Ok(BootFiles {
            kernel: kernel.into(),
            initramfs: initramfs.into(),
            cmdline: std::env::var("VPN_VM_CMDLINE")
                .unwrap_or_else(|_| "console=ttyS0,115200 panic=5".to_owned()),
            disk: None,
            uki_next: None,
            uki_bad: None,
            firmware: OVMF.into(),
        });
    }
    bail!("the appliance image builder is not merged yet (set VPN_VM_KERNEL and VPN_VM_INITRAMFS)")
}
