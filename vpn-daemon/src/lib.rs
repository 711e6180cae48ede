//! The VPN appliance daemon as a library, so that tests drive the same code as the binary.
//!
//! Layout: `config` (schema v1 -> typed config), `status` (what `vpn-daemon status` shows),
//! `daemon` (the event loop that owns the running state), `io/` (everything that touches the
//! kernel or sockets: eBPF loader, control socket).
pub mod config;
pub mod daemon;
pub mod import;
pub mod io;
pub mod proto;
pub mod status;
