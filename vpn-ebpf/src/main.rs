//! eBPF programs of the appliance. Entry points stay thin: each calls a `try_*` function that
//! returns a verdict and the counter to bump.
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
