//! `cargo xtask demo`: the README's main command. Builds the appliance image, boots the two-site
//! topology (`tests/vm/topologies/two-site.toml`, configs in `tests/vm/topologies/two-site/`)
//! under qemu, shows both appliances coming up and their tunnel, traffic between the sites' hosts
//! crossing it, and `vpn-daemon status` from both appliances; then shuts every VM down.
//! `--hold` keeps the VMs running until Ctrl-C. No root needed for the VMs themselves.
//!
//! ```text
//!   host-a ---(lan-a)--- site-a ===(wan, tunnel)=== site-b ---(lan-b)--- host-b
//!  10.1.0.10          10.1.0.1 | 10.77.0.1     10.77.0.2 | 10.2.0.1        10.2.0.10
//! ```

use std::time::{Duration, Instant};

use crate::{
    step,
    vm::{
        self, cleanup,
        lab::{Lab, LabOptions},
        scenario::{traffic_crosses, BOOT_TIMEOUT, TUNNEL_TIMEOUT},
        topology::Topology,
    },
};

const APPLIANCES: [&str; 2] = ["site-a", "site-b"];

/// Runs the demo; `started` is when the command started (for the time-to-traffic figure).
pub fn run(hold: bool, started: Instant) -> anyhow::Result<()> {
    cleanup::install();
    let boot = step("build the appliance image", vm::boot_files)?;
    let log_dir = vm::log_root().join("demo");
    let _ = std::fs::remove_dir_all(&log_dir);
    let topology = Topology::load("two-site")?;
    let options = LabOptions {
        pcap: true,
        ..LabOptions::default()
    };
    let mut lab = step(
        "start the wire and boot 4 VMs (2 appliances, 2 hosts)",
        || Lab::start(&topology, &boot, &log_dir, &options),
    )?;

    let mut tunnel_up_after = Vec::new();
    step("appliances boot and bring their tunnel up", || {
        for name in APPLIANCES {
            let vm = lab.vm(name)?;
            for marker in ["APPLIANCE-BOOT", "APPLIANCE-READY", "TUNNEL-UP"] {
                let line = vm.wait_seen(
                    marker,
                    if marker == "TUNNEL-UP" {
                        TUNNEL_TIMEOUT
                    } else {
                        BOOT_TIMEOUT
                    },
                )?;
                println!(
                    "    {name} +{:5.1} s  {line}",
                    vm.started().elapsed().as_secs_f64()
                );
            }
            tunnel_up_after.push((name, vm.started().elapsed()));
        }
        Ok(())
    })?;
    step("hosts boot", || lab.wait_all("AGENT-READY", BOOT_TIMEOUT))?;
    step("traffic from host-a to host-b across the tunnel", || {
        traffic_crosses(&mut lab)
    })?;
    let traffic_after = started.elapsed();

    for name in APPLIANCES {
        let status = lab
            .vm(name)?
            .run_ok("vpn-daemon status", Duration::from_secs(30))?;
        println!("--- vpn-daemon status on {name}\n{}", status.trim_end());
    }
    println!("--- times");
    for (name, after) in &tunnel_up_after {
        println!(
            "    {name}: qemu start -> tunnel up {:.1} s",
            after.as_secs_f64()
        );
    }
    println!(
        "    command start -> traffic crossed the tunnel: {:.1} s",
        traffic_after.as_secs_f64()
    );

    if hold {
        println!(
            "holding: consoles in {dir}/*.console.log, pcaps in {dir}/*.pcap; Ctrl-C to stop",
            dir = log_dir.display()
        );
        cleanup::hold_until_interrupted();
    }
    step("shut down: kill the VMs, stop the wire", || {
        drop(lab);
        Ok(())
    })?;
    println!("demo done: logs and pcaps in {}", log_dir.display());
    Ok(())
}
