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
    Ok(disk.into_inner())
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

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        std::fs::write(&path, &image).unwrap();
        let output = std::process::Command::new("/usr/sbin/fsck.fat")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("fsck.fat (package dosfstools, installed by xtask setup)");
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn too_much_data_is_an_error() {
        let big = vec![("big".to_owned(), vec![0u8; 2 << 20])];
        assert!(build(1 << 20, false, "X", 1, &big).is_err());
    }
}
