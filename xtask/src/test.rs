//! `cargo xtask test`: the one command that checks everything, in tiers. CI runs exactly this.

use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{is_root, run_command, step, workspace_root};

pub fn run() -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|value| value == "true");
    if ci && !is_root() {
        bail!("CI=true but not root: the privileged test tiers (netns, eBPF) cannot run");
    }
    if !is_root() {
        println!(
            "note: not root, so the privileged tiers (netns, eBPF) will print SKIP and not run"
        );
    }
    let cargo = || {
        let mut command = Command::new("cargo");
        command.current_dir(workspace_root());
        command
    };
    step("format", || {
        run_command(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    step("clippy (warnings denied)", || {
        run_command(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step(
        "tiers 1-3: unit, property, config, CLI and eBPF prog-test-run tests",
        || {
            run_command(cargo().args([
                "test",
                "--workspace",
                "--exclude",
                "vpn-ebpf",
                "--exclude",
                "vpn-tests",
            ]))
        },
    )?;
    step("tier 4: netns tests (real kernel, veth, XDP)", || {
        // One test at a time: these saturate links with iperf3 on a 2-core machine, and parallel
        // runs starved each other's daemons of CPU for whole seconds (flaky stall checks).
        run_command(cargo().args(["test", "--package", "vpn-tests", "--", "--test-threads=1"]))
    })?;
    if std::env::var("VPN_VM_SMOKE").is_ok_and(|value| value == "0") {
        println!("note: VPN_VM_SMOKE=0, VM smoke tier skipped");
    } else {
        step(
            "tier 6: VM smoke (appliance image under qemu TCG: two sites, a tunnel, traffic across)",
            || crate::vm::run(&[], true),
        )?;
    }
    let seconds = fuzz_seconds()?;
    if seconds == 0 {
        println!("note: VPN_FUZZ_SECONDS=0, fuzzing skipped");
        return Ok(());
    }
    step(&format!("fuzz: every target for {seconds} s"), || {
        crate::fuzz::run(seconds, &[])
    })
}

/// Seconds each fuzz target runs in `cargo xtask test`: `VPN_FUZZ_SECONDS`, default 10.
fn fuzz_seconds() -> anyhow::Result<u32> {
    match std::env::var("VPN_FUZZ_SECONDS") {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("VPN_FUZZ_SECONDS={value:?} is not a number of seconds")),
        Err(_) => Ok(10),
    }
}
