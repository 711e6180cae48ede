//! `cargo xtask image-test`: boots the built artifacts under qemu and checks the marker lines.
//!
//! - `tunnel`: two appliances booted directly (vmlinux + initramfs) on one cable, configs via
//!   fw_cfg; both report TUNNEL-UP and site A pings site B's tunnel address.
//! - `uefi`: the disk image through OVMF -> systemd-boot -> slot A, config from fw_cfg.
//! - `update`: the disk image gets `appliance-next.efi` via fw_cfg `update.efi`; the appliance
//!   writes it to slot B, reboots into it and blesses it.
//! - `fallback`: the same with `appliance-bad.efi` (one try): slot B fails, systemd-boot falls
//!   back to slot A by itself, which reports UPDATE-FALLBACK.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    boot::{cable, BootMode, Vm, VmOptions},
    ImageArtifacts,
};
use crate::workspace_root;

pub const SCENARIOS: &[&str] = &["tunnel", "uefi", "update", "fallback"];

/// Runs the named scenarios (all when empty), one after the other; fails at the first failure.
pub fn run(artifacts: &ImageArtifacts, scenarios: &[String]) -> anyhow::Result<()> {
    let selected: Vec<&str> = if scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        scenarios.iter().map(String::as_str).collect()
    };
    for scenario in selected {
        let started = Instant::now();
        println!("==> image-test {scenario}");
        match scenario {
            "tunnel" => tunnel(artifacts),
            "uefi" => uefi(artifacts),
            "update" => update(artifacts),
            "fallback" => fallback(artifacts),
            other => bail!("unknown scenario {other}; known: {}", SCENARIOS.join(", ")),
        }
        .with_context(|| format!("image-test {scenario}"))?;
        println!(
            "<== image-test {scenario}: PASS in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn test_dir() -> PathBuf {
    workspace_root().join("image/test")
}

/// fw_cfg entries for one test site: its TOML, network file and the example PKI.
fn site_fw_cfg(site: char) -> Vec<(String, PathBuf)> {
    let pki = workspace_root().join("vpn-daemon/examples/pki");
    let mut entries = vec![
        (
            "config".to_owned(),
            test_dir().join(format!("site-{site}.toml")),
        ),
        (
            "network".to_owned(),
            test_dir().join(format!("network-{site}")),
        ),
    ];
    for file in [
        "ca.crt",
        "tc.key",
        &format!("site-{site}.crt"),
        &format!("site-{site}.key"),
    ] {
        entries.push((format!("pki/{file}"), pki.join(file)));
    }
    entries
}

fn show(vm_name: &str, (line, at): &(String, Duration)) {
    println!("  {vm_name} {:>6.1}s  {line}", at.as_secs_f64());
}

/// Two appliances, direct kernel boot, one cable: tunnel up both ways, ping across.
pub fn tunnel(artifacts: &ImageArtifacts) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [wire_a, wire_b] = cable(
        dir.path(),
        "wan",
        ["52:54:00:00:0a:01", "52:54:00:00:0b:01"],
    );
    let mut fw_cfg_a = site_fw_cfg('a');
    fw_cfg_a.push(("run".to_owned(), test_dir().join("ping-b")));
    let direct = BootMode::Direct {
        extra_cmdline: String::new(),
    };
    let mut a = Vm::start(
        artifacts,
        &direct,
        &VmOptions {
            name: "site-a".into(),
            fw_cfg: fw_cfg_a,
            qemu_args: wire_a,
            memory_mib: 256,
        },
    )?;
    let mut b = Vm::start(
        artifacts,
        &direct,
        &VmOptions {
            name: "site-b".into(),
            fw_cfg: site_fw_cfg('b'),
            qemu_args: wire_b,
            memory_mib: 256,
        },
    )?;
    let timeout = Duration::from_secs(120);
    for (vm, name) in [(&mut a, "site-a"), (&mut b, "site-b")] {
        for marker in [
            "APPLIANCE-BOOT",
            "APPLIANCE-CONFIG source=fw_cfg",
            "APPLIANCE-NET wan0",
            "APPLIANCE-READY",
        ] {
            show(name, &vm.wait_for(marker, timeout)?);
        }
    }
    show("site-a", &a.wait_for("TUNNEL-UP to-site-b", timeout)?);
    show("site-b", &b.wait_for("TUNNEL-UP to-site-a", timeout)?);
    show("site-a", &a.wait_for("PING-OK", timeout)?);
    a.stop()?;
    b.stop()?;
    Ok(())
}

/// A writable copy of disk.img in `dir`.
fn disk_copy(artifacts: &ImageArtifacts, dir: &Path) -> anyhow::Result<PathBuf> {
    let disk = dir.join("disk.img");
    std::fs::copy(&artifacts.disk, &disk)?;
    Ok(disk)
}

/// The real disk image through OVMF and systemd-boot: slot A boots and brings the daemon up.
pub fn uefi(artifacts: &ImageArtifacts) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [wire, _] = cable(
        dir.path(),
        "wan",
        ["52:54:00:00:0a:01", "52:54:00:00:0b:01"],
    );
    let mut vm = Vm::start(
        artifacts,
        &BootMode::Uefi {
            disk: disk_copy(artifacts, dir.path())?,
        },
        &VmOptions {
            name: "uefi".into(),
            fw_cfg: site_fw_cfg('a'),
            qemu_args: wire,
            memory_mib: 256,
        },
    )?;
    let timeout = Duration::from_secs(180);
    show("uefi", &vm.wait_for("APPLIANCE-BOOT version=", timeout)?);
    let (line, _) = vm.wait_for("APPLIANCE-READY", timeout)?;
    show("uefi", &(line, Duration::ZERO));
    let log = vm.stop()?;
    if !log.contains("slot=a") {
        bail!("UEFI boot did not report slot a:\n{log}");
    }
    Ok(())
}

fn update_vm(
    artifacts: &ImageArtifacts,
    dir: &Path,
    update: &Path,
    tries: Option<u32>,
) -> anyhow::Result<Vm> {
    let mut fw_cfg = vec![("update.efi".to_owned(), update.to_owned())];
    if let Some(tries) = tries {
        let file = dir.join("update-tries");
        std::fs::write(&file, format!("{tries}\n"))?;
        fw_cfg.push(("update-tries".to_owned(), file));
    }
    Vm::start(
        artifacts,
        &BootMode::Uefi {
            disk: disk_copy(artifacts, dir)?,
        },
        &VmOptions {
            name: "update".into(),
            fw_cfg,
            qemu_args: Vec::new(),
            memory_mib: 256,
        },
    )
}

/// A good update: written to slot B, booted on trial, blessed.
pub fn update(artifacts: &ImageArtifacts) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut vm = update_vm(artifacts, dir.path(), &artifacts.uki_next, None)?;
    let timeout = Duration::from_secs(180);
    for marker in [
        "APPLIANCE-BOOT version=",
        "UPDATE-WRITTEN slot=b",
        "APPLIANCE-BOOT",
        "SLOT-BLESSED b",
    ] {
        show("update", &vm.wait_for(marker, timeout)?);
    }
    let log = vm.stop()?;
    if !log.contains("slot=b image=next") {
        bail!("the updated slot did not run the new image:\n{log}");
    }
    Ok(())
}

/// A broken update (its init exits): one failed try, then slot A again by itself.
pub fn fallback(artifacts: &ImageArtifacts) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut vm = update_vm(artifacts, dir.path(), &artifacts.uki_bad, Some(1))?;
    let timeout = Duration::from_secs(180);
    for marker in [
        "APPLIANCE-BOOT version=",
        "UPDATE-WRITTEN slot=b tries=1",
        "BAD-IMAGE",
        "APPLIANCE-BOOT version=",
        "UPDATE-FALLBACK slot=b",
    ] {
        show("fallback", &vm.wait_for(marker, timeout)?);
    }
    vm.stop()?;
    Ok(())
}
