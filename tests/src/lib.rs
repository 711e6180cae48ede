//! Harness for the privileged test tiers: network namespaces, veth pairs, processes and threads
//! inside a namespace, and the daemon binary under test.
//!
//! Every namespace is named `vpnt-<pid>-<seq>-<tag>` and deleted when its [`NetNs`] drops (also
//! while a failing test unwinds); namespaces left by a killed test run are removed by the next
//! run because their `<pid>` is no longer alive.

pub mod daemon;
pub mod interop;
pub mod netns;
pub mod openvpn;
pub mod packet;
pub mod pki;
pub mod traffic;

pub use netns::{veth_pair, NetNs};

use std::time::{Duration, Instant};

/// Whether a privileged test may run. As root: yes. Otherwise it prints why it skips, unless
/// `CI=true`, where a skipped privileged test would hide a failure: then it panics.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test}: needs root (network namespaces, eBPF) and CI=true forbids skipping it");
    }
    eprintln!("SKIP {test}: needs root (network namespaces, eBPF)");
    false
}

/// Polls `probe` until it returns `Some`, or fails naming `what` after `timeout`.
/// Tests wait on observed state this way, never on bare sleeps.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
