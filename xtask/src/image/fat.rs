//! FAT file systems built in memory with the `fatfs` crate: the FAT32 ESP and the small config
//! partition. Without fatfs's `chrono` feature every timestamp is 1980-01-01 00:00, so the bytes
//! depend only on the files.

use std::io::{Cursor, Write as _};

use anyhow::Context as _;

/// A FAT volume of `size` bytes holding `files` (path with `/` separators, contents).
pub fn build(
    size: u64,
    fat32: bool,
    label: &str,
    volume_id: u32,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<Vec<u8>> {
    let mut volume_label = [b' '; 11];
    for (slot, byte) in volume_label.iter_mut().zip(label.bytes()) {
        *slot = byte;
    }
    let mut options = fatfs::FormatVolumeOptions::new()
        .volume_id(volume_id)
        .volume_label(volume_label);
    if fat32 {
        // FAT32 needs at least 65525 clusters: 512-byte clusters make that from 32 MiB up.
        options = options
            .fat_type(fatfs::FatType::Fat32)
            .bytes_per_cluster(512);
    }
    let mut disk = Cursor::new(vec![0u8; usize::try_from(size)?]);
    fatfs::format_volume(&mut disk, options).context("formatting FAT")?;
    disk.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .context("opening the new FAT")?;
        for (path, data) in files {
            let root = fs.root_dir();
            let path = path.trim_start_matches('/');
            if let Some((parent, _)) = path.rsplit_once('/') {
                let mut prefix = String::new();
                for component in parent.split('/') {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(component);
                    if root.open_dir(&prefix).is_err() {
                        root.create_dir(&prefix)
                            .with_context(|| format!("creating {prefix}"))?;
                    }
                }
            }
            let mut file = root
                .create_file(path)
                .with_context(|| format!("creating {path}"))?;
            file.truncate()?;
            file.write_all(data)
                .with_context(|| format!("writing {path} ({} bytes): volume full?", data.len()))?;
        }
        fs.unmount().context("closing the FAT")?;
    }
    let mut image = disk.into_inner();
    fix_dot_entries(&mut image)?;
    Ok(image)
}

/// The geometry of a FAT volume, from its boot sector.
struct Layout {
    bytes_per_cluster: usize,
    fat_offset: usize,
    /// Byte offset of cluster 2.
    data_offset: usize,
    /// FAT12/16: the fixed root directory region; FAT32: None (the root is a cluster chain).
    fixed_root: Option<(usize, usize)>,
    root_cluster: u32,
    fat_bits: u32,
}

impl Layout {
    fn read(image: &[u8]) -> anyhow::Result<Self> {
        let u16_at = |at: usize| -> anyhow::Result<usize> {
            let bytes = image.get(at..at + 2).context("FAT boot sector truncated")?;
            Ok(usize::from(u16::from_le_bytes([bytes[0], bytes[1]])))
        };
        let u32_at = |at: usize| -> anyhow::Result<usize> {
            let bytes = image.get(at..at + 4).context("FAT boot sector truncated")?;
            Ok(u32::from_le_bytes(bytes.try_into()?) as usize)
        };
        let bytes_per_sector = u16_at(11)?;
        let sectors_per_cluster = usize::from(*image.get(13).context("truncated")?);
        let reserved = u16_at(14)?;
        let fats = usize::from(*image.get(16).context("truncated")?);
        let root_entries = u16_at(17)?;
        let total = match u16_at(19)? {
            0 => u32_at(32)?,
            total => total,
        };
        let fat_sectors = match u16_at(22)? {
            0 => u32_at(36)?,
            sectors => sectors,
        };
        let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let first_data = reserved + fats * fat_sectors + root_sectors;
        let clusters = (total - first_data) / sectors_per_cluster;
        let fat_bits = match clusters {
            0..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        };
        let root_offset = (reserved + fats * fat_sectors) * bytes_per_sector;
        Ok(Self {
            bytes_per_cluster: bytes_per_sector * sectors_per_cluster,
            fat_offset: reserved * bytes_per_sector,
            data_offset: first_data * bytes_per_sector,
            fixed_root: (fat_bits != 32).then_some((root_offset, root_sectors * bytes_per_sector)),
            root_cluster: if fat_bits == 32 {
                u32_at(44)? as u32
            } else {
                0
            },
            fat_bits,
        })
    }

    /// The FAT entry of `cluster` (the next cluster, or an end/free marker).
    fn next(&self, image: &[u8], cluster: u32) -> Option<u32> {
        let c = cluster as usize;
        let (value, end) = match self.fat_bits {
            32 => {
                let at = self.fat_offset + c * 4;
                let bytes = image.get(at..at + 4)?;
                (
                    u32::from_le_bytes(bytes.try_into().ok()?) & 0x0fff_ffff,
                    0x0fff_fff8,
                )
            }
            16 => {
                let at = self.fat_offset + c * 2;
                let bytes = image.get(at..at + 2)?;
                (u32::from(u16::from_le_bytes([bytes[0], bytes[1]])), 0xfff8)
            }
            _ => {
                let at = self.fat_offset + c + c / 2;
                let bytes = image.get(at..at + 2)?;
                let pair = u32::from(u16::from_le_bytes([bytes[0], bytes[1]]));
                (if c % 2 == 1 { pair >> 4 } else { pair & 0xfff }, 0xff8)
            }
        };
        (2..end).contains(&value).then_some(value)
    }

    /// Byte ranges of the cluster chain starting at `cluster`.
    fn chain(&self, image: &[u8], cluster: u32) -> Vec<(usize, usize)> {
        let mut ranges = Vec::new();
        let mut current = Some(cluster);
        while let Some(cluster) = current {
            if ranges.len() > image.len() / self.bytes_per_cluster {
                break; // a loop in the FAT; never from our own writer
            }
            let start = self.data_offset + (cluster as usize - 2) * self.bytes_per_cluster;
            ranges.push((start, self.bytes_per_cluster));
            current = self.next(image, cluster);
        }
        ranges
    }
}

const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0f;

fn entry_cluster(entry: &[u8]) -> u32 {
    u32::from(u16::from_le_bytes([entry[20], entry[21]])) << 16
        | u32::from(u16::from_le_bytes([entry[26], entry[27]]))
}

fn set_entry_cluster(entry: &mut [u8], cluster: u32) {
    entry[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    entry[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
}

/// fatfs 0.3 writes a long-name entry in front of each `.` and `..`, and points `..` of a
/// top-level directory at the FAT32 root cluster instead of 0: fsck.fat rejects both. Rewrites
/// every subdirectory so that `.` and `..` are its first two entries with the right clusters.
fn fix_dot_entries(image: &mut [u8]) -> anyhow::Result<()> {
    let layout = Layout::read(image)?;
    let root_ranges = match layout.fixed_root {
        Some(range) => vec![range],
        None => layout.chain(image, layout.root_cluster),
    };
    let mut pending = vec![(root_ranges, 0u32, true)];
    while let Some((ranges, parent, is_root)) = pending.pop() {
        let mut entries: Vec<[u8; 32]> = Vec::new();
        'read: for &(start, length) in &ranges {
            for chunk in image
                .get(start..start + length)
                .context("directory outside the volume")?
                .chunks_exact(32)
            {
                if chunk[0] == 0 {
                    break 'read;
                }
                entries.push(chunk.try_into()?);
            }
        }
        let own_cluster = match ranges.first() {
            Some(&(start, _)) if !is_root => {
                ((start - layout.data_offset) / layout.bytes_per_cluster) as u32 + 2
            }
            _ => 0,
        };
        // Subdirectories to visit, with this directory as their parent (0 for the root).
        for entry in &entries {
            let is_dot = entry[0] == b'.';
            if entry[11] != ATTR_LONG_NAME
                && entry[11] & ATTR_DIRECTORY != 0
                && !is_dot
                && entry[0] != 0xe5
            {
                let child = entry_cluster(entry);
                pending.push((layout.chain(image, child), own_cluster, false));
            }
        }
        if is_root {
            continue;
        }
        // Drop `.`/`..` and their long-name entries, then put fresh ones first.
        let mut kept: Vec<[u8; 32]> = Vec::new();
        let mut long_names: Vec<[u8; 32]> = Vec::new();
        let mut dot_template = None;
        for entry in entries {
            if entry[11] == ATTR_LONG_NAME {
                long_names.push(entry);
                continue;
            }
            if &entry[..11] == b".          " || &entry[..11] == b"..         " {
                dot_template = Some(entry);
                long_names.clear();
                continue;
            }
            kept.append(&mut long_names);
            kept.push(entry);
        }
        let mut dot = dot_template.context("subdirectory without . entry")?;
        dot[..11].copy_from_slice(b".          ");
        dot[11] = ATTR_DIRECTORY;
        set_entry_cluster(&mut dot, own_cluster);
        let mut dotdot = dot;
        dotdot[..11].copy_from_slice(b"..         ");
        set_entry_cluster(&mut dotdot, parent);
        let mut bytes: Vec<u8> = [dot, dotdot]
            .iter()
            .chain(&kept)
            .flatten()
            .copied()
            .collect();
        for &(start, length) in &ranges {
            let take = bytes.len().min(length);
            let region = &mut image[start..start + length];
            region.fill(0);
            region[..take].copy_from_slice(&bytes[..take]);
            bytes.drain(..take);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("EFI/BOOT/BOOTX64.EFI".into(), vec![7u8; 3000]),
            (
                "loader/entries/appliance-a.conf".into(),
                b"title x\n".to_vec(),
            ),
            ("loader/loader.conf".into(), b"timeout 0\n".to_vec()),
        ]
    }

    #[test]
    fn fat32_round_trip_is_deterministic_and_fsck_clean() {
        let image = build(33 << 20, true, "ESP", 0x1234_5678, &files()).unwrap();
        assert_eq!(
            image,
            build(33 << 20, true, "ESP", 0x1234_5678, &files()).unwrap()
        );

        let fs =
            fatfs::FileSystem::new(Cursor::new(image.clone()), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        let mut text = String::new();
        fs.root_dir()
            .open_file("loader/entries/appliance-a.conf")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "title x\n");
        drop(fs);
        assert_fsck_clean(&image);
    }

    /// The small FAT12 config partition with a subdirectory (certificates under pki/).
    #[test]
    fn fat12_with_subdirectory_is_fsck_clean() {
        let files = vec![
            ("site.toml".to_owned(), b"version = 1\n".to_vec()),
            ("pki/ca.crt".to_owned(), vec![b'x'; 5000]),
        ];
        let image = build(4 << 20, false, "APPCONFIG", 7, &files).unwrap();
        assert_fsck_clean(&image);
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat12);
        assert_eq!(fs.volume_label(), "APPCONFIG");
        let mut data = Vec::new();
        fs.root_dir()
            .open_file("pki/ca.crt")
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(data.len(), 5000);
    }

    fn assert_fsck_clean(image: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fat.img");
        std::fs::write(&path, image).unwrap();
        let output = std::process::Command::new("/usr/sbin/fsck.fat")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("fsck.fat (package dosfstools, installed by xtask setup)");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{report}");
        assert!(!report.contains("Expected a valid"), "{report}");
    }

    #[test]
    fn too_much_data_is_an_error() {
        let big = vec![("big".to_owned(), vec![0u8; 2 << 20])];
        assert!(build(1 << 20, false, "X", 1, &big).is_err());
    }
}
