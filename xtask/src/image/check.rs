//! `cargo xtask image-test`: checks of the built image that no VM topology covers.
//!
//! - `reproducible`: a second build into another directory gives the same bytes for every
//!   artifact; both FAT partitions of disk.img pass `fsck.fat -n`.
//! - `partition`: like hardware: a disk image built with the site config on its APPCONFIG
//!   partition boots through OVMF without fw_cfg and brings the daemon up.
//!
//! Booting the image in VMs (two sites with a tunnel, the stock disk through UEFI, A/B updates
//! and their fallback) is `cargo xtask vm-test` (xtask/src/vm/scenario.rs).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    boot::{cable, Vm, VmOptions},
    ImageArtifacts,
};
use crate::workspace_root;

pub const SCENARIOS: &[&str] = &["reproducible", "partition"];

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
            "partition" => partition(artifacts),
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

/// A writable copy of disk.img in `dir`.
fn disk_copy(artifacts: &ImageArtifacts, dir: &Path) -> anyhow::Result<PathBuf> {
    let disk = dir.join("disk.img");
    std::fs::copy(&artifacts.disk, &disk)?;
    Ok(disk)
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
        &disk_copy(&built, dir.path())?,
        &VmOptions {
            name: "partition".into(),
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
