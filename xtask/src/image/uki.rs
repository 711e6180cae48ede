//! Unified kernel images: systemd's EFI stub with `.osrel`, `.cmdline`, `.linux` and `.initrd`
//! sections added by `objcopy` (bookworm has no `ukify`). objcopy stamps the build time into the
//! PE header, so the timestamp is pinned afterwards (and the PE checksum redone) for
//! reproducibility.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

/// What goes into one UKI.
pub struct UkiInputs<'a> {
    pub stub: &'a Path,
    pub os_release: &'a str,
    pub cmdline: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
}

const PAGE: u64 = 0x1000;

fn align(value: u64) -> u64 {
    value.div_ceil(PAGE) * PAGE
}

fn u16_at(data: &[u8], at: usize) -> anyhow::Result<u16> {
    let bytes = data.get(at..at + 2).context("PE truncated")?;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn u32_at(data: &[u8], at: usize) -> anyhow::Result<u32> {
    let bytes = data.get(at..at + 4).context("PE truncated")?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

/// Offsets of the PE (COFF) header and the optional header.
fn pe_offsets(data: &[u8]) -> anyhow::Result<(usize, usize)> {
    if data.get(..2) != Some(b"MZ".as_slice()) {
        bail!("not a PE file (no MZ)");
    }
    let pe = u32_at(data, 0x3c)? as usize;
    if data.get(pe..pe + 4) != Some(b"PE\0\0".as_slice()) {
        bail!("not a PE file (no PE signature)");
    }
    Ok((pe, pe + 24))
}

/// Image base and the first page-aligned address after the stub's own sections.
fn free_address(stub: &[u8]) -> anyhow::Result<(u64, u64)> {
    let (pe, optional) = pe_offsets(stub)?;
    if u16_at(stub, optional)? != 0x20b {
        bail!("the EFI stub is not PE32+");
    }
    let sections = usize::from(u16_at(stub, pe + 6)?);
    let optional_size = usize::from(u16_at(stub, pe + 20)?);
    let image_base = u64::from_le_bytes(
        stub.get(optional + 24..optional + 32)
            .context("PE truncated")?
            .try_into()?,
    );
    let table = optional + optional_size;
    let mut end = 0u64;
    for index in 0..sections {
        let at = table + index * 40;
        let virtual_size = u64::from(u32_at(stub, at + 8)?);
        let virtual_address = u64::from(u32_at(stub, at + 12)?);
        end = end.max(virtual_address + virtual_size);
    }
    Ok((image_base, image_base + align(end)))
}

/// Builds the UKI at `out` with its PE timestamp set to `epoch`.
pub fn build(inputs: &UkiInputs, out: &Path, epoch: u64, scratch: &Path) -> anyhow::Result<()> {
    let stub =
        std::fs::read(inputs.stub).with_context(|| format!("reading {}", inputs.stub.display()))?;
    let (_, mut address) = free_address(&stub)?;
    let os_release = scratch.join("os-release");
    let cmdline = scratch.join("cmdline");
    std::fs::write(&os_release, inputs.os_release)?;
    std::fs::write(&cmdline, inputs.cmdline)?;

    let mut command = Command::new("objcopy");
    for (section, file) in [
        (".osrel", os_release.as_path()),
        (".cmdline", cmdline.as_path()),
        (".linux", inputs.kernel),
        (".initrd", inputs.initrd),
    ] {
        let size = std::fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        command
            .arg("--add-section")
            .arg(format!("{section}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{section}={address:#x}"));
        address = align(address + size);
    }
    command.arg(inputs.stub).arg(out);
    crate::run_command(&mut command)?;

    let mut image = std::fs::read(out)?;
    pin_timestamp(&mut image, epoch)?;
    std::fs::write(out, image)?;
    Ok(())
}

/// Sets the COFF TimeDateStamp and recomputes the optional header's checksum (when the file has
/// one), so that the UKI bytes do not depend on when it was built.
pub fn pin_timestamp(image: &mut [u8], epoch: u64) -> anyhow::Result<()> {
    let (pe, optional) = pe_offsets(image)?;
    let stamp = u32::try_from(epoch).context("SOURCE_DATE_EPOCH beyond 2106")?;
    image[pe + 8..pe + 12].copy_from_slice(&stamp.to_le_bytes());
    let checksum_at = optional + 64;
    if u32_at(image, checksum_at)? != 0 {
        image[checksum_at..checksum_at + 4].fill(0);
        let checksum = pe_checksum(image, checksum_at);
        image[checksum_at..checksum_at + 4].copy_from_slice(&checksum.to_le_bytes());
    }
    Ok(())
}

/// The PE image checksum: 16-bit one's-complement-style sum of the file (checksum field as zero)
/// plus the file length.
fn pe_checksum(image: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (index, chunk) in image.chunks(2).enumerate() {
        if index * 2 == checksum_at || index * 2 == checksum_at + 2 {
            continue;
        }
        let word = u64::from(chunk[0]) | (u64::from(*chunk.get(1).unwrap_or(&0)) << 8);
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(image.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_pe() {
        assert!(pin_timestamp(&mut [0u8; 128], 0).is_err());
        assert!(free_address(b"MZ").is_err());
    }
}
