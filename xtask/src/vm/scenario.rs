//! The end-to-end scenarios of `cargo xtask vm-test`. Each boots its own lab and decides pass
//! or fail from what the guests print (console markers, command channel replies).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use super::{
    lab::{BootFiles, Lab, LabOptions},
    qemu::Vm,
    topology::Topology,
};

/// Boot to a marker under TCG on a shared 2-core machine: generous, a healthy boot takes 10-20 s.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// From the daemon's start to its tunnel up.
pub const TUNNEL_TIMEOUT: Duration = Duration::from_secs(120);
/// One UEFI boot (firmware, systemd-boot, UKI), or a few when boot counting falls back.
const UEFI_TIMEOUT: Duration = Duration::from_secs(300);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a scenario gets.
pub struct Context {
    pub boot: BootFiles,
    /// Per-scenario directory for console logs, pcaps and guest files.
    pub log_dir: PathBuf,
}

/// One scenario.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Part of the short CI subset.
    pub smoke: bool,
    pub run: fn(&Context) -> anyhow::Result<()>,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "wire",
        about: "two hosts on one hub: ping, the pcap shows it, a partition stops it, heal restores",
        smoke: false,
        run: wire,
    },
    Scenario {
        name: "two-site",
        about: "two sites, one tunnel: host-a pings host-b and fetches a file over TCP across it",
        smoke: true,
        run: two_site,
    },
    Scenario {
        name: "reboot",
        about: "two-site, then site-b is reset: the tunnel comes back and traffic crosses again",
        smoke: false,
        run: reboot,
    },
    Scenario {
        name: "wan-faults",
        about: "two-site with a lossy, slow WAN (traffic still crosses), then a cut WAN and a heal",
        smoke: false,
        run: wan_faults,
    },
    Scenario {
        name: "uefi-disk",
        about: "the flashable disk image boots through OVMF + systemd-boot from slot A",
        smoke: false,
        run: uefi_disk,
    },
    Scenario {
        name: "update",
        about: "update into slot B: trial boot blessed; a bad image in slot B falls back to A by \
                itself; an update medium attached at boot is installed and blessed",
        smoke: false,
        run: update,
    },
];

/// Boots the two-site topology and waits for every command channel and both tunnels; each
/// appliance must have taken its config from fw_cfg and addressed its WAN as the topology says.
pub fn start_two_site(context: &Context) -> anyhow::Result<Lab> {
    let topology = Topology::load("two-site")?;
    let options = LabOptions {
        pcap: true,
        ..LabOptions::default()
    };
    let mut lab = Lab::start(&topology, &context.boot, &context.log_dir, &options)?;
    lab.wait_all("AGENT-READY", BOOT_TIMEOUT)?;
    for (site, wan, tunnel) in [
        ("site-a", "10.77.0.1/24", "to-site-b"),
        ("site-b", "10.77.0.2/24", "to-site-a"),
    ] {
        let vm = lab.vm(site)?;
        // Printed before AGENT-READY, so already seen.
        vm.wait_seen("APPLIANCE-CONFIG source=fw_cfg", BOOT_TIMEOUT)?;
        vm.wait_seen(&format!("APPLIANCE-NET wan0 {wan}"), BOOT_TIMEOUT)?;
        vm.wait_seen(&format!("TUNNEL-UP {tunnel}"), TUNNEL_TIMEOUT)?;
    }
    Ok(lab)
}

fn wire(context: &Context) -> anyhow::Result<()> {
    let topology = Topology::load("lan-pair")?;
    let options = LabOptions {
        pcap: true,
        ..LabOptions::default()
    };
    let mut lab = Lab::start(&topology, &context.boot, &context.log_dir, &options)?;
    lab.wait_all("AGENT-READY", BOOT_TIMEOUT)?;
    let host_a = lab.vm("host-a")?;
    let ping = host_a.run_ok("ping -c 3 -W 2 10.5.0.2", COMMAND_TIMEOUT)?;
    ensure!(
        ping.contains("3 packets received"),
        "ping lost packets:\n{ping}"
    );

    let wire = lab.wire("lan")?;
    wire.partition(&[&[0], &[1]])?;
    let (status, output) = lab
        .vm("host-a")?
        .run("ping -c 2 -W 1 10.5.0.2", COMMAND_TIMEOUT)?;
    ensure!(status != 0, "ping crossed a partition:\n{output}");
    wire.heal();
    lab.vm("host-a")?
        .run_ok("ping -c 2 -W 2 10.5.0.2", COMMAND_TIMEOUT)?;
    println!("    ping ok, a partition blocks it, heal restores it");
    drop(lab);

    let pcap = context.log_dir.join("lan.pcap");
    let output = std::process::Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&pcap)
        .arg("icmp")
        .output()
        .context("running tcpdump")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let requests = text
        .matches("10.5.0.1 > 10.5.0.2: ICMP echo request")
        .count();
    let replies = text.matches("10.5.0.2 > 10.5.0.1: ICMP echo reply").count();
    // 3 + 2 + 2 requests were sent; the hub captures what enters it, cut or not.
    ensure!(
        requests == 7 && replies >= 5,
        "pcap shows {requests} echo requests and {replies} replies:\n{text}"
    );
    println!(
        "    {}: {requests} echo requests, {replies} replies",
        pcap.display()
    );
    Ok(())
}

fn wan_faults(context: &Context) -> anyhow::Result<()> {
    let mut lab = start_two_site(context)?;
    traffic_crosses(&mut lab)?;
    let wan = lab.wire("wan")?;
    // Loss at both appliances' cables: about 10 % of frames lost end to end, plus 50 ms delay.
    wan.set_loss(0, 5.0)?;
    wan.set_loss(1, 5.0)?;
    wan.set_delay(0, Duration::from_millis(50))?;
    println!("    WAN with 5 % loss at each end and 50 ms delay:");
    traffic_crosses(&mut lab)?;
    wan.heal();
    wan.cut(1)?;
    let (status, output) = lab
        .vm("host-a")?
        .run("ping -c 2 -W 1 10.2.0.10", COMMAND_TIMEOUT)?;
    ensure!(status != 0, "ping crossed a cut WAN:\n{output}");
    println!("    WAN cut: ping fails as it should");
    wan.heal();
    println!("    WAN healed:");
    traffic_crosses(&mut lab)?;
    Ok(())
}

fn two_site(context: &Context) -> anyhow::Result<()> {
    let mut lab = start_two_site(context)?;
    traffic_crosses(&mut lab)?;
    // The appliance's own traffic takes the tunnel too: site-a pings site-b's tunnel address.
    let ping = lab
        .vm("site-a")?
        .run_ok("ping -c 3 -W 2 10.99.0.2", COMMAND_TIMEOUT)?;
    ensure!(
        ping.contains("3 packets received"),
        "site-a -> site-b tunnel address lost pings:\n{ping}"
    );
    println!("    ping site-a -> 10.99.0.2 (site-b's tunnel address): 3 of 3");
    Ok(())
}

/// host-a pings host-b, then downloads a random 256 KiB file from host-b's httpd over TCP and
/// compares checksums. Returns the ping summary.
pub fn traffic_crosses(lab: &mut Lab) -> anyhow::Result<String> {
    let host_b = lab.vm("host-b")?;
    let served = host_b.run_ok(
        "mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/blob bs=1024 count=256 2>/dev/null \
         && md5sum /tmp/www/blob && (pidof httpd >/dev/null || httpd -p 8080 -h /tmp/www)",
        COMMAND_TIMEOUT,
    )?;
    let served = first_word(&served)?;

    let host_a = lab.vm("host-a")?;
    // The first packets may still meet a tunnel that is settling: retry a few times.
    let mut ping = String::new();
    for attempt in 1..=5 {
        let (status, output) = host_a.run("ping -c 3 -W 2 10.2.0.10", COMMAND_TIMEOUT)?;
        ping = output;
        if status == 0 {
            break;
        }
        ensure!(
            attempt < 5,
            "host-a cannot ping host-b across the tunnel:\n{ping}"
        );
    }
    let summary = ping
        .lines()
        .find(|line| line.contains("packets transmitted"))
        .unwrap_or("")
        .to_owned();
    println!("    ping host-a -> host-b: {summary}");

    let fetched = host_a.run_ok(
        "wget -q -O - http://10.2.0.10:8080/blob | md5sum",
        COMMAND_TIMEOUT,
    )?;
    let fetched = first_word(&fetched)?;
    ensure!(
        fetched == served,
        "TCP transfer corrupted: host-b served md5 {served}, host-a got {fetched}"
    );
    println!("    TCP host-b -> host-a: 256 KiB over http, md5 {fetched} matches");
    Ok(summary)
}

fn first_word(output: &str) -> anyhow::Result<String> {
    output
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("expected a checksum, got {output:?}"))
}

fn reboot(context: &Context) -> anyhow::Result<()> {
    let mut lab = start_two_site(context)?;
    traffic_crosses(&mut lab)?;
    let site_b = lab.vm("site-b")?;
    let reset_at = Instant::now();
    site_b.reset()?;
    site_b.wait_for("APPLIANCE-BOOT", BOOT_TIMEOUT)?;
    site_b.wait_for("TUNNEL-UP", TUNNEL_TIMEOUT)?;
    println!(
        "    site-b reset -> tunnel up again in {:.1} s",
        reset_at.elapsed().as_secs_f64()
    );
    traffic_crosses(&mut lab)?;
    Ok(())
}

/// The single-appliance disk topology on a fresh copy of the image; with `update`, the VM also
/// gets the command channel and that file as a raw read-only disk.
fn start_disk(context: &Context, update: Option<&Path>) -> anyhow::Result<Lab> {
    start_disk_in(context, &context.log_dir, update)
}

/// [`start_disk`] with its logs in `log_dir`.
fn start_disk_in(context: &Context, log_dir: &Path, update: Option<&Path>) -> anyhow::Result<Lab> {
    let topology = Topology::load("uefi-single")?;
    let mut options = LabOptions::default();
    if let Some(update) = update {
        // Raw disks are read in whole sectors: pad a copy to a multiple of 512 bytes.
        let mut bytes =
            std::fs::read(update).with_context(|| format!("reading {}", update.display()))?;
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        std::fs::create_dir_all(log_dir)?;
        let drive = log_dir.join("update-drive.img");
        std::fs::write(&drive, bytes)?;
        options.disk_agent = true;
        options.extra_drives = vec![("site-a".to_owned(), drive)];
    }
    Lab::start(&topology, &context.boot, log_dir, &options)
}

/// Copies the update image off its raw disk (the one starting with "MZ") and runs the image's
/// `appliance-update` on it; returns its UPDATE-WRITTEN line. The VM booted slot A, so slot B is
/// the target: its entry and UKI are removed first, because `appliance-update` writes the new
/// UKI beside the old one and two 23 MB UKIs plus a third do not fit the 64 MiB ESP.
fn install_update(vm: &mut Vm, update: &Path, tries: Option<u32>) -> anyhow::Result<String> {
    let size = std::fs::metadata(update)?.len();
    let tries = tries
        .map(|tries| format!(" --tries {tries}"))
        .unwrap_or_default();
    let output = vm.run_ok(
        &format!(
            "for disk in /dev/vd?; do [ \"$(head -c 2 $disk)\" = MZ ] && head -c {size} $disk > /tmp/update.efi; done; \
             . /lib/appliance/lib.sh && mount_esp && \
             rm -f $ESP_MOUNT/loader/entries/appliance-b*.conf $ESP_MOUNT/EFI/appliance/slot-b.efi && \
             appliance-update /tmp/update.efi{tries}"
        ),
        Duration::from_secs(180),
    )?;
    let written = output
        .lines()
        .find(|line| line.starts_with("UPDATE-WRITTEN"))
        .with_context(|| format!("appliance-update said:\n{output}"))?
        .to_owned();
    // Reboot from the background, so the command channel answers first.
    vm.run_ok("(sleep 1; reboot -f) >/dev/null 2>&1 &", COMMAND_TIMEOUT)?;
    Ok(written)
}

fn uefi_disk(context: &Context) -> anyhow::Result<()> {
    let mut lab = start_disk(context, None)?;
    let vm = lab.vm("site-a")?;
    let boot = vm.wait_for("APPLIANCE-BOOT", UEFI_TIMEOUT)?;
    ensure!(
        boot.contains("version=") && boot.contains("slot=a"),
        "expected a first boot from slot A, with the image version: {boot}"
    );
    let config = vm.wait_for("APPLIANCE-CONFIG", BOOT_TIMEOUT)?;
    ensure!(
        config.contains("source=partition"),
        "without fw_cfg the config must come from the APPCONFIG partition: {config}"
    );
    vm.wait_for("APPLIANCE-READY", BOOT_TIMEOUT)?;
    println!(
        "    {boot}; {config}; ready {:.1} s after qemu started",
        vm.started().elapsed().as_secs_f64()
    );
    Ok(())
}

/// Waits for a disk VM's first boot, which must be from slot A.
fn first_boot_from_a(vm: &mut Vm) -> anyhow::Result<()> {
    let first = vm.wait_for("APPLIANCE-BOOT", UEFI_TIMEOUT)?;
    ensure!(
        first.contains("slot=a"),
        "first boot not from slot A: {first}"
    );
    Ok(())
}

/// After a good update to slot B: waits for the trial boot of the new image (`uki_next`) from
/// slot B and for its blessing; returns both lines.
fn trial_boot_blessed(vm: &mut Vm) -> anyhow::Result<(String, String)> {
    let trial = vm.wait_for("APPLIANCE-BOOT", UEFI_TIMEOUT)?;
    ensure!(
        trial.contains("slot=b image=next"),
        "trial boot not of the new image from slot B: {trial}"
    );
    let blessed = vm.wait_for("SLOT-BLESSED", BOOT_TIMEOUT)?;
    ensure!(blessed.ends_with('b'), "slot B not blessed: {blessed}");
    Ok((trial, blessed))
}

/// The update path on fresh copies of the disk image, run through the image's own
/// `appliance-update` (the new UKI reaches the guest as a raw disk): a good image is written to
/// slot B, boots on trial and is blessed; a bad one (its init fails) written to slot B with one
/// try falls back to slot A by itself. Then the hands-off path: an update medium (an `APPUPDATE`
/// disk, see `image::build_update_disk`) attached at boot is installed by init, with the tries
/// it names, rebooted into and blessed.
fn update(context: &Context) -> anyhow::Result<()> {
    let good = context
        .boot
        .uki_next
        .clone()
        .context("no update UKI was built")?;
    let bad = context
        .boot
        .uki_bad
        .clone()
        .context("no bad UKI was built")?;
    {
        let mut lab = start_disk_in(context, &context.log_dir.join("good"), Some(&good))?;
        let vm = lab.vm("site-a")?;
        first_boot_from_a(vm)?;
        vm.wait_for("AGENT-READY", BOOT_TIMEOUT)?;
        let written = install_update(vm, &good, None)?;
        ensure!(
            written.contains("slot=b"),
            "update not written to slot B: {written}"
        );
        let (trial, blessed) = trial_boot_blessed(vm)?;
        println!("    good image: {written} -> {trial} -> {blessed}");
    }
    {
        let mut lab = start_disk_in(context, &context.log_dir.join("bad"), Some(&bad))?;
        let vm = lab.vm("site-a")?;
        first_boot_from_a(vm)?;
        vm.wait_for("AGENT-READY", BOOT_TIMEOUT)?;
        let written = install_update(vm, &bad, Some(1))?;
        ensure!(
            written.contains("slot=b tries=1"),
            "bad update not written to slot B with one try: {written}"
        );
        // The bad image panics on purpose (its init exits); panic=5 reboots.
        vm.set_fatal_markers(&[]);
        vm.wait_for("BAD-IMAGE", UEFI_TIMEOUT)?;
        let again = vm.wait_for("APPLIANCE-BOOT", UEFI_TIMEOUT)?;
        ensure!(
            again.contains("slot=a"),
            "did not fall back to slot A: {again}"
        );
        let fallback = vm.wait_for("UPDATE-FALLBACK", BOOT_TIMEOUT)?;
        ensure!(
            fallback.contains("slot=b"),
            "fallback names the wrong slot: {fallback}"
        );
        println!("    bad image: {written} -> BAD-IMAGE -> {again} -> {fallback}");
    }
    {
        let log_dir = context.log_dir.join("medium");
        std::fs::create_dir_all(&log_dir)?;
        let medium = log_dir.join("update-medium.img");
        crate::image::build_update_disk(&good, Some(2), &medium)?;
        let topology = Topology::load("uefi-single")?;
        let options = LabOptions {
            extra_drives: vec![("site-a".to_owned(), medium)],
            ..LabOptions::default()
        };
        let mut lab = Lab::start(&topology, &context.boot, &log_dir, &options)?;
        let vm = lab.vm("site-a")?;
        first_boot_from_a(vm)?;
        let written = vm.wait_for("UPDATE-WRITTEN", BOOT_TIMEOUT)?;
        ensure!(
            written.contains("slot=b tries=2"),
            "the medium's update not written to slot B with its two tries: {written}"
        );
        vm.wait_for("UPDATE-REBOOT", BOOT_TIMEOUT)?;
        let (trial, blessed) = trial_boot_blessed(vm)?;
        println!("    update medium: {written} -> {trial} -> {blessed}");
    }
    Ok(())
}

/// Runs the named scenarios (all when empty, the smoke subset with `smoke`) in order and prints
/// one PASS/FAIL line each; fails if any failed.
pub fn run_all(
    names: &[String],
    smoke: bool,
    boot: impl FnOnce() -> anyhow::Result<BootFiles>,
    log_root: &std::path::Path,
) -> anyhow::Result<()> {
    for name in names {
        if !SCENARIOS.iter().any(|scenario| scenario.name == name) {
            let known: Vec<&str> = SCENARIOS.iter().map(|scenario| scenario.name).collect();
            bail!("no scenario {name:?}; known: {}", known.join(", "));
        }
    }
    let chosen: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|scenario| {
            if names.is_empty() {
                !smoke || scenario.smoke
            } else {
                names.iter().any(|name| name == scenario.name)
            }
        })
        .collect();
    let boot = boot()?;
    let mut results = Vec::new();
    for scenario in &chosen {
        println!("==> vm scenario {}: {}", scenario.name, scenario.about);
        let context = Context {
            boot: boot.clone(),
            log_dir: log_root.join(scenario.name),
        };
        let _ = std::fs::remove_dir_all(&context.log_dir);
        let started = Instant::now();
        let outcome = (scenario.run)(&context);
        let seconds = started.elapsed().as_secs_f64();
        match &outcome {
            Ok(()) => println!("PASS {} ({seconds:.1} s)", scenario.name),
            Err(error) => println!(
                "FAIL {} ({seconds:.1} s): {error:#}\n     logs: {}",
                scenario.name,
                context.log_dir.display()
            ),
        }
        results.push((scenario.name, outcome.is_ok()));
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, passed)| !passed)
        .map(|(name, _)| *name)
        .collect();
    println!(
        "vm-test: {} passed, {} failed",
        results.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("vm scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}
