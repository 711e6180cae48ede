//! `cargo xtask build-image`: the flashable appliance disk image and the direct-boot artifacts.
//!
//! Inputs: Debian packages named in `image/image.toml` (fetched with `apt-get download` into
//! `<target>/image-cache`, unpacked with `dpkg-deb -x`, never installed), the init scripts in
//! `image/init/`, the module list `image/modules.list`, and `vpn-daemon` built static.
//! Outputs in `<target>/image/` (see [`ImageArtifacts`]): `vmlinux`, `bzImage`,
//! `initramfs.cpio.zst`, `cmdline`, `appliance.efi`, `appliance-bad.efi` and `disk.img`.
//! Equal inputs give bit-identical outputs: every timestamp is pinned, every listing sorted.
//!
//! Disk layout (GPT): `ESP` (FAT32: systemd-boot as `EFI/BOOT/BOOTX64.EFI`, the UKI twice as
//! `EFI/appliance/slot-{a,b}.efi`, `loader/loader.conf`, `loader/entries/appliance-{a,b}.conf`)
//! and `APPCONFIG` (FAT, the site config).

pub mod boot;
pub mod check;
mod cpio;
mod debs;
mod definition;
mod elf;
mod fat;
mod gpt;
mod kernel;
mod uki;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};
use sha2::Digest as _;

use crate::{run_command, step, workspace_root};
use definition::Definition;

/// The Rust target the daemon is built for, linked static (`+crt-static`, glibc): the image
/// needs no libc for it. (The musl target would be the usual choice, but vpn-daemon's
/// io/udp_batch.rs passes glibc's msghdr/mmsghdr field types, which differ on musl.) Schema v1
/// takes IP addresses only, so static glibc's lack of NSS (hostname lookup) costs nothing.
pub const DAEMON_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The target-specific RUSTFLAGS variable, so build scripts and the eBPF build are unaffected.
const DAEMON_RUSTFLAGS_VAR: &str = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS";

/// What to put on the config partition, and where to write the outputs.
#[derive(Debug, Default, Clone)]
pub struct ImageOptions {
    /// Site TOML copied onto the APPCONFIG partition as `site.toml` (None: partition left empty).
    pub config: Option<PathBuf>,
    /// Network file (see image/README.md) copied onto APPCONFIG as `network`.
    pub network: Option<PathBuf>,
    /// More files copied flat onto APPCONFIG (certificates and keys the TOML names relatively).
    pub extra_files: Vec<PathBuf>,
    /// Output directory; None means [`default_output_dir`].
    pub out_dir: Option<PathBuf>,
}

/// Paths of everything `build` produced (all inside `dir`, with fixed names).
#[derive(Debug, Clone)]
pub struct ImageArtifacts {
    pub dir: PathBuf,
    /// Uncompressed kernel ELF with a PVH entry: `qemu -kernel` boots it fastest.
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    /// The appliance initramfs (zstd-compressed newc cpio).
    pub initramfs: PathBuf,
    /// Kernel command line for direct boot (also in `<dir>/cmdline`).
    pub cmdline: String,
    /// The UKI (kernel + initramfs + cmdline): what goes into a slot, what `appliance-update` takes.
    pub uki: PathBuf,
    /// A UKI whose init exits at once: for proving the automatic fallback.
    pub uki_bad: PathBuf,
    /// The same appliance as `uki` but a different file (`appliance.image=next` on its command
    /// line, printed in APPLIANCE-BOOT): for proving a successful update.
    pub uki_next: PathBuf,
    /// The flashable GPT disk image.
    pub disk: PathBuf,
    pub disk_sha256: String,
    /// The appliance version (the workspace version).
    pub version: String,
}

/// `<target>/image`: `$CARGO_TARGET_DIR/image`, or `<workspace>/target/image`.
pub fn default_output_dir() -> PathBuf {
    target_dir().join("image")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The `cargo xtask build-image` entry: builds and prints path, size and checksum.
pub fn run(options: &ImageOptions) -> anyhow::Result<()> {
    let artifacts = build(options)?;
    let size = std::fs::metadata(&artifacts.disk)?.len();
    println!("image:     {}", artifacts.disk.display());
    println!(
        "size:      {size} bytes ({:.1} MiB)",
        size as f64 / f64::from(1u32 << 20)
    );
    println!("sha256:    {}", artifacts.disk_sha256);
    println!("vmlinux:   {}", artifacts.vmlinux.display());
    println!("initramfs: {}", artifacts.initramfs.display());
    println!("uki:       {}", artifacts.uki.display());
    println!("cmdline:   {}", artifacts.cmdline);
    println!(
        "version:   {} (all outputs in {})",
        artifacts.version,
        artifacts.dir.display()
    );
    Ok(())
}

/// Builds every artifact (see the module docs). Idempotent; downloads are cached.
pub fn build(options: &ImageOptions) -> anyhow::Result<ImageArtifacts> {
    let image_dir = workspace_root().join("image");
    let definition = Definition::load(&image_dir)?;
    let epoch = definition.epoch()?;
    let cache = target_dir().join("image-cache");
    let out = options.out_dir.clone().unwrap_or_else(default_output_dir);
    std::fs::create_dir_all(&out)?;
    let scratch = tempfile::tempdir_in(&out)?;
    let version = env!("CARGO_PKG_VERSION").to_owned();

    let packages = step("image: fetch Debian packages", || {
        let kernel_package = debs::resolve_kernel_package(&definition.kernel.package)?;
        let mut names = vec![
            kernel_package,
            definition.packages.busybox.clone(),
            definition.packages.systemd_boot.clone(),
        ];
        names.extend(definition.packages.extra.iter().cloned());
        let packages = debs::fetch_all(&cache, &names)?;
        for package in &packages[..3] {
            println!("  {} {}", package.name, package.version);
        }
        Ok(packages)
    })?;
    let kernel = kernel::Kernel::from_package_root(&packages[0].root)?;
    let busybox = std::fs::read(packages[1].root.join("bin/busybox"))
        .context("busybox-static without bin/busybox")?;
    let boot_root = packages[2].root.join("usr/lib/systemd/boot/efi");
    let extra = &packages[3..];

    let daemon = step("image: build vpn-daemon (release, static)", build_daemon)?;

    let initramfs = step("image: initramfs", || {
        let module_list = std::fs::read_to_string(image_dir.join(&definition.kernel.modules))?;
        let modules = kernel.resolve_modules(&definition::parse_module_list(&module_list))?;
        println!(
            "  kernel {}: {} modules (with dependencies)",
            kernel.release,
            modules.len()
        );
        let mut archive = base_archive(&busybox);
        archive.file("/init", std::fs::read(image_dir.join("init/init"))?, 0o755);
        archive.file(
            "/lib/appliance/lib.sh",
            std::fs::read(image_dir.join("init/lib.sh"))?,
            0o644,
        );
        for tool in ["appliance-update", "appliance-bless"] {
            archive.file(
                &format!("/sbin/{tool}"),
                std::fs::read(image_dir.join("init").join(tool))?,
                0o755,
            );
        }
        let mut order = String::new();
        for (name, path) in &modules {
            archive.file(
                &format!("/lib/modules/{name}.ko"),
                std::fs::read(path)?,
                0o644,
            );
            order.push_str(name);
            order.push('\n');
        }
        archive.file("/lib/modules/load.order", order.into_bytes(), 0o644);
        archive.file("/usr/sbin/vpn-daemon", daemon.clone(), 0o755);
        add_programs(&mut archive, &definition, extra)?;
        archive.file(
            "/etc/appliance/version",
            format!("{version}\n").into_bytes(),
            0o644,
        );
        archive.file(
            "/etc/appliance/tries",
            format!("{}\n", definition.disk.tries).into_bytes(),
            0o644,
        );
        archive.file("/etc/os-release", os_release(&version).into_bytes(), 0o644);
        for directory in ["/etc/keepalived", "/config", "/mnt", "/tmp", "/root"] {
            archive.directory(directory);
        }
        let raw = archive.to_bytes(epoch);
        println!("  {:.1} MiB uncompressed", raw.len() as f64 / 1048576.0);
        zstd_cached(&cache, &raw)
    })?;
    let bad_initramfs = {
        let mut archive = base_archive(&busybox);
        archive.file(
            "/init",
            std::fs::read(image_dir.join("init/bad-init"))?,
            0o755,
        );
        zstd_cached(&cache, &archive.to_bytes(epoch))?
    };

    let artifacts = ImageArtifacts {
        vmlinux: out.join("vmlinux"),
        bzimage: out.join("bzImage"),
        initramfs: out.join("initramfs.cpio.zst"),
        cmdline: definition.kernel.cmdline.clone(),
        uki: out.join("appliance.efi"),
        uki_bad: out.join("appliance-bad.efi"),
        uki_next: out.join("appliance-next.efi"),
        disk: out.join("disk.img"),
        disk_sha256: String::new(),
        version: version.clone(),
        dir: out.clone(),
    };
    let bzimage = std::fs::read(&kernel.bzimage)?;
    write_if_changed(&artifacts.bzimage, &bzimage)?;
    step("image: vmlinux (direct boot)", || {
        write_if_changed(&artifacts.vmlinux, &kernel::extract_vmlinux(&bzimage)?)
    })?;
    write_if_changed(&artifacts.initramfs, &initramfs)?;
    write_if_changed(
        &out.join("cmdline"),
        format!("{}\n", artifacts.cmdline).as_bytes(),
    )?;
    let bad_initramfs_path = scratch.path().join("bad-initramfs");
    std::fs::write(&bad_initramfs_path, bad_initramfs)?;

    step("image: UKIs", || {
        let stub = boot_root.join("linuxx64.efi.stub");
        let os_release = os_release(&version);
        let next_cmdline = format!("{} appliance.image=next", artifacts.cmdline);
        for (initrd, cmdline, output) in [
            (&artifacts.initramfs, &artifacts.cmdline, &artifacts.uki),
            (&artifacts.initramfs, &next_cmdline, &artifacts.uki_next),
            (&bad_initramfs_path, &artifacts.cmdline, &artifacts.uki_bad),
        ] {
            let built = scratch.path().join("uki.efi");
            uki::build(
                &uki::UkiInputs {
                    stub: &stub,
                    os_release: &os_release,
                    cmdline,
                    kernel: &artifacts.bzimage,
                    initrd,
                },
                &built,
                epoch,
                scratch.path(),
            )?;
            write_if_changed(output, &std::fs::read(&built)?)?;
        }
        Ok(())
    })?;

    let disk = step("image: GPT disk", || {
        let uki = std::fs::read(&artifacts.uki)?;
        let systemd_boot = std::fs::read(boot_root.join("systemd-bootx64.efi"))?;
        let esp_files = esp_files(&systemd_boot, &uki);
        let config_files = config_files(options)?;
        build_disk(&definition, &esp_files, &config_files)
    })?;
    write_if_changed(&artifacts.disk, &disk)?;
    let disk_sha256 = hex(&sha2::Sha256::digest(&disk));
    Ok(ImageArtifacts {
        disk_sha256,
        ..artifacts
    })
}

/// What every initramfs has: busybox, the console device (the kernel opens it for init before
/// devtmpfs exists) and the mount points.
fn base_archive(busybox: &[u8]) -> cpio::Archive {
    let mut archive = cpio::Archive::new();
    archive.file("/bin/busybox", busybox.to_vec(), 0o755);
    archive.symlink("/bin/sh", "busybox");
    archive.char_device("/dev/console", 0o600, 5, 1);
    for directory in ["/proc", "/sys", "/run", "/sbin", "/usr/bin", "/usr/sbin"] {
        archive.directory(directory);
    }
    archive.file(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        0o644,
    );
    archive.file("/etc/group", b"root:x:0:\n".to_vec(), 0o644);
    archive.file(
        "/etc/profile",
        b"export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='appliance# '\n".to_vec(),
        0o644,
    );
    archive
}

fn os_release(version: &str) -> String {
    format!(
        "NAME=\"VPN appliance\"\nID=vpn-appliance\nVERSION_ID={version}\nPRETTY_NAME=\"VPN appliance {version}\"\n"
    )
}

/// Builds `vpn-daemon` statically linked in release mode and returns it stripped.
fn build_daemon() -> anyhow::Result<Vec<u8>> {
    run_command(
        Command::new("cargo")
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "vpn-daemon",
                "--bin",
                "vpn-daemon",
            ])
            .args(["--target", DAEMON_TARGET])
            .env(DAEMON_RUSTFLAGS_VAR, "-C target-feature=+crt-static")
            .current_dir(workspace_root()),
    )?;
    let binary = target_dir().join(DAEMON_TARGET).join("release/vpn-daemon");
    // eBPF logging is for debug builds; a release object must not carry it (say, a leftover
    // VPN_EBPF_LOG=1 in the environment).
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let version = String::from_utf8_lossy(&version.stdout);
    if !version.contains("eBPF logging: not compiled in") {
        bail!(
            "{} has eBPF logging compiled in (unset VPN_EBPF_LOG): {version}",
            binary.display()
        );
    }
    let stripped = binary.with_file_name("vpn-daemon.stripped");
    run_command(
        Command::new("objcopy")
            .arg("--strip-all")
            .arg(&binary)
            .arg(&stripped),
    )?;
    let data = std::fs::read(&stripped)?;
    if !elf::needed_libraries(&data)?.is_empty() {
        bail!("{} is not static", binary.display());
    }
    Ok(data)
}

/// The `[[program]]`s with the shared libraries they need (closed over DT_NEEDED), found in the
/// extra packages, under /lib/x86_64-linux-gnu, plus the dynamic loader.
fn add_programs(
    archive: &mut cpio::Archive,
    definition: &Definition,
    packages: &[debs::Package],
) -> anyhow::Result<()> {
    if definition.programs.is_empty() {
        return Ok(());
    }
    let mut libraries: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut pending: Vec<String> = Vec::new();
    for program in &definition.programs {
        let package = packages
            .iter()
            .find(|package| package.name == program.package)
            .with_context(|| {
                format!(
                    "program {} from unlisted package {}",
                    program.path, program.package
                )
            })?;
        let data = std::fs::read(package.root.join(&program.path))
            .with_context(|| format!("{} has no {}", program.package, program.path))?;
        pending.extend(elf::needed_libraries(&data)?);
        archive.file(&format!("/{}", program.path), data, 0o755);
    }
    pending.push("ld-linux-x86-64.so.2".to_owned());
    while let Some(soname) = pending.pop() {
        if libraries.contains_key(&soname) {
            continue;
        }
        let path = find_library(packages, &soname)?;
        let data = std::fs::read(&path)?;
        pending.extend(elf::needed_libraries(&data)?);
        libraries.insert(soname, path);
    }
    for (soname, path) in &libraries {
        archive.file(
            &format!("/lib/x86_64-linux-gnu/{soname}"),
            std::fs::read(path)?,
            0o755,
        );
    }
    archive.symlink(
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    );
    println!(
        "  {} shared libraries for {} program(s)",
        libraries.len(),
        definition.programs.len()
    );
    Ok(())
}

fn find_library(packages: &[debs::Package], soname: &str) -> anyhow::Result<PathBuf> {
    for package in packages {
        for dir in [
            "lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu",
            "lib",
            "usr/lib",
        ] {
            let candidate = package.root.join(dir).join(soname);
            if candidate.symlink_metadata().is_ok() {
                let resolved = candidate
                    .canonicalize()
                    .with_context(|| format!("dangling {}", candidate.display()))?;
                if !resolved.starts_with(&package.root) {
                    bail!("{} points outside its package", candidate.display());
                }
                return Ok(resolved);
            }
        }
    }
    bail!("no extra package in image/image.toml provides {soname}: add its Debian package")
}

/// The ESP's files: systemd-boot, the same UKI in both slots, the loader config and one entry
/// per slot. Entries carry `sort-key` and `version`: systemd-boot sorts the highest version
/// first, entries without tries left last, and boots the first (`default appliance-*`).
fn esp_files(systemd_boot: &[u8], uki: &[u8]) -> Vec<(String, Vec<u8>)> {
    let entry = |slot: &str, version: u32| {
        format!(
            "title VPN appliance (slot {slot})\nsort-key appliance\nversion {version}\nefi /EFI/appliance/slot-{slot}.efi\n"
        )
        .into_bytes()
    };
    vec![
        ("EFI/BOOT/BOOTX64.EFI".into(), systemd_boot.to_vec()),
        ("EFI/appliance/slot-a.efi".into(), uki.to_vec()),
        ("EFI/appliance/slot-b.efi".into(), uki.to_vec()),
        (
            "loader/loader.conf".into(),
            b"timeout 0\ndefault appliance-*\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n"
                .to_vec(),
        ),
        ("loader/entries/appliance-a.conf".into(), entry("a", 1)),
        ("loader/entries/appliance-b.conf".into(), entry("b", 0)),
    ]
}

fn config_files(options: &ImageOptions) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut add = |name: String, path: &Path| -> anyhow::Result<()> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        files.push((name, data));
        Ok(())
    };
    if let Some(config) = &options.config {
        add("site.toml".into(), config)?;
    }
    if let Some(network) = &options.network {
        add("network".into(), network)?;
    }
    for extra in &options.extra_files {
        let name = extra
            .file_name()
            .with_context(|| format!("{} has no file name", extra.display()))?
            .to_string_lossy()
            .into_owned();
        add(name, extra)?;
    }
    files.sort();
    Ok(files)
}

const MIB: u64 = 1 << 20;

/// The whole disk: 1 MiB for the GPT, the ESP, APPCONFIG, 1 MiB for the backup GPT.
fn build_disk(
    definition: &Definition,
    esp_files: &[(String, Vec<u8>)],
    config_files: &[(String, Vec<u8>)],
) -> anyhow::Result<Vec<u8>> {
    let esp_size = definition.disk.esp_mib * MIB;
    let config_size = definition.disk.config_mib * MIB;
    let payload: u64 = esp_files.iter().map(|(_, data)| data.len() as u64).sum();
    if payload + MIB > esp_size {
        bail!(
            "the ESP files take {:.1} MiB: raise [disk] esp_mib ({}) in image/image.toml",
            payload as f64 / MIB as f64,
            definition.disk.esp_mib
        );
    }
    let esp = fat::build(esp_size, true, "ESP", 0x5650_4e41, esp_files)?;
    let config = fat::build(config_size, false, "APPCONFIG", 0x5650_4e43, config_files)?;

    let total = MIB + esp_size + config_size + MIB;
    let mut disk = vec![0u8; usize::try_from(total)?];
    let esp_first = MIB / gpt::SECTOR;
    let config_first = esp_first + esp_size / gpt::SECTOR;
    let partitions = [
        gpt::Partition {
            name: "ESP".into(),
            type_guid: gpt::guid(gpt::TYPE_ESP)?,
            unique_guid: gpt::derived_guid("vpn-appliance/ESP"),
            first_lba: esp_first,
            last_lba: config_first - 1,
        },
        gpt::Partition {
            name: "APPCONFIG".into(),
            type_guid: gpt::guid(gpt::TYPE_BASIC_DATA)?,
            unique_guid: gpt::derived_guid("vpn-appliance/APPCONFIG"),
            first_lba: config_first,
            last_lba: config_first + config_size / gpt::SECTOR - 1,
        },
    ];
    let esp_at = usize::try_from(esp_first * gpt::SECTOR)?;
    disk[esp_at..esp_at + esp.len()].copy_from_slice(&esp);
    let config_at = usize::try_from(config_first * gpt::SECTOR)?;
    disk[config_at..config_at + config.len()].copy_from_slice(&config);
    gpt::write(
        &mut disk,
        gpt::derived_guid("vpn-appliance/disk"),
        &partitions,
    )?;
    Ok(disk)
}

/// An update medium: a GPT disk with one FAT partition named `APPUPDATE` holding `update.efi`
/// (and `update-tries` when `tries` is given). Attached to a running appliance (a second virtio
/// disk in VMs, a USB stick on hardware), init installs the UKI into the inactive slot and
/// reboots into it. (qemu fw_cfg cannot carry it: the guest driver reads it byte by byte,
/// restarting from the beginning for every page, which never ends for 20 MB.)
pub fn build_update_disk(uki: &Path, tries: Option<u32>, out: &Path) -> anyhow::Result<()> {
    let mut files = vec![(
        "update.efi".to_owned(),
        std::fs::read(uki).with_context(|| format!("reading {}", uki.display()))?,
    )];
    if let Some(tries) = tries {
        files.push(("update-tries".to_owned(), format!("{tries}\n").into_bytes()));
    }
    let payload: u64 = files.iter().map(|(_, data)| data.len() as u64).sum();
    // FAT16 with room for the directory and FAT tables.
    let volume_size = (payload + payload / 8 + 2 * MIB).div_ceil(MIB) * MIB;
    let volume = fat::build(volume_size, false, "APPUPDATE", 0x5650_4e55, &files)?;
    let mut disk = vec![0u8; usize::try_from(MIB + volume_size + MIB)?];
    let first = MIB / gpt::SECTOR;
    disk[usize::try_from(MIB)?..usize::try_from(MIB + volume_size)?].copy_from_slice(&volume);
    gpt::write(
        &mut disk,
        gpt::derived_guid("vpn-appliance/update-disk"),
        &[gpt::Partition {
            name: "APPUPDATE".into(),
            type_guid: gpt::guid(gpt::TYPE_BASIC_DATA)?,
            unique_guid: gpt::derived_guid("vpn-appliance/APPUPDATE"),
            first_lba: first,
            last_lba: first + volume_size / gpt::SECTOR - 1,
        }],
    )?;
    write_if_changed(out, &disk)
}

/// [`zstd`] through a cache keyed by the input's sha256: level 19 takes a minute or more on a
/// busy 2-core machine, and the output is a pure function of the input.
fn zstd_cached(cache: &Path, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let dir = cache.join("zstd");
    let path = dir.join(format!("{}.zst", hex(&sha2::Sha256::digest(data))));
    if let Ok(compressed) = std::fs::read(&path) {
        return Ok(compressed);
    }
    let compressed = zstd(data)?;
    std::fs::create_dir_all(&dir)?;
    write_if_changed(&path, &compressed)?;
    Ok(compressed)
}

/// zstd -19, single-threaded (deterministic); the Debian kernel unpacks zstd initramfs, and
/// level 19 keeps two UKIs on a 48 MiB ESP with room for an update.
fn zstd(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("zstd")
        .args(["-q", "-19", "-T1", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting zstd")?;
    let mut stdin = child.stdin.take().context("zstd stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("zstd writer panicked"))??;
    if !output.status.success() {
        bail!("zstd failed: {}", output.status);
    }
    Ok(output.stdout)
}

/// Writes `data` unless the file already holds it (keeps mtimes of unchanged outputs).
fn write_if_changed(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, data)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    Ok(hex(&sha2::Sha256::digest(std::fs::read(path)?)))
}
