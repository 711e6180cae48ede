//! Debian packages as build inputs: `apt-get download` into a cache under the target directory and
//! `dpkg-deb -x` into a per-version tree. Nothing is installed on the build host.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// One unpacked package.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Where its files were unpacked (the package's `/`).
    pub root: PathBuf,
}

/// Downloads (if not cached) and unpacks `name` at the archive's candidate version.
pub fn fetch(cache: &Path, name: &str) -> anyhow::Result<Package> {
    let version = candidate_version(name)?;
    let safe_version = version.replace(':', "%3a");
    let download_dir = cache.join("debs").join(name).join(&safe_version);
    let root = cache.join("root").join(format!("{name}_{safe_version}"));
    let unpacked_marker = root.join(".unpacked");
    if unpacked_marker.exists() {
        return Ok(Package {
            name: name.to_owned(),
            version,
            root,
        });
    }
    std::fs::create_dir_all(&download_dir)?;
    let deb = match find_deb(&download_dir)? {
        Some(deb) => deb,
        None => {
            println!("image: apt-get download {name}={version}");
            let output = Command::new("apt-get")
                .args(["download", "-q"])
                .arg(format!("{name}={version}"))
                .current_dir(&download_dir)
                .output()
                .context("running apt-get download")?;
            if !output.status.success() {
                bail!(
                    "apt-get download {name}={version} failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            find_deb(&download_dir)?
                .with_context(|| format!("apt-get download {name} left no .deb"))?
        }
    };
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    crate::run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::write(&unpacked_marker, b"")?;
    Ok(Package {
        name: name.to_owned(),
        version,
        root,
    })
}

/// The concrete kernel package a metapackage like `linux-image-amd64` points at today.
pub fn resolve_kernel_package(name: &str) -> anyhow::Result<String> {
    let depends = capture(Command::new("apt-cache").args(["depends", "--important", name]))?;
    let target = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|dependency| dependency.starts_with("linux-image-"));
    Ok(target.unwrap_or(name).to_owned())
}

fn candidate_version(name: &str) -> anyhow::Result<String> {
    let show = capture(Command::new("apt-cache").args(["show", "--no-all-versions", name]))?;
    show.lines()
        .find_map(|line| line.strip_prefix("Version: "))
        .map(|version| version.trim().to_owned())
        .with_context(|| format!("apt-cache knows no version of {name} (apt-get update?)"))
}

fn find_deb(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn capture(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
