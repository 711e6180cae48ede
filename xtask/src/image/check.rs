//! `cargo xtask image-test`: boots the built artifacts under qemu and checks the marker lines.
//!
//! - `reproducible`: a second build into another directory gives the same bytes for every
//!   artifact; both FAT partitions of disk.img pass `fsck.fat -n`.
//! - `tunnel`: two appliances booted directly (vmlinux + initramfs) on one cable, configs via
//!   fw_cfg; both report TUNNEL-UP and site A pings site B's tunnel address.
//! - `uefi`: the disk image through OVMF -> systemd-boot -> slot A, config from fw_cfg.
//! - `partition`: like hardware: a disk image built with the site config on its APPCONFIG
//!   partition boots through OVMF without fw_cfg and brings the daemon up.
//! - `update`: the disk image boots with an update medium holding `appliance-next.efi` (second
//!   virtio disk, see `build_update_disk`); the appliance writes it to slot B, reboots into it and
//!   blesses it.
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

pub const SCENARIOS: &[&str] = &[
    "reproducible",
    "tunnel",
    "uefi",
    "partition",
    "update",
    "fallback",
];

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
            "reproducible" => reproducible(artifacts),
            "tunnel" => tunnel(artifacts),
            "uefi" => uefi(artifacts),
            "partition" => partition(artifacts),
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

/// Builds again into a fresh directory and compares every artifact; fscks the disk's FATs.
pub fn reproducible(artifacts: &ImageArtifacts) -> anyhow::Result<()> {
    let parent = artifacts.dir.parent().context("output dir has no parent")?;
    let dir = tempfile::tempdir_in(parent)?;
    let second = super::build(&super::ImageOptions {
        out_dir: Some(dir.path().to_owned()),
        ..Default::default()
    })?;
    for (first, again) in [
        (&artifacts.disk, &second.disk),
        (&artifacts.vmlinux, &second.vmlinux),
        (&artifacts.initramfs, &second.initramfs),
        (&artifacts.uki, &second.uki),
        (&artifacts.uki_next, &second.uki_next),
        (&artifacts.uki_bad, &second.uki_bad),
    ] {
        let (a, b) = (super::sha256_file(first)?, super::sha256_file(again)?);
        if a != b {
            bail!("{} differs between two builds: {a} vs {b}", first.display());
        }
    }
    println!(
        "  two builds: disk.img sha256 {} both times",
        second.disk_sha256
    );
    let disk = std::fs::read(&artifacts.disk)?;
    for (name, start, end) in super::gpt::read_partitions(&disk)? {
        let path = dir.path().join(format!("{name}.fat"));
        std::fs::write(
            &path,
            disk.get(start..end).context("partition outside the disk")?,
        )?;
        let output = std::process::Command::new("/usr/sbin/fsck.fat")
            .arg("-n")
            .arg(&path)
            .output()
            .context("running fsck.fat")?;
        let report = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || report.contains("Expected") {
            bail!("fsck.fat -n {name}:\n{report}");
        }
        println!("  fsck.fat -n {name}: clean");
    }
    Ok(())
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
    for found in a.wait_for_all(&["TUNNEL-UP to-site-b", "PING-OK"], timeout)? {
        show("site-a", &found);
    }
    show("site-b", &b.wait_for("TUNNEL-UP to-site-a", timeout)?);
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

/// The hardware path: config from the APPCONFIG partition (certificates next to site.toml).
pub fn partition(artifacts: &ImageArtifacts) -> anyhow::Result<()> {
    let parent = artifacts.dir.parent().context("output dir has no parent")?;
    let dir = tempfile::tempdir_in(parent)?;
    let config = dir.path().join("site.toml");
    let toml = std::fs::read_to_string(test_dir().join("site-a.toml"))?;
    std::fs::write(&config, toml.replace("\"pki/", "\""))?;
    let pki = workspace_root().join("vpn-daemon/examples/pki");
    let built = super::build(&super::ImageOptions {
        config: Some(config),
        network: Some(test_dir().join("network-a")),
        extra_files: ["ca.crt", "tc.key", "site-a.crt", "site-a.key"]
            .iter()
            .map(|file| pki.join(file))
            .collect(),
        out_dir: Some(dir.path().join("out")),
    })?;
    let [wire, _] = cable(
        dir.path(),
        "wan",
        ["52:54:00:00:0a:01", "52:54:00:00:0b:01"],
    );
    let mut vm = Vm::start(
        &built,
        &BootMode::Uefi {
            disk: disk_copy(&built, dir.path())?,
        },
        &VmOptions {
            name: "partition".into(),
            fw_cfg: Vec::new(),
            qemu_args: wire,
            memory_mib: 256,
        },
    )?;
    let timeout = Duration::from_secs(180);
    for marker in [
        "APPLIANCE-BOOT version=",
        "APPLIANCE-CONFIG source=partition",
        "APPLIANCE-NET wan0 192.0.2.1/24",
        "APPLIANCE-READY",
    ] {
        show("partition", &vm.wait_for(marker, timeout)?);
    }
    vm.stop()?;
    Ok(())
}

fn update_vm(
    artifacts: &ImageArtifacts,
    dir: &Path,
    update: &Path,
    tries: Option<u32>,
) -> anyhow::Result<Vm> {
    let medium = dir.join("update.img");
    super::build_update_disk(update, tries, &medium)?;
    Vm::start(
        artifacts,
        &BootMode::Uefi {
            disk: disk_copy(artifacts, dir)?,
        },
        &VmOptions {
            name: "update".into(),
            fw_cfg: Vec::new(),
            qemu_args: vec![
                "-drive".into(),
                format!("file={},format=raw,if=virtio,readonly=on", medium.display()),
            ],
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
