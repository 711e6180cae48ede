//! Builds `vpn-ebpf` for bpfel-unknown-none with the nightly toolchain and bpf-linker, and leaves
//! the object in OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs what it needs.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
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
