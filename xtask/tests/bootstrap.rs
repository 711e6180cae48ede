//! `cargo xtask setup` must build on a machine that has only stable Rust: it is what installs the
//! eBPF toolchain (the nightly's rust-src, bpf-linker). So nothing xtask compiles may run an eBPF
//! build script. This walks cargo's resolved dependency graph from xtask over normal and build
//! dependencies (dev-dependencies are not built for `cargo xtask`) and fails if it reaches
//! vpn-daemon, vpn-ebpf, aya-build or any crate with aya-build as a build-dependency.
//!
//! It runs in tier 1 (`cargo test --workspace --exclude vpn-tests --exclude vpn-ebpf`).

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use serde_json::Value;

/// Crates whose build needs the eBPF toolchain, by name, and why.
const EBPF_CRATES: &[(&str, &str)] = &[
    (
        "vpn-daemon",
        "its build script builds vpn-ebpf (nightly rust-src, bpf-linker)",
    ),
    (
        "vpn-ebpf",
        "the eBPF programs (bpfel-unknown-none, nightly)",
    ),
    ("aya-build", "runs the nightly cargo and bpf-linker"),
];

/// `cargo metadata --format-version 1` of this workspace, with the resolved graph.
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            manifest,
        ])
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("parsing cargo metadata")
}

struct Graph {
    /// Package id → its `packages[]` entry.
    packages: BTreeMap<String, Value>,
    /// Package id → ids of the packages it depends on as a normal or build dependency.
    built_deps: BTreeMap<String, Vec<String>>,
}

impl Graph {
    fn new(metadata: &Value) -> Graph {
        let packages = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|package| (id(package), package.clone()))
            .collect();
        let built_deps = metadata["resolve"]["nodes"]
            .as_array()
            .expect("resolve.nodes (cargo metadata without --no-deps)")
            .iter()
            .map(|node| {
                let deps = node["deps"]
                    .as_array()
                    .expect("node deps")
                    .iter()
                    .filter(|dep| {
                        // kind null is a normal dependency; "dev" ones are not built for xtask.
                        dep["dep_kinds"]
                            .as_array()
                            .expect("dep_kinds")
                            .iter()
                            .any(|kind| {
                                kind["kind"].is_null() || kind["kind"].as_str() == Some("build")
                            })
                    })
                    .map(|dep| dep["pkg"].as_str().expect("dep pkg").to_owned())
                    .collect();
                (id(node), deps)
            })
            .collect();
        Graph {
            packages,
            built_deps,
        }
    }

    /// The workspace member called `name`.
    fn member(&self, metadata: &Value, name: &str) -> String {
        metadata["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .filter_map(Value::as_str)
            .find(|member| self.name(member) == name)
            .unwrap_or_else(|| panic!("{name} is not a workspace member"))
            .to_owned()
    }

    fn name(&self, id: &str) -> &str {
        self.packages[id]["name"].as_str().expect("package name")
    }

    /// Why building this package needs the eBPF toolchain, if it does.
    fn needs_ebpf_toolchain(&self, id: &str) -> Option<String> {
        let name = self.name(id);
        if let Some((_, why)) = EBPF_CRATES
            .iter()
            .find(|(crate_name, _)| *crate_name == name)
        {
            return Some(format!("{name}: {why}"));
        }
        self.packages[id]["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .any(|dep| dep["kind"].as_str() == Some("build") && dep["name"] == "aya-build")
            .then(|| format!("{name}: has aya-build as a build-dependency"))
    }

    /// Every package `from` reaches over normal and build dependencies, each with one path
    /// (package names, `from` first) by which it is reached.
    fn reachable(&self, from: &str) -> BTreeMap<String, Vec<String>> {
        let mut paths = BTreeMap::from([(from.to_owned(), vec![self.name(from).to_owned()])]);
        let mut queue = vec![from.to_owned()];
        let mut seen = BTreeSet::from([from.to_owned()]);
        while let Some(current) = queue.pop() {
            for dep in &self.built_deps[&current] {
                if seen.insert(dep.clone()) {
                    let mut path = paths[&current].clone();
                    path.push(self.name(dep).to_owned());
                    paths.insert(dep.clone(), path);
                    queue.push(dep.clone());
                }
            }
        }
        paths
    }

    /// "path: reason" for each reachable package that needs the eBPF toolchain.
    fn ebpf_reachable_from(&self, from: &str) -> Vec<String> {
        self.reachable(from)
            .iter()
            .filter_map(|(id, path)| {
                self.needs_ebpf_toolchain(id)
                    .map(|reason| format!("{} ({reason})", path.join(" -> ")))
            })
            .collect()
    }
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("package id").to_owned()
}

#[test]
fn xtask_builds_without_the_ebpf_toolchain() {
    let metadata = metadata();
    let graph = Graph::new(&metadata);
    let xtask = graph.member(&metadata, "xtask");

    // The walk must see what it is meant to guard: xtask links the harness library, and the
    // check does flag vpn-daemon (its build script runs aya-build).
    let reached: BTreeSet<&str> = graph
        .reachable(&xtask)
        .keys()
        .map(|id| graph.name(id))
        .collect();
    assert!(
        reached.contains("vpn-tests"),
        "xtask no longer reaches vpn-tests? {reached:?}"
    );
    let daemon = graph.member(&metadata, "vpn-daemon");
    assert!(
        graph.needs_ebpf_toolchain(&daemon).is_some(),
        "vpn-daemon is expected to have aya-build as a build-dependency"
    );

    let offending = graph.ebpf_reachable_from(&xtask);
    assert!(
        offending.is_empty(),
        "xtask must build with stable Rust alone (`cargo xtask setup` installs the eBPF \
         toolchain), but its normal/build dependencies reach crates that need it:\n  {}\n\
         Make the dependency a dev-dependency, or move the code xtask needs out of that crate.",
        offending.join("\n  ")
    );
}
