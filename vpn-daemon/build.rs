//! Builds `vpn-ebpf` for bpfel-unknown-none with the nightly toolchain and bpf-linker, and leaves
//! the object in OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs what it needs.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    // eBPF logging (aya-log) in debug builds only: release objects carry no log code or ring
    // buffer. The daemon sees the choice as `cfg(ebpf_log)`. VPN_EBPF_LOG=0/1 overrides it, e.g.
    // to measure a debug build without logging code.
    println!("cargo:rerun-if-env-changed=VPN_EBPF_LOG");
    println!("cargo:rustc-check-cfg=cfg(ebpf_log)");
    let ebpf_log = match std::env::var("VPN_EBPF_LOG").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => std::env::var("PROFILE").as_deref() == Ok("debug"),
    };
    if ebpf_log {
        println!("cargo:rustc-cfg=ebpf_log");
    }
    // aya-build skips the eBPF build under AYA_BUILD_SKIP=1; `cargo xtask fuzz` sets it, since
    // the fuzz targets never load eBPF and the nested nightly build costs minutes. An empty
    // object keeps `include_bytes_aligned!` compiling (loading it would fail, clearly).
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|value| value == "1" || value == "true") {
        let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
        std::fs::write(std::path::Path::new(&out_dir).join("vpn-ebpf"), [])
            .context("writing the empty eBPF placeholder")?;
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf_package = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == "vpn-ebpf")
        .ok_or_else(|| anyhow!("vpn-ebpf package not found in the workspace"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("vpn-ebpf manifest has no parent directory"))?;
    let features: &[&str] = if ebpf_log { &["log"] } else { &[] };
    let package = aya_build::Package {
        name: ebpf_package.name.as_str(),
        root_dir: root_dir.as_str(),
        features,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).context(
        "building the eBPF programs (run `cargo xtask setup` if bpf-linker or the nightly rust-src is missing)",
    )
}
