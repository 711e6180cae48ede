//! A `newc` cpio archive (the initramfs format) written from memory: entries sorted by path,
//! inode numbers in that order, owner root, one fixed mtime, so equal contents give equal bytes.
//! Hand-written: the format is a 110-byte ASCII header per entry (see the kernel's
//! Documentation/driver-api/early-userspace/buffer-format.rst).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Directory,
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

/// An initramfs under construction; paths are absolute-looking (`/bin/busybox`) or relative,
/// stored without the leading `/`. Parent directories are created on the way.
#[derive(Debug, Default)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn directory(&mut self, path: &str) {
        let path = clean(path);
        self.parents(&path);
        self.nodes.insert(path, Node::Directory);
    }

    /// A regular file with permission bits `mode` (e.g. 0o755).
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        let path = clean(path);
        self.parents(&path);
        self.nodes.insert(path, Node::File { data, mode });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = clean(path);
        self.parents(&path);
        self.nodes.insert(
            path,
            Node::Symlink {
                target: target.to_owned(),
            },
        );
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        let path = clean(path);
        self.parents(&path);
        self.nodes
            .insert(path, Node::CharDevice { mode, major, minor });
    }

    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(&clean(path))
    }

    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            self.nodes.entry(prefix.clone()).or_insert(Node::Directory);
        }
    }

    /// The archive bytes; every entry gets `mtime`.
    pub fn to_bytes(&self, mtime: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (index, (path, node)) in self.nodes.iter().enumerate() {
            let inode = index as u32 + 1;
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match node {
                Node::Directory => (S_IFDIR | 0o755, 2, &[], (0, 0)),
                Node::File { data, mode } => (S_IFREG | mode, 1, data.as_slice(), (0, 0)),
                Node::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
                Node::CharDevice { mode, major, minor } => {
                    (S_IFCHR | mode, 1, &[], (*major, *minor))
                }
            };
            write_entry(&mut out, path, inode, mode, nlink, mtime, data, rdev);
        }
        write_entry(&mut out, "TRAILER!!!", 0, 0, 1, 0, &[], (0, 0));
        out
    }
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

#[allow(clippy::too_many_arguments)]
fn write_entry(
    out: &mut Vec<u8>,
    name: &str,
    inode: u32,
    mode: u32,
    nlink: u32,
    mtime: u64,
    data: &[u8],
    rdev: (u32, u32),
) {
    let fields = [
        inode,
        mode,
        0, // uid
        0, // gid
        nlink,
        mtime as u32,
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check (newc has none)
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn sample() -> Archive {
        let mut archive = Archive::new();
        archive.file("/bin/tool", b"#!/bin/sh\necho hi\n".to_vec(), 0o755);
        archive.symlink("/sbin/tool", "/bin/tool");
        archive.file("/etc/deep/file.txt", b"x".to_vec(), 0o644);
        archive.char_device("/dev/console", 0o600, 5, 1);
        archive
    }

    #[test]
    fn same_contents_same_bytes_and_parents_come_first() {
        let first = sample().to_bytes(1_700_000_000);
        assert_eq!(first, sample().to_bytes(1_700_000_000));
        assert_ne!(first, sample().to_bytes(1));
        let text = String::from_utf8_lossy(&first);
        let etc = text.find("etc\0").unwrap();
        let deep = text.find("etc/deep\0").unwrap();
        let file = text.find("etc/deep/file.txt\0").unwrap();
        assert!(etc < deep && deep < file);
        assert!(first.len() % 4 == 0);
    }

    /// GNU cpio (if installed) must list and extract what we wrote, with our modes and mtime.
    #[test]
    fn gnu_cpio_reads_it() {
        if Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("skipped: GNU cpio not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, sample().to_bytes(1_700_000_000)).unwrap();
        let output = Command::new("cpio")
            .args(["-itv", "--quiet", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(output.status.success());
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(listing.contains("-rwxr-xr-x"), "{listing}");
        assert!(listing.contains("bin/tool"), "{listing}");
        assert!(listing.contains("sbin/tool -> /bin/tool"), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
        assert!(
            listing.contains("2023"),
            "mtime 1700000000 is in 2023: {listing}"
        );
    }
}
