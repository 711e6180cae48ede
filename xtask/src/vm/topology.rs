//! Topology files (`tests/vm/topologies/*.toml`): which VMs boot, their NICs, the LAN segments
//! (one [`super::wire::Hub`] each) and what each guest gets through fw_cfg. Every file carries an
//! ASCII drawing that must name every VM and segment, so the picture cannot drift from the wiring.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context as _};
use serde::Deserialize;

/// What a VM boots.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VmKind {
    /// The appliance kernel + initramfs, direct boot, site config via fw_cfg.
    Appliance,
    /// The same kernel + initramfs without a site config: a plain Linux machine on a LAN.
    Host,
    /// The flashable disk image through UEFI firmware (config from its APPCONFIG partition).
    Disk,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    description: String,
    drawing: String,
    vm: Vec<VmFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmFile {
    name: String,
    kind: VmKind,
    #[serde(default)]
    config: Option<PathBuf>,
    #[serde(default)]
    files: Vec<PathBuf>,
    #[serde(default)]
    network: String,
    nic: Vec<Nic>,
    #[serde(default)]
    memory_mib: Option<u32>,
}

/// One NIC: the segment it is cabled to and the name the guest gives it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub segment: String,
    pub name: String,
}

/// One VM of a topology, paths resolved.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub name: String,
    pub kind: VmKind,
    /// The site TOML (fw_cfg `opt/appliance/config`).
    pub config: Option<PathBuf>,
    /// More files for /config (fw_cfg `opt/appliance/<file name>`).
    pub files: Vec<PathBuf>,
    /// The /config/network text, without the `link` lines [`Topology::network_file`] adds.
    pub network: String,
    pub nics: Vec<Nic>,
    pub memory_mib: u32,
}

/// A parsed and checked topology.
#[derive(Clone, Debug)]
pub struct Topology {
    pub name: String,
    pub description: String,
    pub drawing: String,
    pub vms: Vec<VmSpec>,
}

/// Guest memory when a VM does not say: enough for the daemon and UEFI (which needs 256).
const DEFAULT_MEMORY_MIB: u32 = 256;

impl Topology {
    /// The directory of the shipped topologies.
    pub fn directory() -> PathBuf {
        crate::workspace_root().join("tests/vm/topologies")
    }

    /// Loads `<directory>/<name>.toml`.
    pub fn load(name: &str) -> anyhow::Result<Topology> {
        Topology::load_path(&Topology::directory().join(format!("{name}.toml")))
    }

    pub fn load_path(path: &Path) -> anyhow::Result<Topology> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .context("topology file name")?;
        let base = path.parent().unwrap_or(Path::new("."));
        Topology::parse(name, &text, base).with_context(|| format!("in {}", path.display()))
    }

    /// Parses a topology; relative file names resolve against `base`.
    pub fn parse(name: &str, text: &str, base: &Path) -> anyhow::Result<Topology> {
        let file: TopologyFile = toml::from_str(text)?;
        ensure!(!file.vm.is_empty(), "a topology needs at least one [[vm]]");
        let mut vms: Vec<VmSpec> = Vec::new();
        for vm in file.vm {
            check_name("vm", &vm.name)?;
            ensure!(
                !vms.iter().any(|other| other.name == vm.name),
                "two VMs are named {:?}",
                vm.name
            );
            ensure!(!vm.nic.is_empty(), "vm {:?} has no nic", vm.name);
            match (vm.kind, &vm.config) {
                (VmKind::Appliance, None) => {
                    bail!("appliance {:?} needs a site config", vm.name)
                }
                (VmKind::Host | VmKind::Disk, Some(_)) => bail!(
                    "vm {:?}: only appliances take `config` (hosts have none, disks carry theirs)",
                    vm.name
                ),
                _ => {}
            }
            ensure!(
                vm.kind != VmKind::Disk || (vm.network.is_empty() && vm.files.is_empty()),
                "vm {:?}: a disk VM reads network and files from its APPCONFIG partition",
                vm.name
            );
            for nic in &vm.nic {
                check_name("segment", &nic.segment)?;
                ensure!(
                    (1..=15).contains(&nic.name.len())
                        && nic.name.bytes().all(|b| b.is_ascii_alphanumeric()),
                    "vm {:?}: NIC name {:?} is not an interface name",
                    vm.name,
                    nic.name
                );
                ensure!(
                    vm.nic.iter().filter(|other| other.name == nic.name).count() == 1,
                    "vm {:?} has two NICs named {:?}",
                    vm.name,
                    nic.name
                );
            }
            ensure!(
                !vm.network
                    .lines()
                    .any(|line| line.trim_start().starts_with("link ")),
                "vm {:?}: `link` lines come from the nic list, do not write them",
                vm.name
            );
            vms.push(VmSpec {
                config: vm.config.map(|path| base.join(path)),
                files: vm.files.iter().map(|path| base.join(path)).collect(),
                memory_mib: vm.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
                name: vm.name,
                kind: vm.kind,
                network: vm.network,
                nics: vm.nic,
            });
        }
        let topology = Topology {
            name: name.to_owned(),
            description: file.description,
            drawing: file.drawing,
            vms,
        };
        for word in topology
            .vms
            .iter()
            .map(|vm| vm.name.as_str())
            .chain(topology.segments().keys().map(String::as_str))
        {
            ensure!(
                topology.drawing.contains(word),
                "the drawing does not show {word:?}: keep it in step with the VMs and segments"
            );
        }
        Ok(topology)
    }

    /// Every segment with the (vm index, nic index) cabled to it, in hub port order.
    pub fn segments(&self) -> BTreeMap<String, Vec<(usize, usize)>> {
        let mut segments: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        for (vm_index, vm) in self.vms.iter().enumerate() {
            for (nic_index, nic) in vm.nics.iter().enumerate() {
                segments
                    .entry(nic.segment.clone())
                    .or_default()
                    .push((vm_index, nic_index));
            }
        }
        segments
    }

    /// The MAC of a NIC: locally administered (qemu's 52:54:00 prefix), unique per VM and NIC.
    pub fn mac(vm_index: usize, nic_index: usize) -> String {
        format!(
            "52:54:00:{:02x}:{:02x}:01",
            vm_index & 0xff,
            nic_index & 0xff
        )
    }

    /// The /config/network text for a VM: `link` lines naming each NIC by its MAC, then the
    /// topology's lines.
    pub fn network_file(&self, vm_index: usize) -> String {
        let vm = &self.vms[vm_index];
        let mut text = String::from("# written by cargo xtask vm-test from the topology\n");
        for (nic_index, nic) in vm.nics.iter().enumerate() {
            text.push_str(&format!(
                "link {} {}\n",
                nic.name,
                Topology::mac(vm_index, nic_index)
            ));
        }
        text.push_str(&vm.network);
        text
    }
}

fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "{what} name {name:?}: 1-32 lowercase letters, digits and '-'"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
description = "two hosts"
drawing = "h1 --(lan)-- h2"
[[vm]]
name = "h1"
kind = "host"
network = "addr eth0 10.0.0.1/24"
nic = [{ segment = "lan", name = "eth0" }]
[[vm]]
name = "h2"
kind = "host"
nic = [{ segment = "lan", name = "eth0" }]
"#;

    #[test]
    fn every_shipped_topology_loads_and_its_files_exist() {
        let mut count = 0;
        for entry in std::fs::read_dir(Topology::directory()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                let topology = Topology::load_path(&path).unwrap();
                for vm in &topology.vms {
                    for file in vm.config.iter().chain(&vm.files) {
                        assert!(
                            file.is_file(),
                            "{}: {} missing",
                            path.display(),
                            file.display()
                        );
                    }
                }
                count += 1;
            }
        }
        assert!(count >= 2, "found only {count} topologies");
        let two_site = Topology::load("two-site").unwrap();
        let segments = two_site.segments();
        assert_eq!(
            segments.keys().collect::<Vec<_>>(),
            ["lan-a", "lan-b", "wan"]
        );
        assert_eq!(segments["wan"], vec![(0, 0), (1, 0)]);
    }

    #[test]
    fn network_file_names_nics_by_mac() {
        let topology = Topology::parse("small", SMALL, Path::new("/t")).unwrap();
        assert_eq!(
            topology.network_file(0),
            "# written by cargo xtask vm-test from the topology\n\
             link eth0 52:54:00:00:00:01\naddr eth0 10.0.0.1/24"
        );
        assert_eq!(Topology::mac(1, 2), "52:54:00:01:02:01");
    }

    #[test]
    fn mistakes_are_reported() {
        let cases = [
            (
                SMALL.replace("h1 --(lan)-- h2", "h1 -- h2"),
                "does not show \"lan\"",
            ),
            (SMALL.replace("name = \"h2\"", "name = \"h1\""), "two VMs"),
            (
                SMALL.replace("kind = \"host\"", "kind = \"appliance\""),
                "needs a site config",
            ),
            (
                SMALL.replace("network = \"addr", "network = \"link eth0 x\\naddr"),
                "`link` lines",
            ),
            (
                SMALL.replace("segment = \"lan\"", "segment = \"Lan\""),
                "segment name",
            ),
            (
                SMALL.replace("kind = \"host\"", "kind = \"host\"\ncolour = 1"),
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let error = format!(
                "{:#}",
                Topology::parse("t", &text, Path::new("/")).unwrap_err()
            );
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }
}
