//! Everything that touches the kernel or sockets. The rest of the daemon stays testable without them.
pub mod control;
pub mod ebpf;
pub mod ebpf_log;
pub mod netlink;
pub mod route_reconciler;
pub mod tun;
pub mod udp_batch;
