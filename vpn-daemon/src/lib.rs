//! The VPN appliance daemon as a library, so that tests drive the same code as the binary.
//!
//! Layout (ARCHITECTURE.md has the picture): `proto` (sans-IO OpenVPN), `config` (schema v1 ->
//! typed config), `import` (OpenVPN configs -> TOML), `runtime` (one tunnel runtime for every
//! role), `state` (typed link state on one bus), `plan` (pure planners of that state: eBPF maps,
//! routes), `routes` (the route table), `offload` (virtio-net offloads), `io` (everything that
//! touches the kernel: tun, sockets, netlink and the route reconciler, eBPF, control socket),
//! `status`, and `daemon` (the event loop that owns the running state).
#![warn(unreachable_pub)]

pub mod config;
pub mod daemon;
pub mod import;
pub mod io;
pub mod offload;
pub(crate) mod plan;
pub mod proto;
pub mod routes;
pub(crate) mod runtime;
pub mod state;
pub mod status;
