//! Network namespaces owned by a test.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Command, Output},
    sync::{
        atomic::{AtomicU32, Ordering},
        Once,
    },
};

use anyhow::{bail, Context as _};

/// Prefix of every namespace this harness creates for tests.
pub const PREFIX: &str = "vpnt-";
/// Prefix of the benchmark's namespaces (`cargo xtask bench`).
pub const BENCH_PREFIX: &str = "vpnb-";
/// Prefix of the eBPF fast-path tests' namespaces (tests/tests/ebpf_*.rs).
pub const EBPF_PREFIX: &str = "vpne-";
const NETNS_DIR: &str = "/run/netns";

static SEQUENCE: AtomicU32 = AtomicU32::new(0);
static CLEAN_STALE: Once = Once::new();

/// A network namespace that is deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `vpnt-<pid>-<seq>-<tag>` with loopback up and IPv6 off (router and neighbour
    /// solicitations would otherwise land in packet counters).
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        Self::with_prefix(PREFIX, tag)
    }

    /// Like [`NetNs::new`] with another prefix, [`PREFIX`] or [`BENCH_PREFIX`] (stale namespaces
    /// are cleaned up for those two).
    pub fn with_prefix(prefix: &str, tag: &str) -> anyhow::Result<Self> {
        CLEAN_STALE.call_once(remove_stale_namespaces);
        let name = format!(
            "{prefix}{}-{}-{tag}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// A command that runs in this namespace (only the network namespace changes: unlike
    /// `ip netns exec`, /sys and its bpf filesystem stay the host's, so pins are visible).
    pub fn command(&self, program: &str) -> anyhow::Result<Command> {
        let netns = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        let mut command = Command::new(program);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe, on an fd opened
        // before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Runs `argv` in this namespace (through `ip netns exec`, so sysctl sees its /proc/sys/net)
    /// and fails with its stderr if it exits non-zero.
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<Output> {
        run_checked(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
        )
    }

    /// `ip -n <ns> ARGS...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = run_checked(Command::new("ip").args(["-n", &self.name]).args(args))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `f` on a fresh thread that has entered this namespace: sockets it opens live here.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let netns = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this short-lived thread.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(error) = run_checked(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: deleting namespace {}: {error:#}", self.name);
        }
    }
}

/// A veth pair with one end in each namespace, both up, each end with the given address/prefix.
pub fn veth_pair(
    (a, a_if, a_addr): (&NetNs, &str, &str),
    (b, b_if, b_addr): (&NetNs, &str, &str),
) -> anyhow::Result<()> {
    run_checked(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]))?;
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

pub(crate) fn run_checked(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Deletes `vpnt-<pid>-...` and `vpnb-<pid>-...` namespaces whose creating process is gone (a test run that was killed).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .or_else(|| name.strip_prefix(BENCH_PREFIX))
            .or_else(|| name.strip_prefix(EBPF_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}
