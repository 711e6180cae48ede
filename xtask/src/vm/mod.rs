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

use anyhow::Context as _;

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

/// The kernel, initramfs, disk image and update UKIs the VMs boot: `cargo xtask build-image`'s
/// output, or with `VPN_VM_IMAGE_DIR` set, the files an earlier build left in that directory
/// (for working on the harness without rebuilding).
pub fn boot_files() -> anyhow::Result<BootFiles> {
    let (dir, cmdline) = match std::env::var_os("VPN_VM_IMAGE_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let cmdline = std::fs::read_to_string(dir.join("cmdline"))
                .with_context(|| format!("VPN_VM_IMAGE_DIR={}: no cmdline", dir.display()))?;
            (dir, cmdline.trim().to_owned())
        }
        None => {
            let artifacts = crate::image::build(&crate::image::ImageOptions::default())?;
            (artifacts.dir, artifacts.cmdline)
        }
    };
    Ok(BootFiles {
        kernel: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio.zst"),
        cmdline,
        disk: Some(dir.join("disk.img")),
        uki_next: Some(dir.join("appliance-next.efi")),
        uki_bad: Some(dir.join("appliance-bad.efi")),
        firmware: OVMF.into(),
    })
}
