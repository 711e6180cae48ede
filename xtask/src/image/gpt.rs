//! A GUID partition table written into a disk image file: protective MBR, primary header and
//! entries, backup entries and header. Hand-written (about a page, per the UEFI spec chapter 5)
//! because the `gpt` crate draws random partition GUIDs, which would break reproducibility.

use anyhow::{bail, ensure};

pub const SECTOR: u64 = 512;
const ENTRY_COUNT: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors the entry array takes (128 * 128 bytes).
const ENTRY_SECTORS: u64 = ENTRY_COUNT * ENTRY_SIZE / SECTOR;

/// EFI system partition.
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Microsoft basic data (a plain FAT data partition).
pub const TYPE_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

#[derive(Debug, Clone)]
pub struct Partition {
    pub name: String,
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: u64,
    /// Inclusive, as GPT stores it.
    pub last_lba: u64,
}

/// A GUID in its on-disk byte order (first three fields little endian) from the usual text form.
pub fn guid(text: &str) -> anyhow::Result<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    ensure!(hex.len() == 32, "GUID {text} has {} hex digits", hex.len());
    let mut bytes = [0u8; 16];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16)?;
    }
    bytes[0..4].reverse();
    bytes[4..6].reverse();
    bytes[6..8].reverse();
    Ok(bytes)
}

/// A stable, random-looking GUID (version 4 layout) derived from `seed`.
pub fn derived_guid(seed: &str) -> [u8; 16] {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(seed.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[7] = (bytes[7] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// CRC-32 (IEEE 802.3, reflected), as GPT headers and entry arrays use.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// First LBA partitions may use (after MBR, header and entries).
pub fn first_usable_lba() -> u64 {
    2 + ENTRY_SECTORS
}

/// Last LBA partitions may use on a disk of `total_sectors`.
pub fn last_usable_lba(total_sectors: u64) -> u64 {
    total_sectors - 2 - ENTRY_SECTORS
}

/// Writes the partition table structures into `disk` (the whole image, `disk.len()` a multiple
/// of 512); partition contents are the caller's.
pub fn write(disk: &mut [u8], disk_guid: [u8; 16], partitions: &[Partition]) -> anyhow::Result<()> {
    let total = disk.len() as u64 / SECTOR;
    ensure!(
        disk.len() as u64 % SECTOR == 0,
        "disk size is not a multiple of 512"
    );
    ensure!(
        partitions.len() as u64 <= ENTRY_COUNT,
        "too many partitions"
    );
    for partition in partitions {
        if partition.first_lba < first_usable_lba()
            || partition.last_lba > last_usable_lba(total)
            || partition.last_lba < partition.first_lba
        {
            bail!("partition {} lies outside the usable area", partition.name);
        }
    }

    // Protective MBR: one partition of type 0xEE covering the disk.
    let mbr = &mut disk[..512];
    mbr.fill(0);
    let entry = &mut mbr[446..462];
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    entry[4] = 0xee;
    entry[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(total - 1).unwrap_or(u32::MAX);
    entry[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;

    let mut entries = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (index, partition) in partitions.iter().enumerate() {
        let entry = &mut entries[index * ENTRY_SIZE as usize..(index + 1) * ENTRY_SIZE as usize];
        entry[0..16].copy_from_slice(&partition.type_guid);
        entry[16..32].copy_from_slice(&partition.unique_guid);
        entry[32..40].copy_from_slice(&partition.first_lba.to_le_bytes());
        entry[40..48].copy_from_slice(&partition.last_lba.to_le_bytes());
        let name: Vec<u16> = partition.name.encode_utf16().collect();
        ensure!(
            name.len() <= 36,
            "partition name {} is too long",
            partition.name
        );
        for (unit_index, unit) in name.iter().enumerate() {
            entry[56 + unit_index * 2..58 + unit_index * 2].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let entries_crc = crc32(&entries);

    let primary_entries = 2;
    let backup_entries = total - 1 - ENTRY_SECTORS;
    for (header_lba, other_lba, entries_lba) in [
        (1, total - 1, primary_entries),
        (total - 1, 1, backup_entries),
    ] {
        let mut header = [0u8; 92];
        header[0..8].copy_from_slice(b"EFI PART");
        header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        header[12..16].copy_from_slice(&92u32.to_le_bytes());
        header[24..32].copy_from_slice(&header_lba.to_le_bytes());
        header[32..40].copy_from_slice(&other_lba.to_le_bytes());
        header[40..48].copy_from_slice(&first_usable_lba().to_le_bytes());
        header[48..56].copy_from_slice(&last_usable_lba(total).to_le_bytes());
        header[56..72].copy_from_slice(&disk_guid);
        header[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        header[80..84].copy_from_slice(&(ENTRY_COUNT as u32).to_le_bytes());
        header[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        header[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let header_crc = crc32(&header);
        header[16..20].copy_from_slice(&header_crc.to_le_bytes());

        let at = (header_lba * SECTOR) as usize;
        disk[at..at + 512].fill(0);
        disk[at..at + 92].copy_from_slice(&header);
        let at = (entries_lba * SECTOR) as usize;
        disk[at..at + entries.len()].copy_from_slice(&entries);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn crc32_known_answer() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guid_byte_order_matches_the_spec_example() {
        // UEFI spec: the ESP GUID's first bytes on disk are 28 73 2A C1 1F F8 D2 11.
        assert_eq!(
            guid(TYPE_ESP).unwrap(),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert!(guid("1234").is_err());
    }

    /// util-linux sfdisk reads the table back (it checks both CRCs and the backup).
    #[test]
    fn sfdisk_reads_the_table() {
        let mut disk = vec![0u8; 8 << 20];
        let partitions = [
            Partition {
                name: "ESP".into(),
                type_guid: guid(TYPE_ESP).unwrap(),
                unique_guid: derived_guid("esp"),
                first_lba: 2048,
                last_lba: 2048 + 4096 - 1,
            },
            Partition {
                name: "APPCONFIG".into(),
                type_guid: guid(TYPE_BASIC_DATA).unwrap(),
                unique_guid: derived_guid("config"),
                first_lba: 2048 + 4096,
                last_lba: 2048 + 4096 + 2048 - 1,
            },
        ];
        write(&mut disk, derived_guid("disk"), &partitions).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, &disk).unwrap();
        let output = Command::new("/usr/sbin/sfdisk")
            .arg("--json")
            .arg(&path)
            .output()
            .expect("sfdisk (package fdisk, installed by xtask setup)");
        let json = String::from_utf8_lossy(&output.stdout);
        let warnings = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{warnings}");
        assert!(!warnings.contains("corrupt"), "{warnings}");
        assert!(json.contains("\"label\": \"gpt\""), "{json}");
        assert!(json.contains("\"name\": \"APPCONFIG\""), "{json}");
        assert!(
            json.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            "{json}"
        );
        assert!(json.contains("\"start\": 6144, \"size\": 2048"), "{json}");
    }
}
