//! Loads the appliance's eBPF object, attaches its programs and keeps its maps in step with the
//! daemon's state. Maps are pinned under `/sys/fs/bpf/<node>/` so `bpftool map dump pinned ...`
//! can inspect them; everything is detached and unpinned again on shutdown.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues,
    },
    programs::{
        tc::SchedClassifierLinkId, xdp::XdpLinkId, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::nr_cpus,
    Ebpf,
};
use ipnet::IpNet;
use vpn_common::{
    leak::{LeakCounter, LEAK_COUNTERS_MAP, PROTECTED_MAP, TC_LEAK_PROGRAM},
    steer::{
        Link, LinkGroup, SteerCounter, LINK_GROUPS_MAP, LINK_PACKETS_MAP, MAX_LINKS,
        STEER_COUNTERS_MAP, STEER_ROUTES_MAP, TC_STEER_PROGRAM,
    },
    tun::{
        TunCounter, TunPrefixKey, TC_TUN_PROGRAM, TUN_ALLOWED_MAP, TUN_COUNTERS_MAP,
        TUN_IFINDEX_BITS,
    },
    user::{addr16, prefix_bits},
    wan::{
        AdmissionConfig, PeerKey, TunnelPortKey, WanCounter, ADMISSION_CONFIG_MAP,
        HANDSHAKE_BUCKET_MAP, TUNNEL_PORTS_MAP, WAN_COUNTERS_MAP, WAN_PEERS_MAP, WAN_PENDING_MAP,
        XDP_WAN_PROGRAM,
    },
    PrefixKey, BPF_FS_ROOT,
};

use crate::{
    config,
    io::ebpf_log::{load_object, EbpfLogLevel, EbpfLogReader, TracingLog, EBPF_LOG_TARGET},
    plan::fast_path::FastPathPlan,
};

/// Every map of the object; all are pinned under `/sys/fs/bpf/<node>/`.
const ALL_MAPS: [&str; 14] = [
    TUNNEL_PORTS_MAP,
    WAN_PEERS_MAP,
    WAN_PENDING_MAP,
    ADMISSION_CONFIG_MAP,
    HANDSHAKE_BUCKET_MAP,
    WAN_COUNTERS_MAP,
    TUN_ALLOWED_MAP,
    TUN_COUNTERS_MAP,
    STEER_ROUTES_MAP,
    LINK_GROUPS_MAP,
    LINK_PACKETS_MAP,
    STEER_COUNTERS_MAP,
    PROTECTED_MAP,
    LEAK_COUNTERS_MAP,
];

/// The eBPF object built by build.rs from `vpn-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpn-ebpf"));

/// `statfs.f_type` of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The eBPF fast path: XDP admission on the WAN NIC, the leak guard on WAN egress, source
/// policing on every tun, steering on LAN ingress, and the maps they share.
pub struct WanFilter {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    interface: String,
    attached_mode: &'static str,
    pin_dir: PathBuf,
    leak_link: Option<SchedClassifierLinkId>,
    /// The programs' log (debug builds), until the daemon takes it to forward it.
    log_reader: Option<EbpfLogReader<TracingLog>>,
    /// (LAN interface, link) once steering is attached.
    lan_link: Option<(String, SchedClassifierLinkId)>,
    /// tun device -> (ifindex it had when attached, link).
    tun_links: BTreeMap<String, (u32, SchedClassifierLinkId)>,
    // What the maps hold now, so that updates touch only what changed.
    tunnel_ports: BTreeMap<TunnelPortKey, u8>,
    peers: BTreeSet<PeerKey>,
    admission: Option<AdmissionConfig>,
    protected: BTreeSet<(u32, PrefixKey)>,
    tun_prefixes: BTreeSet<(u32, TunPrefixKey)>,
    steer_routes: BTreeMap<(u32, PrefixKey), u32>,
    groups: BTreeMap<u32, LinkGroup>,
    /// ifindex -> device name, for the per-link counters.
    link_counters: BTreeMap<u32, String>,
}

impl WanFilter {
    /// Loads the object, attaches `xdp_wan` to `interface` (and the leak guard to its egress),
    /// loads the tun and LAN programs for later attachment, and pins every map for node `node`.
    pub fn attach(node: &str, interface: &str, mode: config::XdpMode) -> anyhow::Result<Self> {
        ensure_bpffs_mounted()?;
        let pin_dir = Path::new(BPF_FS_ROOT).join(node);
        remove_pin_dir(&pin_dir).context("removing stale pins of an earlier run")?;

        let log_level = EbpfLogLevel::from_tracing();
        let mut ebpf = load_object(EBPF_OBJECT, log_level)?;
        let log_reader = EbpfLogReader::take(&mut ebpf, TracingLog)?;
        if log_reader.is_some() {
            tracing::info!(level = ?log_level, "eBPF logging on (debug build; RUST_LOG target {EBPF_LOG_TARGET})");
        }
        for name in [TC_LEAK_PROGRAM, TC_TUN_PROGRAM, TC_STEER_PROGRAM] {
            tc_program(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading {name} into the kernel"))?;
        }
        let program = wan_program(&mut ebpf)?;
        program
            .load()
            .with_context(|| format!("loading {XDP_WAN_PROGRAM} into the kernel"))?;
        let (link, attached_mode) = attach_xdp(program, interface, mode)?;
        let leak_link = match attach_tc(&mut ebpf, TC_LEAK_PROGRAM, interface, TcAttachType::Egress)
            .with_context(|| format!("attaching the leak guard to {interface} egress"))
        {
            Ok(link_id) => link_id,
            Err(error) => {
                let _ = wan_program(&mut ebpf)?.detach(link);
                return Err(error);
            }
        };

        let filter = Self {
            ebpf,
            link: Some(link),
            interface: interface.to_owned(),
            attached_mode,
            pin_dir,
            leak_link: Some(leak_link),
            log_reader,
            lan_link: None,
            tun_links: BTreeMap::new(),
            tunnel_ports: BTreeMap::new(),
            peers: BTreeSet::new(),
            admission: None,
            protected: BTreeSet::new(),
            tun_prefixes: BTreeSet::new(),
            steer_routes: BTreeMap::new(),
            groups: BTreeMap::new(),
            link_counters: BTreeMap::new(),
        };
        // From here on, Drop detaches whatever is attached if pinning fails.
        std::fs::create_dir_all(&filter.pin_dir)
            .with_context(|| format!("creating pin directory {}", filter.pin_dir.display()))?;
        for name in ALL_MAPS {
            map(&filter.ebpf, name)?
                .pin(filter.pin_dir.join(name))
                .with_context(|| format!("pinning {name} in {}", filter.pin_dir.display()))?;
        }
        tracing::info!(interface, mode = attached_mode, pin_dir = %filter.pin_dir.display(), "XDP and leak guard attached to WAN");
        Ok(filter)
    }

    /// The programs' log reader (debug builds only), for the caller to spawn; `None` afterwards.
    pub fn take_log_reader(&mut self) -> Option<EbpfLogReader<TracingLog>> {
        self.log_reader.take()
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

    /// Where each program is attached, for `vpn-daemon status`.
    pub fn attachments(&self) -> Vec<String> {
        let mut attached = vec![
            format!(
                "{XDP_WAN_PROGRAM} on {} ({})",
                self.interface, self.attached_mode
            ),
            format!("{TC_LEAK_PROGRAM} on {} egress", self.interface),
        ];
        if let Some((lan, _)) = &self.lan_link {
            attached.push(format!("{TC_STEER_PROGRAM} on {lan} ingress"));
        }
        for device in self.tun_links.keys() {
            attached.push(format!("{TC_TUN_PROGRAM} on {device} ingress"));
        }
        attached
    }

    fn sync_tunnel_ports(&mut self, wanted: &BTreeMap<TunnelPortKey, u8>) -> anyhow::Result<()> {
        let mut map: HashMap<&mut MapData, TunnelPortKey, u8> =
            HashMap::try_from(map_mut(&mut self.ebpf, TUNNEL_PORTS_MAP)?)?;
        for stale in self
            .tunnel_ports
            .keys()
            .filter(|key| !wanted.contains_key(key))
        {
            map.remove(stale)
                .with_context(|| format!("removing tunnel port {stale:?}"))?;
        }
        for (key, &flags) in wanted {
            if self.tunnel_ports.get(key) != Some(&flags) {
                map.insert(key, flags, 0)
                    .with_context(|| format!("adding tunnel port {key:?}"))?;
            }
        }
        self.tunnel_ports = wanted.clone();
        Ok(())
    }

    /// Starts steering on LAN ingress (idempotent).
    pub fn attach_lan(&mut self, lan: &str) -> anyhow::Result<()> {
        if self.lan_link.is_some() {
            return Ok(());
        }
        let link = attach_tc(&mut self.ebpf, TC_STEER_PROGRAM, lan, TcAttachType::Ingress)
            .with_context(|| format!("attaching steering to {lan} ingress"))?;
        tracing::info!(lan, "steering attached to LAN ingress");
        self.lan_link = Some((lan.to_owned(), link));
        Ok(())
    }

    /// Makes every map and tun attachment match `plan`. A failing step does not hold up the
    /// others (a tun that cannot be policed must not freeze the live-link map); the first error
    /// is returned and the next call retries what is still different.
    pub fn apply(&mut self, plan: &FastPathPlan) -> anyhow::Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        let mut note = |result: anyhow::Result<()>| {
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        };
        note(self.sync_tunnel_ports(&plan.tunnel_ports));
        note(self.sync_admission(plan.admission));
        note(self.sync_peers(&plan.peers));
        note(self.sync_protected(&plan.protected));
        let (ifindexes, attached) = self.sync_tun_attachments(plan);
        note(attached);
        note(self.sync_steering(plan, &ifindexes));
        note(self.sync_tun_prefixes(plan, &ifindexes));
        first_error.map_or(Ok(()), Err)
    }

    fn sync_admission(&mut self, admission: AdmissionConfig) -> anyhow::Result<()> {
        if self.admission != Some(admission) {
            let mut map: Array<&mut MapData, AdmissionConfig> =
                Array::try_from(map_mut(&mut self.ebpf, ADMISSION_CONFIG_MAP)?)?;
            map.set(0, admission, 0)
                .context("writing the admission config")?;
            self.admission = Some(admission);
        }
        Ok(())
    }

    fn sync_peers(&mut self, peers: &BTreeSet<IpAddr>) -> anyhow::Result<()> {
        let wanted: BTreeSet<PeerKey> = peers
            .iter()
            .map(|&peer| PeerKey { addr: addr16(peer) })
            .collect();
        let mut map: HashMap<&mut MapData, PeerKey, u8> =
            HashMap::try_from(map_mut(&mut self.ebpf, WAN_PEERS_MAP)?)?;
        for stale in self.peers.difference(&wanted) {
            map.remove(stale).context("removing a WAN peer")?;
        }
        for missing in wanted.difference(&self.peers) {
            map.insert(missing, 1, 0).context("adding a WAN peer")?;
        }
        if wanted != self.peers {
            tracing::info!(peers = wanted.len(), "WAN peers updated");
        }
        self.peers = wanted;
        Ok(())
    }

    fn sync_protected(&mut self, prefixes: &BTreeSet<IpNet>) -> anyhow::Result<()> {
        let wanted: BTreeSet<(u32, PrefixKey)> = prefixes
            .iter()
            .map(|prefix| {
                (
                    prefix_bits(prefix.addr(), prefix.prefix_len()),
                    PrefixKey {
                        addr: addr16(prefix.addr()),
                    },
                )
            })
            .collect();
        let mut map: LpmTrie<&mut MapData, PrefixKey, u8> =
            LpmTrie::try_from(map_mut(&mut self.ebpf, PROTECTED_MAP)?)?;
        for (bits, key) in self.protected.difference(&wanted) {
            map.remove(&Key::new(*bits, *key))
                .context("removing a protected prefix")?;
        }
        for (bits, key) in wanted.difference(&self.protected) {
            map.insert(&Key::new(*bits, *key), 1, 0)
                .context("adding a protected prefix")?;
        }
        self.protected = wanted;
        Ok(())
    }

    /// Attaches source policing to every planned tun (again if its ifindex changed, i.e. the
    /// device was re-created) and forgets devices no longer planned. Returns device -> ifindex
    /// for the devices that exist.
    fn sync_tun_attachments(
        &mut self,
        plan: &FastPathPlan,
    ) -> (BTreeMap<String, u32>, anyhow::Result<()>) {
        let mut ifindexes = BTreeMap::new();
        let mut result = Ok(());
        let devices: BTreeSet<&String> = plan
            .tun_sources
            .keys()
            .chain(plan.groups.values().flatten().map(|link| &link.device))
            .collect();
        for device in devices {
            if let Some(ifindex) = ifindex_of(device) {
                ifindexes.insert(device.clone(), ifindex);
            }
        }
        let stale: Vec<String> = self
            .tun_links
            .iter()
            .filter(|(device, (ifindex, _))| {
                !plan.tun_sources.contains_key(*device) || ifindexes.get(*device) != Some(ifindex)
            })
            .map(|(device, _)| device.clone())
            .collect();
        for device in stale {
            if let Some((_, link)) = self.tun_links.remove(&device) {
                // The device may be gone already, taking the attachment with it.
                if let Ok(program) = tc_program(&mut self.ebpf, TC_TUN_PROGRAM) {
                    let _ = program.detach(link);
                }
            }
        }
        for device in plan.tun_sources.keys() {
            let Some(&ifindex) = ifindexes.get(device) else {
                continue;
            };
            if self.tun_links.contains_key(device) {
                continue;
            }
            let attached = attach_tc(
                &mut self.ebpf,
                TC_TUN_PROGRAM,
                device,
                TcAttachType::Ingress,
            )
            .with_context(|| format!("attaching source policing to {device} ingress"));
            match attached {
                Ok(link) => {
                    tracing::info!(device, ifindex, "source policing attached to tun ingress");
                    self.tun_links.insert(device.clone(), (ifindex, link));
                    turn_off_rp_filter(device);
                }
                Err(error) => {
                    result = result.and(Err(error));
                }
            }
        }
        (ifindexes, result)
    }

    fn sync_tun_prefixes(
        &mut self,
        plan: &FastPathPlan,
        ifindexes: &BTreeMap<String, u32>,
    ) -> anyhow::Result<()> {
        let mut wanted = BTreeSet::new();
        for (device, prefixes) in &plan.tun_sources {
            let Some(&ifindex) = ifindexes.get(device) else {
                continue;
            };
            for prefix in prefixes {
                wanted.insert((
                    TUN_IFINDEX_BITS + prefix_bits(prefix.addr(), prefix.prefix_len()),
                    TunPrefixKey::new(ifindex, addr16(prefix.addr())),
                ));
            }
        }
        let mut map: LpmTrie<&mut MapData, TunPrefixKey, u8> =
            LpmTrie::try_from(map_mut(&mut self.ebpf, TUN_ALLOWED_MAP)?)?;
        for (bits, key) in self.tun_prefixes.difference(&wanted) {
            map.remove(&Key::new(*bits, *key))
                .context("removing an allowed tun source")?;
        }
        for (bits, key) in wanted.difference(&self.tun_prefixes) {
            map.insert(&Key::new(*bits, *key), 1, 0)
                .context("adding an allowed tun source")?;
        }
        self.tun_prefixes = wanted;
        Ok(())
    }

    fn sync_steering(
        &mut self,
        plan: &FastPathPlan,
        ifindexes: &BTreeMap<String, u32>,
    ) -> anyhow::Result<()> {
        // Groups first: a new route must find its group's links already there.
        let mut wanted_groups = BTreeMap::new();
        for (&id, links) in &plan.groups {
            let mut group = LinkGroup::default();
            for link in links.iter().take(MAX_LINKS) {
                let Some(&ifindex) = ifindexes.get(&link.device) else {
                    continue;
                };
                group.links[group.count as usize] = Link {
                    ifindex,
                    weight: link.weight,
                    id: link.id,
                    mtu: link.mtu,
                };
                group.count += 1;
            }
            wanted_groups.insert(id, group);
        }
        // Counters before groups: a link counts from its first steered packet.
        self.add_link_counters(plan, ifindexes)?;
        let mut groups: Array<&mut MapData, LinkGroup> =
            Array::try_from(map_mut(&mut self.ebpf, LINK_GROUPS_MAP)?)?;
        for (&id, group) in &wanted_groups {
            if self.groups.get(&id) != Some(group) {
                // One map update: the eBPF side sees the old or the new group, never a mix.
                groups.set(id, group, 0).context("writing a link group")?;
                tracing::info!(group = id, live_links = group.count, "link group updated");
            }
        }
        for (&id, _) in self
            .groups
            .iter()
            .filter(|(id, _)| !wanted_groups.contains_key(id))
        {
            groups
                .set(id, LinkGroup::default(), 0)
                .context("clearing a link group")?;
        }
        self.groups = wanted_groups;

        let wanted_routes: BTreeMap<(u32, PrefixKey), u32> = plan
            .steer_routes
            .iter()
            .map(|(prefix, &id)| {
                (
                    (
                        prefix_bits(prefix.addr(), prefix.prefix_len()),
                        PrefixKey {
                            addr: addr16(prefix.addr()),
                        },
                    ),
                    id,
                )
            })
            .collect();
        let mut routes: LpmTrie<&mut MapData, PrefixKey, u32> =
            LpmTrie::try_from(map_mut(&mut self.ebpf, STEER_ROUTES_MAP)?)?;
        for (bits, key) in self
            .steer_routes
            .keys()
            .filter(|key| !wanted_routes.contains_key(key))
        {
            routes
                .remove(&Key::new(*bits, *key))
                .context("removing a steering route")?;
        }
        for (&(bits, key), &id) in &wanted_routes {
            if self.steer_routes.get(&(bits, key)) != Some(&id) {
                routes
                    .insert(&Key::new(bits, key), id, 0)
                    .context("adding a steering route")?;
            }
        }
        self.steer_routes = wanted_routes;
        // Last: nothing steers to a removed counter's device any more.
        self.remove_stale_link_counters(ifindexes)
    }

    /// Creates the per-link packet counter of every live link that has none (the eBPF side
    /// only increments existing entries).
    fn add_link_counters(
        &mut self,
        plan: &FastPathPlan,
        ifindexes: &BTreeMap<String, u32>,
    ) -> anyhow::Result<()> {
        let new_counters: Vec<(u32, String)> = plan
            .groups
            .values()
            .flatten()
            .filter_map(|link| Some((*ifindexes.get(&link.device)?, link.device.clone())))
            .filter(|(ifindex, _)| !self.link_counters.contains_key(ifindex))
            .collect();
        if new_counters.is_empty() {
            return Ok(());
        }
        let mut packets: PerCpuHashMap<&mut MapData, u32, u64> =
            PerCpuHashMap::try_from(map_mut(&mut self.ebpf, LINK_PACKETS_MAP)?)?;
        let cpus = nr_cpus()
            .map_err(|(_, error)| error)
            .context("counting CPUs")?;
        for (ifindex, device) in new_counters {
            packets
                .insert(ifindex, PerCpuValues::try_from(vec![0u64; cpus])?, 0)
                .context("adding a link counter")?;
            self.link_counters.insert(ifindex, device);
        }
        Ok(())
    }

    /// Deletes the counters of devices that left the plan (tunnel removed) or no longer have
    /// the counter's ifindex (device re-created). A link that is only down keeps its counter
    /// while its device exists.
    fn remove_stale_link_counters(
        &mut self,
        ifindexes: &BTreeMap<String, u32>,
    ) -> anyhow::Result<()> {
        let stale: Vec<(u32, String)> = self
            .link_counters
            .iter()
            .filter(|(ifindex, device)| ifindexes.get(*device) != Some(*ifindex))
            .map(|(ifindex, device)| (*ifindex, device.clone()))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let mut packets: PerCpuHashMap<&mut MapData, u32, u64> =
            PerCpuHashMap::try_from(map_mut(&mut self.ebpf, LINK_PACKETS_MAP)?)?;
        for (ifindex, device) in stale {
            match packets.remove(&ifindex) {
                Ok(()) => {}
                // Already gone is what we want.
                Err(MapError::SyscallError(error))
                    if error.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!("removing the link counter of {device} (ifindex {ifindex})")
                    })
                }
            }
            tracing::info!(device, ifindex, "link counter removed");
            self.link_counters.remove(&ifindex);
        }
        Ok(())
    }

    /// Every WAN XDP counter, summed over CPUs, by its stable name.
    pub fn counters(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        self.sum_counters(
            WAN_COUNTERS_MAP,
            WanCounter::ALL
                .iter()
                .map(|&counter| (counter as u32, counter.name())),
        )
    }

    /// Every counter of every program, summed over CPUs: program name -> counter -> value, plus
    /// `links` (tun device -> packets steered to it).
    pub fn all_counters(&self) -> anyhow::Result<BTreeMap<String, BTreeMap<String, u64>>> {
        let mut all = BTreeMap::new();
        all.insert(XDP_WAN_PROGRAM.to_owned(), self.counters()?);
        all.insert(
            TC_TUN_PROGRAM.to_owned(),
            self.sum_counters(
                TUN_COUNTERS_MAP,
                TunCounter::ALL
                    .iter()
                    .map(|&counter| (counter as u32, counter.name())),
            )?,
        );
        all.insert(
            TC_STEER_PROGRAM.to_owned(),
            self.sum_counters(
                STEER_COUNTERS_MAP,
                SteerCounter::ALL
                    .iter()
                    .map(|&counter| (counter as u32, counter.name())),
            )?,
        );
        all.insert(
            TC_LEAK_PROGRAM.to_owned(),
            self.sum_counters(
                LEAK_COUNTERS_MAP,
                LeakCounter::ALL
                    .iter()
                    .map(|&counter| (counter as u32, counter.name())),
            )?,
        );
        let packets: PerCpuHashMap<&MapData, u32, u64> =
            PerCpuHashMap::try_from(map(&self.ebpf, LINK_PACKETS_MAP)?)?;
        let mut links = BTreeMap::new();
        for (ifindex, device) in &self.link_counters {
            if let Ok(per_cpu) = packets.get(ifindex, 0) {
                *links.entry(device.clone()).or_insert(0) += per_cpu.iter().sum::<u64>();
            }
        }
        all.insert("links".to_owned(), links);
        Ok(all)
    }

    fn sum_counters<'a>(
        &self,
        map_name: &str,
        counters: impl Iterator<Item = (u32, &'a str)>,
    ) -> anyhow::Result<BTreeMap<String, u64>> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(&self.ebpf, map_name)?)?;
        counters
            .map(|(index, name)| {
                let per_cpu = map
                    .get(&index, 0)
                    .with_context(|| format!("reading counter {name} of {map_name}"))?;
                Ok((name.to_owned(), per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Detaches every program and removes the pins. Dropping does the same, logging failures.
    pub fn detach(mut self) -> anyhow::Result<()> {
        self.release()
    }

    fn release(&mut self) -> anyhow::Result<()> {
        for (device, (_, link)) in std::mem::take(&mut self.tun_links) {
            // A tun that is gone took its attachment with it.
            if let Err(error) = tc_program(&mut self.ebpf, TC_TUN_PROGRAM)?.detach(link) {
                tracing::debug!(device, %error, "tun attachment already gone");
            }
        }
        if let Some((lan, link)) = self.lan_link.take() {
            tc_program(&mut self.ebpf, TC_STEER_PROGRAM)?
                .detach(link)
                .with_context(|| format!("detaching steering from {lan}"))?;
        }
        if let Some(link) = self.leak_link.take() {
            tc_program(&mut self.ebpf, TC_LEAK_PROGRAM)?
                .detach(link)
                .with_context(|| format!("detaching the leak guard from {}", self.interface))?;
        }
        if let Some(link) = self.link.take() {
            wan_program(&mut self.ebpf)?
                .detach(link)
                .with_context(|| format!("detaching XDP from {}", self.interface))?;
            remove_pin_dir(&self.pin_dir)?;
            tracing::info!(interface = %self.interface, "eBPF programs detached, pins removed");
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

/// Attaches the TC program `name` to `interface`. Kernels since 6.6 attach through TCX and need
/// nothing else; older ones (the appliance image's 6.1) attach through netlink, which needs a
/// clsact qdisc on the interface first: added only then, so TCX hosts keep their qdiscs as they were.
fn attach_tc(
    ebpf: &mut Ebpf,
    name: &str,
    interface: &str,
    attach_type: TcAttachType,
) -> anyhow::Result<SchedClassifierLinkId> {
    let program = tc_program(ebpf, name)?;
    match program.attach(interface, attach_type) {
        Ok(link) => Ok(link),
        Err(first_error) => {
            if let Err(error) = aya::programs::tc::qdisc_add_clsact(interface) {
                // Most likely the qdisc is there already: then the first error is the one to tell.
                tracing::debug!(interface, %error, "adding a clsact qdisc did not help");
                return Err(first_error.into());
            }
            tracing::info!(
                interface,
                "added a clsact qdisc for TC programs (no TCX here)"
            );
            Ok(program.attach(interface, attach_type)?)
        }
    }
}

fn tc_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?
        .try_into()?)
}

/// Kernel reverse-path filtering off on a tun whose sources our TC program now polices: strict
/// mode would drop return traffic of flows steered over a link other than the kernel route's, and
/// loose mode checks less than the policing does (any routable source passes). The kernel applies
/// the larger of `all` and the device's value, so a strict `all` still wins; that is reported, not
/// changed.
fn turn_off_rp_filter(device: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{device}/rp_filter");
    if let Err(error) = std::fs::write(&path, "0") {
        tracing::warn!(device, %error, "could not turn off rp_filter on the tun (writing {path})");
    }
    if std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")
        .is_ok_and(|value| value.trim() == "1")
    {
        tracing::warn!(
            device,
            "net.ipv4.conf.all.rp_filter is 1 (strict) and overrides the tun's 0: the kernel drops \
             traffic arriving over a link other than its route's; set it to 0 or 2"
        );
    }
}

/// The ifindex of `device`, if it exists (in the calling thread's network namespace).
fn ifindex_of(device: &str) -> Option<u32> {
    let name = CString::new(device).ok()?;
    // SAFETY: `name` is a valid C string; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
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
