//! Layer-3 tun devices opened by hand through `/dev/net/tun`.
//!
//! The data path reads and writes whole IP packets here, one per syscall, so this module keeps
//! the fds under our control: several queues of one device (`IFF_MULTI_QUEUE`, one per worker
//! thread, the kernel spreading flows between them by hash) and an optional virtio-net header
//! (`IFF_VNET_HDR` + `TUNSETOFFLOAD`) for later GSO/GRO work.
//!
//! The device is not persistent: it disappears when the last queue fd closes.

use std::{
    ffi::CStr,
    fs::{File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
        unix::fs::OpenOptionsExt as _,
    },
};

use anyhow::{bail, Context as _};
use tokio::io::unix::AsyncFd;

/// The clone device every tun queue is opened from.
const CLONE_DEVICE: &str = "/dev/net/tun";
/// The kernel's limit on queues of one multi-queue tun (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;
/// Size of the `struct virtio_net_hdr` that precedes every packet with `IFF_VNET_HDR` (the
/// kernel's default `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// How to open a tun device beyond its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunOptions {
    /// Number of queues (fds) to open; more than one sets `IFF_MULTI_QUEUE`.
    pub queues: usize,
    /// Prefix every packet with a [`VNET_HDR_LEN`]-byte virtio-net header (`IFF_VNET_HDR`).
    pub vnet_hdr: bool,
    /// `TUN_F_*` offload flags passed to `TUNSETOFFLOAD` (only with `vnet_hdr`; 0 = none).
    pub offload: u32,
}

impl TunOptions {
    /// Plain packets on `queues` queues, no virtio-net header.
    pub fn with_queues(queues: usize) -> Self {
        Self {
            queues,
            vnet_hdr: false,
            offload: 0,
        }
    }
}

/// Offloads that let the kernel hand us (and accept from us) TCP/UDP super-packets with partial
/// checksums: what a later GSO/GRO data path would ask for.
pub const OFFLOAD_GSO: u32 =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// TCP offloads only: what [`crate::offload`] splits and coalesces (partial checksums, TCP
/// super-segments over IPv4 and IPv6).
pub const OFFLOAD_TCP: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

/// A tun device and its open queues. Dropping it (and every queue taken out of it or cloned)
/// removes the device.
#[derive(Debug)]
pub struct TunDevice {
    name: String,
    ifindex: u32,
    vnet_hdr: bool,
    queues: Vec<TunQueue>,
}

impl TunDevice {
    /// Creates the tun `name` (may contain `%d` for the kernel to pick a number) with `queues`
    /// queues, `IFF_TUN | IFF_NO_PI`. Fails if `/dev/net/tun` is missing or the name is taken.
    pub fn create(name: &str, queues: usize) -> anyhow::Result<TunDevice> {
        Self::create_with(name, TunOptions::with_queues(queues))
    }

    /// Creates the tun `name` with explicit [`TunOptions`].
    pub fn create_with(name: &str, options: TunOptions) -> anyhow::Result<TunDevice> {
        if options.queues == 0 || options.queues > MAX_QUEUES {
            bail!(
                "tun {name}: {} queues requested, the kernel allows 1..={MAX_QUEUES}",
                options.queues
            );
        }
        if options.offload != 0 && !options.vnet_hdr {
            bail!("tun {name}: offloads need the virtio-net header (vnet_hdr)");
        }
        let requested = ifreq_name(name)?;
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if options.queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        if options.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }

        // The first queue creates the device; IFF_TUN_EXCL makes an existing device of that name
        // (ours or anybody's) an error instead of silently attaching to it.
        let (mut first, actual_name) = open_queue(&requested, flags | libc::IFF_TUN_EXCL)
            .with_context(|| format!("creating tun {name}"))?;
        first.vnet_hdr = options.vnet_hdr;
        let mut queue_list = Vec::with_capacity(options.queues);
        queue_list.push(first);
        // Later queues attach by the kernel-chosen name (relevant when `name` had a `%d`).
        let attach_name = ifreq_name(&actual_name)?;
        for index in 1..options.queues {
            let (mut queue, _) = open_queue(&attach_name, flags)
                .with_context(|| format!("opening queue {index} of tun {actual_name}"))?;
            queue.vnet_hdr = options.vnet_hdr;
            queue_list.push(queue);
        }
        if options.offload != 0 {
            for queue in &queue_list {
                // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of TUN_F_*
                // flags) on a valid tun fd we own.
                let rc = unsafe {
                    libc::ioctl(
                        queue.as_raw_fd(),
                        libc::TUNSETOFFLOAD,
                        libc::c_ulong::from(options.offload),
                    )
                };
                if rc < 0 {
                    return Err(io::Error::last_os_error()).with_context(|| {
                        format!("tun {actual_name}: TUNSETOFFLOAD {:#x}", options.offload)
                    });
                }
            }
        }
        let ifindex = interface_index(&actual_name)
            .with_context(|| format!("looking up the index of tun {actual_name}"))?;
        Ok(TunDevice {
            name: actual_name,
            ifindex,
            vnet_hdr: options.vnet_hdr,
            queues: queue_list,
        })
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index (in the namespace the device was created in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Whether every packet carries a [`VNET_HDR_LEN`]-byte virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Number of open queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Queue `index`, or `None` past [`queue_count`](Self::queue_count).
    pub fn queue(&self, index: usize) -> Option<&TunQueue> {
        self.queues.get(index)
    }

    /// All queues, to hand one to each worker thread. The device lives as long as any of them.
    pub fn into_queues(self) -> Vec<TunQueue> {
        self.queues
    }
}

/// One queue of a tun device: each `read` returns one packet, each `write` sends one. Blocking
/// unless made non-blocking (see [`TunQueue::into_async`]).
#[derive(Debug)]
pub struct TunQueue {
    file: File,
    vnet_hdr: bool,
}

impl TunQueue {
    /// Reads one packet into `buf`; returns its length. A packet longer than `buf` is cut short
    /// by the kernel, so size `buf` for the MTU (plus [`VNET_HDR_LEN`] with a vnet header).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one whole packet (an IP packet, preceded by the vnet header if enabled).
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        (&self.file).write(packet)
    }

    /// Whether every read and [`write`](Self::write) carries a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Another fd for the same queue (dup): shares its packets and non-blocking state.
    pub fn try_clone(&self) -> io::Result<TunQueue> {
        Ok(TunQueue {
            file: self.file.try_clone()?,
            vnet_hdr: self.vnet_hdr,
        })
    }

    /// Switches the queue to non-blocking mode and registers it with tokio, for tasks that
    /// write an occasional packet (`async_fd.get_ref().write(..)` after `writable().await`).
    /// Needs a running tokio runtime.
    pub fn into_async(self) -> io::Result<AsyncFd<TunQueue>> {
        set_nonblocking(self.file.as_raw_fd())?;
        // SAFETY: the TunQueue owns its File, so the fd stays open and the same for as long as
        // the AsyncFd owns the queue, and as_raw_fd always returns that one fd.
        unsafe { AsyncFd::register(self) }.map_err(io::Error::from)
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// `name` as a NUL-terminated `ifr_name`, or an error if it cannot be an interface name.
fn ifreq_name(name: &str) -> anyhow::Result<[libc::c_char; libc::IFNAMSIZ]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/')
    {
        bail!(
            "invalid interface name {name:?}: 1..{} bytes, no '/' or NUL",
            libc::IFNAMSIZ
        );
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (slot, byte) in out.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(out)
}

/// Opens `/dev/net/tun` and binds it to a device with TUNSETIFF; returns the queue and the name
/// the kernel settled on.
fn open_queue(
    name: &[libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_int,
) -> anyhow::Result<(TunQueue, String)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(CLONE_DEVICE)
        .map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => anyhow::anyhow!(
                "{CLONE_DEVICE} does not exist: load the tun module (modprobe tun) or create the \
                 node (mknod {CLONE_DEVICE} c 10 200)"
            ),
            _ => anyhow::Error::new(error).context(format!("opening {CLONE_DEVICE}")),
        })?;
    // SAFETY: ifreq is plain old data (a name array and a union of integers/sockaddrs/pointer);
    // all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    request.ifr_name = *name;
    // The tun ABI's flags are a short; every IFF_* we pass fits in 16 bits.
    request.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `request` is, on an fd we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        let shown = ifr_name_string(&request.ifr_name);
        return Err(match error.raw_os_error() {
            Some(libc::EBUSY) | Some(libc::EEXIST) => {
                anyhow::anyhow!("interface {shown} already exists (or its queue is taken): {error}")
            }
            Some(libc::EINVAL) => anyhow::anyhow!(
                "TUNSETIFF {shown}: {error} (a non-tun interface by that name, or flags that do \
                 not match an existing tun's)"
            ),
            Some(libc::EPERM) => {
                anyhow::anyhow!("TUNSETIFF {shown}: {error} (needs CAP_NET_ADMIN)")
            }
            _ => anyhow::Error::new(error).context(format!("TUNSETIFF {shown}")),
        });
    }
    let actual = ifr_name_string(&request.ifr_name);
    Ok((
        TunQueue {
            file,
            vnet_hdr: false,
        },
        actual,
    ))
}

fn ifr_name_string(name: &[libc::c_char; libc::IFNAMSIZ]) -> String {
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn interface_index(name: &str) -> io::Result<u32> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    let c_name: &CStr = &c_name;
    // SAFETY: if_nametoindex reads a valid NUL-terminated string and has no other preconditions.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd we own; no pointers involved.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_any_syscall() {
        assert!(ifreq_name("").is_err());
        assert!(
            ifreq_name("0123456789abcdef").is_err(),
            "16 bytes leave no room for NUL"
        );
        assert!(ifreq_name("a/b").is_err());
        let name = ifreq_name("0123456789abcde").expect("15 bytes fit");
        assert_eq!(ifr_name_string(&name), "0123456789abcde");
    }

    #[test]
    fn queue_counts_outside_the_kernel_limit_are_rejected() {
        let error = TunDevice::create("vt-none", 0).unwrap_err();
        assert!(format!("{error:#}").contains("0 queues"), "{error:#}");
        let error = TunDevice::create("vt-none", MAX_QUEUES + 1).unwrap_err();
        assert!(format!("{error:#}").contains("257 queues"), "{error:#}");
    }

    #[test]
    fn offloads_without_a_vnet_header_are_rejected() {
        let options = TunOptions {
            queues: 1,
            vnet_hdr: false,
            offload: OFFLOAD_GSO,
        };
        let error = TunDevice::create_with("vt-none", options).unwrap_err();
        assert!(format!("{error:#}").contains("vnet_hdr"), "{error:#}");
    }
}
