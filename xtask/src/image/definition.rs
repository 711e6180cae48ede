//! `image/image.toml`: what goes into the appliance image, as data.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// The parsed `image/image.toml` (plus the paths of the files it names).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Time stamped on every file of the image (SOURCE_DATE_EPOCH in the environment wins).
    pub source_date_epoch: u64,
    pub kernel: KernelDefinition,
    pub packages: PackagesDefinition,
    #[serde(default, rename = "program")]
    pub programs: Vec<ProgramDefinition>,
    pub disk: DiskDefinition,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelDefinition {
    /// Kernel package or metapackage (resolved through apt to the current ABI package).
    pub package: String,
    /// File (relative to `image/`) listing the modules to load.
    pub modules: PathBuf,
    pub cmdline: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesDefinition {
    pub busybox: String,
    pub systemd_boot: String,
    /// Packages the `[[program]]`s and their shared libraries come from.
    #[serde(default)]
    pub extra: Vec<String>,
}

/// An ELF program copied from an extra package, with the shared libraries it needs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramDefinition {
    pub package: String,
    /// Path inside the package (and inside the image).
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDefinition {
    pub esp_mib: u64,
    pub config_mib: u64,
    pub tries: u32,
}

impl Definition {
    /// Reads `<image_dir>/image.toml`.
    pub fn load(image_dir: &Path) -> anyhow::Result<Self> {
        let path = image_dir.join("image.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The pinned time: SOURCE_DATE_EPOCH from the environment, else the definition's.
    pub fn epoch(&self) -> anyhow::Result<u64> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(value) => value
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number")),
            Err(_) => Ok(self.source_date_epoch),
        }
    }
}

/// Module names from a modules list: one per line, `#` comments and blank lines ignored.
pub fn parse_module_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_definition_parses() {
        let image_dir = crate::workspace_root().join("image");
        let definition = Definition::load(&image_dir).unwrap();
        assert!(definition.disk.tries >= 1);
        let modules = std::fs::read_to_string(image_dir.join(&definition.kernel.modules)).unwrap();
        let modules = parse_module_list(&modules);
        assert!(modules.contains(&"virtio_net".to_owned()));
        assert!(modules.contains(&"tun".to_owned()));
    }

    #[test]
    fn module_list_skips_comments_and_blanks() {
        assert_eq!(
            parse_module_list("# c\n\n tun  # vpn\nveth\n"),
            vec!["tun".to_owned(), "veth".to_owned()]
        );
    }
}
