//! Builds `vpn-ebpf` for bpfel-unknown-none with the nightly toolchain and bpf-linker, and leaves
//! the object in OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs what it needs.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
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
    let package = aya_build::Package {
        name: ebpf_package.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).context(
        "building the eBPF programs (run `cargo xtask setup` if bpf-linker or the nightly rust-src is missing)",
    )
}
