//! Just enough ELF64 (little endian) reading for the image build: a section's bytes by name (a
//! module's `.modinfo`) and a program's `DT_NEEDED` libraries. Hand-written: two lookups do not
//! justify a parser crate.

use anyhow::{bail, Context as _};

const SHT_DYNAMIC: u32 = 6;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

struct Section {
    name_offset: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

fn read_u16(data: &[u8], at: usize) -> anyhow::Result<u16> {
    let bytes = data.get(at..at + 2).context("ELF truncated")?;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn read_u32(data: &[u8], at: usize) -> anyhow::Result<u32> {
    let bytes = data.get(at..at + 4).context("ELF truncated")?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

fn read_u64(data: &[u8], at: usize) -> anyhow::Result<u64> {
    let bytes = data.get(at..at + 8).context("ELF truncated")?;
    Ok(u64::from_le_bytes(bytes.try_into()?))
}

fn sections(data: &[u8]) -> anyhow::Result<Vec<Section>> {
    if data.get(..4) != Some(b"\x7fELF".as_slice())
        || data.get(4) != Some(&2)
        || data.get(5) != Some(&1)
    {
        bail!("not a 64-bit little-endian ELF file");
    }
    let table = usize::try_from(read_u64(data, 0x28)?)?;
    let entry_size = usize::from(read_u16(data, 0x3a)?);
    let count = usize::from(read_u16(data, 0x3c)?);
    (0..count)
        .map(|index| {
            let at = table + index * entry_size;
            Ok(Section {
                name_offset: read_u32(data, at)?,
                kind: read_u32(data, at + 4)?,
                offset: read_u64(data, at + 24)?,
                size: read_u64(data, at + 32)?,
                link: read_u32(data, at + 40)?,
            })
        })
        .collect()
}

fn section_bytes<'a>(data: &'a [u8], section: &Section) -> anyhow::Result<&'a [u8]> {
    let start = usize::try_from(section.offset)?;
    let end = start + usize::try_from(section.size)?;
    data.get(start..end).context("ELF section out of bounds")
}

/// The NUL-terminated string at `offset` of a string table.
fn string_at(table: &[u8], offset: usize) -> anyhow::Result<String> {
    let tail = table
        .get(offset..)
        .context("ELF string offset out of bounds")?;
    let end = tail
        .iter()
        .position(|&b| b == 0)
        .context("unterminated ELF string")?;
    Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
}

/// The bytes of the section called `name`, if the file has one.
pub fn section_by_name<'a>(data: &'a [u8], name: &str) -> anyhow::Result<Option<&'a [u8]>> {
    let sections = sections(data)?;
    let names_index = usize::from(read_u16(data, 0x3e)?);
    let names = section_bytes(data, sections.get(names_index).context("no section names")?)?;
    for section in &sections {
        if string_at(names, section.name_offset as usize)? == name {
            return Ok(Some(section_bytes(data, section)?));
        }
    }
    Ok(None)
}

/// The shared libraries (`DT_NEEDED` sonames) a dynamically linked program or library asks for.
pub fn needed_libraries(data: &[u8]) -> anyhow::Result<Vec<String>> {
    let sections = sections(data)?;
    let Some(dynamic) = sections.iter().find(|section| section.kind == SHT_DYNAMIC) else {
        return Ok(Vec::new());
    };
    let strings = section_bytes(
        data,
        sections
            .get(dynamic.link as usize)
            .context("bad .dynamic link")?,
    )?;
    let entries = section_bytes(data, dynamic)?;
    let mut needed = Vec::new();
    for entry in entries.chunks_exact(16) {
        let tag = read_u64(entry, 0)?;
        let value = read_u64(entry, 8)?;
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(string_at(strings, usize::try_from(value)?)?),
            _ => {}
        }
    }
    Ok(needed)
}

/// `depends=` of a kernel module's `.modinfo` (module names, possibly none).
pub fn module_depends(data: &[u8]) -> anyhow::Result<Vec<String>> {
    let Some(modinfo) = section_by_name(data, ".modinfo")? else {
        bail!("kernel module without .modinfo");
    };
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|name| !name.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_needed_libraries_of_a_host_program() {
        // /bin/ls on Debian links libc (and more): compare with what the dynamic loader says.
        let data = std::fs::read("/bin/ls").unwrap();
        let needed = needed_libraries(&data).unwrap();
        assert!(needed.contains(&"libc.so.6".to_owned()), "{needed:?}");
    }

    #[test]
    fn rejects_non_elf() {
        assert!(needed_libraries(b"#!/bin/sh\n").is_err());
        assert!(section_by_name(&[0x7f, b'E', b'L', b'F', 2, 1], ".x").is_err());
    }
}
