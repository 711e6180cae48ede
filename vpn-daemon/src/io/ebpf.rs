//! Loads the appliance's eBPF object, attaches its programs and keeps its maps in step with the
//! daemon's state. Maps are pinned under `/sys/fs/bpf/<node>/` so `bpftool map dump pinned ...`
//! can inspect them; everything is detached and unpinned again on shutdown.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf,
};
use vpn_common::{
    wan::{TunnelPortKey, WanCounter, TUNNEL_PORTS_MAP, WAN_COUNTERS_MAP, XDP_WAN_PROGRAM},
    BPF_FS_ROOT,
};

use crate::config;

/// The eBPF object built by build.rs from `vpn-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpn-ebpf"));

/// `statfs.f_type` of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The XDP program on the WAN NIC and its maps.
pub struct WanFilter {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    interface: String,
    attached_mode: &'static str,
    pin_dir: PathBuf,
    tunnel_ports: BTreeSet<TunnelPortKey>,
}

impl WanFilter {
    /// Loads the object, attaches `xdp_wan` to `interface` and pins its maps for node `node`.
    pub fn attach(node: &str, interface: &str, mode: config::XdpMode) -> anyhow::Result<Self> {
        ensure_bpffs_mounted()?;
        let pin_dir = Path::new(BPF_FS_ROOT).join(node);
        remove_pin_dir(&pin_dir).context("removing stale pins of an earlier run")?;

        let mut ebpf = Ebpf::load(EBPF_OBJECT).context("loading the eBPF object")?;
        let program = wan_program(&mut ebpf)?;
        program
            .load()
            .with_context(|| format!("loading {XDP_WAN_PROGRAM} into the kernel"))?;
        let (link, attached_mode) = attach_xdp(program, interface, mode)?;

        std::fs::create_dir_all(&pin_dir)
            .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
        for name in [TUNNEL_PORTS_MAP, WAN_COUNTERS_MAP] {
            map(&ebpf, name)?
                .pin(pin_dir.join(name))
                .with_context(|| format!("pinning {name} in {}", pin_dir.display()))?;
        }
        tracing::info!(interface, mode = attached_mode, pin_dir = %pin_dir.display(), "XDP attached to WAN");
        Ok(Self {
            ebpf,
            link: Some(link),
            interface: interface.to_owned(),
            attached_mode,
            pin_dir,
            tunnel_ports: BTreeSet::new(),
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn attached_mode(&self) -> &'static str {
        self.attached_mode
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Makes the kernel's tunnel-port map equal `wanted`: removes stale keys, adds missing ones.
    pub fn set_tunnel_ports(&mut self, wanted: &BTreeSet<TunnelPortKey>) -> anyhow::Result<()> {
        let mut map: HashMap<&mut MapData, TunnelPortKey, u8> =
            HashMap::try_from(map_mut(&mut self.ebpf, TUNNEL_PORTS_MAP)?)?;
        for stale in self.tunnel_ports.difference(wanted) {
            map.remove(stale)
                .with_context(|| format!("removing tunnel port {stale:?}"))?;
        }
        for missing in wanted.difference(&self.tunnel_ports) {
            map.insert(missing, 1, 0)
                .with_context(|| format!("adding tunnel port {missing:?}"))?;
        }
        self.tunnel_ports = wanted.clone();
        Ok(())
    }

    /// Every WAN counter, summed over CPUs, by its stable name.
    pub fn counters(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map(&self.ebpf, WAN_COUNTERS_MAP)?)?;
        WanCounter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu = counters
                    .get(&(counter as u32), 0)
                    .with_context(|| format!("reading counter {}", counter.name()))?;
                Ok((counter.name().to_owned(), per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Detaches the program and removes the pins. Dropping does the same, logging failures.
    pub fn detach(mut self) -> anyhow::Result<()> {
        self.release()
    }

    fn release(&mut self) -> anyhow::Result<()> {
        if let Some(link) = self.link.take() {
            wan_program(&mut self.ebpf)?
                .detach(link)
                .with_context(|| format!("detaching XDP from {}", self.interface))?;
            remove_pin_dir(&self.pin_dir)?;
            tracing::info!(interface = %self.interface, "XDP detached from WAN, pins removed");
        }
        Ok(())
    }
}

impl Drop for WanFilter {
    fn drop(&mut self) {
        if let Err(error) = self.release() {
            tracing::error!(error = %format!("{error:#}"), "releasing the WAN filter");
        }
    }
}

fn wan_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(XDP_WAN_PROGRAM)
        .ok_or_else(|| anyhow!("eBPF object has no program {XDP_WAN_PROGRAM}"))?
        .try_into()?)
}

fn map<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a Map> {
    ebpf.map(name)
        .ok_or_else(|| anyhow!("eBPF object has no map {name}"))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no map {name}"))
}

fn attach_xdp(
    program: &mut Xdp,
    interface: &str,
    mode: config::XdpMode,
) -> anyhow::Result<(XdpLinkId, &'static str)> {
    let attach = |program: &mut Xdp, mode: XdpMode| {
        program
            .attach(interface, mode)
            .with_context(|| format!("attaching XDP to {interface} in {mode:?} mode"))
    };
    match mode {
        config::XdpMode::Native => Ok((attach(program, XdpMode::Driver)?, "native")),
        config::XdpMode::Generic => Ok((attach(program, XdpMode::Skb)?, "generic")),
        config::XdpMode::Auto => match attach(program, XdpMode::Driver) {
            Ok(link) => Ok((link, "native")),
            Err(native_error) => {
                tracing::info!(interface, error = %format!("{native_error:#}"), "native XDP unavailable, using generic");
                Ok((attach(program, XdpMode::Skb)?, "generic"))
            }
        },
    }
}

/// Mounts a bpf filesystem on /sys/fs/bpf unless one is there (a fresh appliance or a
/// `ip netns exec` mount namespace has none).
fn ensure_bpffs_mounted() -> anyhow::Result<()> {
    let root = CString::new(BPF_FS_ROOT).expect("constant has no NUL");
    // SAFETY: `root` is a valid C string and `stat` a properly sized, writable statfs buffer.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statfs only writes into `stat`.
    if unsafe { libc::statfs(root.as_ptr(), &mut stat) } == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    {
        return Ok(());
    }
    let fstype = CString::new("bpf").expect("constant has no NUL");
    // SAFETY: all pointers are valid C strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            root.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting the bpf filesystem on {BPF_FS_ROOT}: {}",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!("mounted bpf filesystem on {BPF_FS_ROOT}");
    Ok(())
}

/// Removes our pins and the node's pin directory; a missing directory is success.
fn remove_pin_dir(dir: &Path) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}
