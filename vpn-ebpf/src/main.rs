//! eBPF programs of the appliance, one file per attach point. Entry points stay thin: each
//! calls its file's decision function (`classify`, `police`, `steer`, `guard`), which returns
//! the counter to bump (and `steer` its redirect), and turns that into a verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod log;
mod maps;
mod packet;
mod tc_lan;
mod tc_tun;
mod tc_wan_egress;
mod xdp_wan;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never entered at run time.
    loop {}
}

// Host builds (clippy, `cargo check --workspace`) need a main; the real object is built for BPF.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
