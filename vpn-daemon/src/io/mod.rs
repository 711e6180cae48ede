//! Everything that touches the kernel or sockets. The rest of the daemon stays testable without them.
pub mod control;
pub mod ebpf;
pub mod ebpf_log;
pub mod ebpf_plan;
pub mod netlink;
pub mod offload;
pub mod server;
pub mod tun;
pub mod tunnel;
pub mod udp_batch;
