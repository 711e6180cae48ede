//! The ABI between `vpn-ebpf` and `vpn-daemon`: map names, keys, values and counter indices.
//!
//! Every type here is `#[repr(C)]` with explicit padding and a size assertion, because the kernel
//! copies these bytes verbatim between the two sides.
#![no_std]

pub mod wan;

/// Name of the sub-directory of `/sys/fs/bpf` (one per node) under which the daemon pins maps.
pub const BPF_FS_ROOT: &str = "/sys/fs/bpf";
