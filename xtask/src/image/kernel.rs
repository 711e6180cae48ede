//! The Debian kernel as a build input: the bzImage, the uncompressed vmlinux (PVH entry, the
//! fastest direct boot under TCG) cut out of it, and the module set closed over dependencies.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use super::elf;

/// The kernel files of an unpacked `linux-image-*` package.
#[derive(Debug)]
pub struct Kernel {
    /// `uname -r`, e.g. `6.1.0-56-amd64`.
    pub release: String,
    pub bzimage: PathBuf,
    pub modules_dir: PathBuf,
}

impl Kernel {
    pub fn from_package_root(root: &Path) -> anyhow::Result<Self> {
        let modules_root = root.join("lib/modules");
        let release = std::fs::read_dir(&modules_root)
            .with_context(|| format!("reading {}", modules_root.display()))?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .next()
            .context("kernel package without lib/modules/<release>")?;
        let bzimage = root.join(format!("boot/vmlinuz-{release}"));
        if !bzimage.exists() {
            bail!("{} is missing", bzimage.display());
        }
        Ok(Self {
            modules_dir: modules_root.join(&release),
            release,
            bzimage,
        })
    }

    /// The modules to load, dependencies first, each with its `.ko` file. Module names treat `-`
    /// and `_` alike, as the kernel does.
    pub fn resolve_modules(&self, wanted: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let mut index = BTreeMap::new();
        index_modules(&self.modules_dir.join("kernel"), &mut index)?;
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut visiting = BTreeSet::new();
        for name in wanted {
            visit(
                &normalise(name),
                &index,
                &mut done,
                &mut visiting,
                &mut order,
            )?;
        }
        Ok(order)
    }
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path.file_name().and_then(|name| name.to_str()) {
            if let Some(stem) = name.strip_suffix(".ko") {
                index.insert(normalise(stem), path.clone());
            }
        }
    }
    Ok(())
}

fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    done: &mut BTreeSet<String>,
    visiting: &mut BTreeSet<String>,
    order: &mut Vec<(String, PathBuf)>,
) -> anyhow::Result<()> {
    if done.contains(name) {
        return Ok(());
    }
    if !visiting.insert(name.to_owned()) {
        bail!("module dependency cycle through {name}");
    }
    let path = index
        .get(name)
        .with_context(|| format!("kernel module {name} not found (built in, or misspelt?)"))?;
    let data = std::fs::read(path)?;
    for dependency in
        elf::module_depends(&data).with_context(|| format!("reading {}", path.display()))?
    {
        visit(&normalise(&dependency), index, done, visiting, order)?;
    }
    visiting.remove(name);
    done.insert(name.to_owned());
    order.push((name.to_owned(), path.clone()));
    Ok(())
}

/// The uncompressed kernel ELF inside a bzImage (found through the setup header's
/// `payload_offset`/`payload_length`, decompressed with the matching host tool).
pub fn extract_vmlinux(bzimage: &[u8]) -> anyhow::Result<Vec<u8>> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        bail!("not a bzImage (no HdrS setup header)");
    }
    let setup_sectors = match bzimage.get(0x1f1).copied().context("bzImage truncated")? {
        0 => 4,
        sectors => usize::from(sectors),
    };
    let field = |at: usize| -> anyhow::Result<usize> {
        let bytes = bzimage.get(at..at + 4).context("bzImage truncated")?;
        Ok(u32::from_le_bytes(bytes.try_into()?) as usize)
    };
    let start = (setup_sectors + 1) * 512 + field(0x248)?;
    let payload = bzimage
        .get(start..start + field(0x24c)?)
        .context("bzImage payload out of bounds")?;
    let decompressor: &[&str] = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => &["xz", "-dc", "--single-stream"],
        [0x28, 0xb5, 0x2f, 0xfd, ..] => &["zstd", "-dc"],
        [0x1f, 0x8b, ..] => &["gzip", "-dc"],
        _ => bail!("unknown bzImage payload compression"),
    };
    let mut child = Command::new(decompressor[0])
        .args(&decompressor[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", decompressor[0]))?;
    let mut stdin = child.stdin.take().context("decompressor stdin")?;
    let payload = payload.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let output = child.wait_with_output()?;
    // Trailing bytes after the stream make some decompressors complain: judge by the output.
    let _ = writer.join();
    let vmlinux = output.stdout;
    if vmlinux.get(..4) != Some(b"\x7fELF".as_slice()) {
        bail!(
            "decompressed bzImage payload is not an ELF ({})",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(vmlinux)
}
