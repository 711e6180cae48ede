//! Batched UDP I/O: many datagrams per syscall with `recvmmsg(2)` / `sendmmsg(2)`.
//!
//! The data path's cost is syscalls per packet; these batches amortise one syscall over up to
//! N datagrams. Both work on any UDP socket fd (a blocking `std::net::UdpSocket` on a data-path
//! thread is the intended use), IPv4 or IPv6, connected or not.
//!
//! Addresses: on a dual-stack IPv6 socket the kernel reports IPv4 peers as `::ffff:a.b.c.d`;
//! [`RecvBatch`] hands them out as plain IPv4 so they compare equal to configured peers, and
//! [`SendBatch`] sends IPv4 destinations as `sockaddr_in`, which Linux accepts on such sockets.

use std::{
    io,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

/// How long [`SendBatch::flush`] keeps retrying while the socket or device queue is full before
/// it drops (and counts) the datagrams it could not send.
const SEND_RETRY_BUDGET: Duration = Duration::from_secs(1);
/// The kernel's limit on segments in one UDP GSO send (`UDP_MAX_SEGMENTS`, 64 before 6.x
/// raised it to 128; 64 works everywhere).
const UDP_MAX_SEGMENTS: usize = 64;
/// Payload bytes in one UDP GSO send: what one IPv4 UDP datagram holds (IPv6 allows 20 more).
const UDP_GSO_MAX_BYTES: usize = 65_535 - 20 - 8;
/// `UDP_GRO` (linux/udp.h): as a socket option it turns receive coalescing on; as a control
/// message it carries the segment size of a coalesced datagram. Not in every libc target.
const UDP_GRO: libc::c_int = 104;
/// Room for one control message with an int payload (`CMSG_SPACE(4)` is 24 on 64-bit).
type ControlBuffer = [u64; 4];

/// Preallocated buffers for receiving up to `capacity` datagrams in one `recvmmsg`.
pub struct RecvBatch {
    buffers: Vec<u8>,
    slot_size: usize,
    addresses: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: Vec<ReceivedMeta>,
    truncated_total: u64,
    /// Whether the socket coalesces datagrams (`UDP_GRO`) and we ask for their segment size.
    gro: bool,
    controls: Vec<ControlBuffer>,
}

#[derive(Debug, Clone, Copy)]
struct ReceivedMeta {
    len: usize,
    source: Option<SocketAddr>,
    truncated: bool,
    /// With GRO: the size of the datagrams coalesced into this slot (the last may be shorter);
    /// 0 when the slot holds one datagram.
    segment: usize,
}

// SAFETY: the raw pointers in `iovecs` and `headers` point only into this struct's own heap
// buffers; they are rewritten before every syscall and never dereferenced outside `recv`, so
// moving the batch to another thread is sound.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `capacity` slots of `slot_size` bytes each. A datagram longer than `slot_size` is
    /// counted in [`truncated_total`](Self::truncated_total) and not handed out.
    pub fn new(capacity: usize, slot_size: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            buffers: vec![0; capacity * slot_size],
            slot_size,
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addresses: vec![unsafe { std::mem::zeroed() }; capacity],
            iovecs: Vec::with_capacity(capacity),
            headers: Vec::with_capacity(capacity),
            received: Vec::with_capacity(capacity),
            truncated_total: 0,
            gro: false,
            controls: vec![[0; 4]; capacity],
        }
    }

    /// Turns on UDP GRO for `socket`: the kernel may then hand over several datagrams of one
    /// sender in one slot, which [`iter`](Self::iter) splits again. Slots should then be 64 KiB
    /// (a coalesced datagram is up to 65,535 bytes). Fails on kernels before 5.0.
    pub fn enable_udp_gro(&mut self, socket: &impl AsRawFd) -> io::Result<()> {
        set_int_option(socket.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 1)?;
        self.gro = true;
        Ok(())
    }

    /// Whether UDP GRO is on (see [`enable_udp_gro`](Self::enable_udp_gro)).
    pub fn udp_gro(&self) -> bool {
        self.gro
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.addresses.len()
    }

    /// Receives up to [`capacity`](Self::capacity) datagrams: waits for the first (blocking
    /// socket; at most `timeout` if given), then takes whatever else is queued without waiting
    /// (`MSG_WAITFORONE`). Returns the number received, 0 if `timeout` passed with none.
    /// On a non-blocking socket with nothing queued it fails with `WouldBlock`.
    pub fn recv(&mut self, socket: &impl AsRawFd, timeout: Option<Duration>) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        self.received.clear();
        let mut flags = libc::MSG_WAITFORONE;
        if let Some(timeout) = timeout {
            if !poll_fd(fd, libc::POLLIN, timeout)? {
                return Ok(0);
            }
            // Readable now; never block if another reader raced us to it.
            flags |= libc::MSG_DONTWAIT;
        }
        self.prepare_headers();
        let count = loop {
            // SAFETY: `headers` holds `headers.len()` mmsghdrs whose iovecs and names point
            // into `buffers` / `addresses`, which live (unmoved) for the whole call.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    self.headers.len() as libc::c_uint,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        };
        for (header, address) in self.headers.iter().zip(&self.addresses).take(count) {
            let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            if truncated {
                self.truncated_total += 1;
            }
            let segment = if self.gro {
                gro_segment_size(&header.msg_hdr)
            } else {
                0
            };
            self.received.push(ReceivedMeta {
                len: (header.msg_len as usize).min(self.slot_size),
                source: socket_addr_from_storage(address, header.msg_hdr.msg_namelen),
                truncated,
                segment,
            });
        }
        Ok(count)
    }

    /// The complete datagrams of the last [`recv`](Self::recv): payload and source, with
    /// GRO-coalesced slots split back into the datagrams the peer sent.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        self.received
            .iter()
            .enumerate()
            .filter(|(_, meta)| !meta.truncated)
            .filter_map(|(slot, meta)| {
                let start = slot * self.slot_size;
                let data = self.buffers.get(start..start + meta.len)?;
                Some((data, meta.source?, meta.segment))
            })
            .flat_map(|(data, source, segment)| {
                // chunks() of an empty datagram yields nothing, so keep it whole.
                let size = if segment == 0 || data.is_empty() {
                    data.len().max(1)
                } else {
                    segment
                };
                data.chunks(size)
                    .chain(data.is_empty().then_some(data))
                    .map(move |chunk| (chunk, source))
            })
    }

    /// Slot `index` of the last receive (with GRO possibly several datagrams back to back),
    /// `None` if out of range or truncated.
    pub fn get(&self, index: usize) -> Option<(&[u8], SocketAddr)> {
        let meta = self.received.get(index)?;
        if meta.truncated {
            return None;
        }
        let start = index * self.slot_size;
        Some((self.buffers.get(start..start + meta.len)?, meta.source?))
    }

    /// Slots (complete or not) filled by the last receive; with GRO one slot may hold several
    /// datagrams.
    pub fn len(&self) -> usize {
        self.received.len()
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    /// Datagrams dropped since creation because they did not fit in a slot.
    pub fn truncated_total(&self) -> u64 {
        self.truncated_total
    }

    fn prepare_headers(&mut self) {
        let capacity = self.addresses.len();
        self.iovecs.clear();
        self.headers.clear();
        let base = self.buffers.as_mut_ptr();
        for slot in 0..capacity {
            self.iovecs.push(libc::iovec {
                // SAFETY: slot * slot_size < buffers.len() (or == 0 with zero-sized slots), so
                // the offset stays inside the allocation.
                iov_base: unsafe { base.add(slot * self.slot_size) }.cast(),
                iov_len: self.slot_size,
            });
        }
        for slot in 0..capacity {
            // SAFETY: msghdr is plain old data; all-zero is valid (no control, no flags).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name =
                (&mut self.addresses[slot] as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = &mut self.iovecs[slot];
            header.msg_hdr.msg_iovlen = 1;
            if self.gro {
                header.msg_hdr.msg_control = self.controls[slot].as_mut_ptr().cast();
                header.msg_hdr.msg_controllen = size_of::<ControlBuffer>();
            }
            self.headers.push(header);
        }
    }
}

/// The `UDP_GRO` segment size in a received message's control data, 0 if there is none.
fn gro_segment_size(header: &libc::msghdr) -> usize {
    if header.msg_control.is_null() || header.msg_controllen == 0 {
        return 0;
    }
    // SAFETY: the kernel filled `msg_controllen` bytes of our control buffer with cmsghdrs;
    // CMSG_FIRSTHDR/NXTHDR stay within that length and return null past it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP
                && (*cmsg).cmsg_type == UDP_GRO
                && (*cmsg).cmsg_len as usize
                    >= libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize
            {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return usize::try_from(size).unwrap_or(0);
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    0
}

/// Counters of a [`SendBatch`] since creation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendStats {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Datagrams given up on (per-datagram errors, or full queues past the retry budget).
    pub dropped: u64,
    /// Times a full socket or device queue (`EAGAIN`, `ENOBUFS`) made us wait and retry.
    pub retries: u64,
    /// GSO messages the kernel refused and we re-sent one datagram per message: the path
    /// cannot segment at all (`EIO`, ...: GSO then stays off), or the segment exceeds the
    /// path MTU (`EMSGSIZE`: runs of that size then go unsegmented and may be fragmented).
    pub gso_refused: u64,
}

/// Datagrams collected for one `sendmmsg`, each to its own destination.
pub struct SendBatch {
    buffers: Vec<u8>,
    slot_size: usize,
    capacity: usize,
    lens: Vec<usize>,
    destinations: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    stats: SendStats,
    last_error: Option<io::ErrorKind>,
    gso: bool,
    /// GSO runs only for datagrams shorter than this (an `EMSGSIZE` lowers it).
    gso_segment_limit: usize,
    /// Destinations as given, to find GSO runs.
    targets: Vec<SocketAddr>,
    /// Datagrams per message of the headers being sent.
    groups: Vec<usize>,
    /// One `UDP_SEGMENT` control message buffer per GSO message.
    controls: Vec<[u64; 4]>,
}

// SAFETY: as for RecvBatch: the pointers in `iovecs`/`headers` refer to this struct's own heap
// buffers, are rebuilt before every syscall and used only inside `flush`.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Room for `capacity` datagrams of at most `slot_size` bytes.
    pub fn new(capacity: usize, slot_size: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            buffers: vec![0; capacity * slot_size],
            slot_size,
            capacity,
            lens: Vec::with_capacity(capacity),
            destinations: Vec::with_capacity(capacity),
            iovecs: Vec::with_capacity(capacity),
            headers: Vec::with_capacity(capacity),
            stats: SendStats::default(),
            last_error: None,
            gso: false,
            gso_segment_limit: usize::MAX,
            targets: Vec::with_capacity(capacity),
            groups: Vec::with_capacity(capacity),
            controls: Vec::with_capacity(capacity),
        }
    }

    /// Datagrams waiting for [`flush`](Self::flush).
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Whether another datagram fits.
    pub fn is_full(&self) -> bool {
        self.lens.len() == self.capacity()
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Copies `payload` into the next slot. Fails (returning nothing queued) when the batch is
    /// full or `payload` is longer than a slot.
    pub fn push(&mut self, payload: &[u8], destination: SocketAddr) -> Result<(), PushError> {
        let too_long = PushError::TooLong {
            len: payload.len(),
            slot_size: self.slot_size,
        };
        let slot = self.next_slot().ok_or(PushError::Full)?;
        let target = slot.get_mut(..payload.len()).ok_or(too_long)?;
        target.copy_from_slice(payload);
        self.commit(payload.len(), destination)
    }

    /// The next free slot, to build a datagram in place (then [`commit`](Self::commit) it);
    /// `None` when full.
    pub fn next_slot(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let start = self.lens.len() * self.slot_size;
        self.buffers.get_mut(start..start + self.slot_size)
    }

    /// Queues the first `len` bytes of the slot [`next_slot`](Self::next_slot) returned.
    pub fn commit(&mut self, len: usize, destination: SocketAddr) -> Result<(), PushError> {
        if self.is_full() {
            return Err(PushError::Full);
        }
        if len > self.slot_size {
            return Err(PushError::TooLong {
                len,
                slot_size: self.slot_size,
            });
        }
        self.lens.push(len);
        self.targets.push(destination);
        self.destinations
            .push(storage_from_socket_addr(destination));
        Ok(())
    }

    /// Sends every queued datagram, in order, with as few `sendmmsg` calls as the kernel
    /// allows, and empties the batch. A full queue (`EAGAIN`, `ENOBUFS`) is waited out and
    /// retried for up to a second; a datagram the kernel refuses (no route, too big, ...) is
    /// dropped and counted, and the rest still go. Returns the number sent by this call; fails
    /// only if the socket itself is unusable (then the whole batch counts as dropped).
    pub fn flush(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        let total = self.lens.len();
        // Datagrams handled (sent or dropped) so far.
        let mut done = 0;
        let mut next_header = 0;
        let mut sent = 0;
        let mut retry_deadline: Option<Instant> = None;
        self.prepare_headers(0);
        while done < total {
            let pending = self.headers.get_mut(next_header..).unwrap_or_default();
            // SAFETY: every mmsghdr in `pending` points at iovecs in `iovecs`, a sockaddr in
            // `destinations` and (with GSO) a cmsg in `controls`; the iovecs point into
            // `buffers`. None of these vectors is touched until the call returns.
            let rc = unsafe {
                libc::sendmmsg(fd, pending.as_mut_ptr(), pending.len() as libc::c_uint, 0)
            };
            if rc > 0 {
                let accepted: usize = self
                    .groups
                    .get(next_header..next_header + rc as usize)
                    .unwrap_or_default()
                    .iter()
                    .sum();
                next_header += rc as usize;
                done += accepted;
                sent += accepted;
                retry_deadline = None;
                continue;
            }
            let error = if rc == 0 {
                io::Error::from(io::ErrorKind::WriteZero)
            } else {
                io::Error::last_os_error()
            };
            let group = self.groups.get(next_header).copied().unwrap_or(1);
            match error.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                    let deadline =
                        *retry_deadline.get_or_insert_with(|| Instant::now() + SEND_RETRY_BUDGET);
                    if Instant::now() >= deadline {
                        // Give up on what is left rather than stall the data path forever.
                        self.last_error = Some(error.kind());
                        self.stats.dropped += (total - done) as u64;
                        done = total;
                        continue;
                    }
                    self.stats.retries += 1;
                    if error.raw_os_error() == Some(libc::EAGAIN) {
                        poll_fd(fd, libc::POLLOUT, Duration::from_millis(10))?;
                    } else {
                        // ENOBUFS: the device queue is full; poll cannot tell when it drains.
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                Some(libc::EBADF) | Some(libc::ENOTSOCK) | Some(libc::EFAULT) => {
                    self.stats.dropped += (total - done) as u64;
                    self.stats.sent += sent as u64;
                    self.clear();
                    return Err(error);
                }
                Some(libc::EMSGSIZE) if group > 1 => {
                    // A segment plus headers exceeds the path MTU: GSO never fragments. Send
                    // runs of this size (and larger) one datagram per message, which the IP
                    // layer may fragment, and keep GSO for smaller ones.
                    self.gso_segment_limit = self
                        .lens
                        .get(done)
                        .copied()
                        .unwrap_or(0)
                        .min(self.gso_segment_limit);
                    self.stats.gso_refused += 1;
                    self.last_error = Some(error.kind());
                    next_header = 0;
                    self.prepare_headers(done);
                }
                Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) if group > 1 => {
                    // The path cannot segment (no checksum offload, old kernel): send the rest
                    // one datagram per message, now and from now on.
                    self.gso = false;
                    self.stats.gso_refused += 1;
                    self.last_error = Some(error.kind());
                    next_header = 0;
                    self.prepare_headers(done);
                }
                _ => {
                    // The first pending message itself is refused: skip it, send the rest.
                    self.last_error = Some(error.kind());
                    self.stats.dropped += group as u64;
                    done += group;
                    next_header += 1;
                }
            }
        }
        self.stats.sent += sent as u64;
        self.clear();
        Ok(sent)
    }

    /// Sends runs of equal-sized datagrams to one destination as one UDP GSO message
    /// (`UDP_SEGMENT`), which the kernel splits after routing: one trip through the stack per
    /// run instead of per datagram. Off by default; turned off again by the first flush whose
    /// path cannot segment.
    pub fn set_udp_gso(&mut self, enabled: bool) {
        self.gso = enabled;
    }

    /// Whether UDP GSO is (still) in use.
    pub fn udp_gso(&self) -> bool {
        self.gso
    }

    /// Forgets every queued datagram without sending it.
    pub fn clear(&mut self) {
        self.lens.clear();
        self.targets.clear();
        self.destinations.clear();
        self.headers.clear();
        self.iovecs.clear();
        self.groups.clear();
        self.controls.clear();
    }

    /// Counters since creation.
    pub fn stats(&self) -> SendStats {
        self.stats
    }

    /// The kind of the last error that made a datagram drop, for logs.
    pub fn last_error(&self) -> Option<io::ErrorKind> {
        self.last_error
    }

    /// Builds one message per datagram from `first` on, or with GSO one per run of
    /// equal-sized datagrams (the last may be shorter) to the same destination.
    fn prepare_headers(&mut self, first: usize) {
        self.iovecs.clear();
        self.headers.clear();
        self.groups.clear();
        self.controls.clear();
        let base = self.buffers.as_mut_ptr();
        for (slot, &len) in self.lens.iter().enumerate() {
            self.iovecs.push(libc::iovec {
                // SAFETY: slot < capacity, so the slot start lies inside `buffers`.
                iov_base: unsafe { base.add(slot * self.slot_size) }.cast(),
                iov_len: len,
            });
        }
        let total = self.lens.len();
        let mut start = first;
        while start < total {
            let end = if self.gso {
                self.gso_run_end(start)
            } else {
                start + 1
            };
            self.groups.push(end - start);
            start = end;
        }
        // Reserve every control buffer before taking pointers into the vector.
        self.controls.resize(self.groups.len(), [0; 4]);
        let mut start = first;
        for (index, &count) in self.groups.iter().enumerate() {
            // SAFETY: msghdr is plain old data; all-zero is valid (no control, no flags).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            let (address, address_len) = &mut self.destinations[start];
            header.msg_hdr.msg_name = (address as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = *address_len;
            header.msg_hdr.msg_iov = &mut self.iovecs[start];
            header.msg_hdr.msg_iovlen = count;
            if count > 1 {
                let control = &mut self.controls[index];
                header.msg_hdr.msg_control = control.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                header.msg_hdr.msg_controllen =
                    unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
                // SAFETY: the control buffer (32 bytes, 8-aligned) holds CMSG_SPACE(2) = 24
                // bytes, so the first cmsghdr and its 2 data bytes fit inside it.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(&header.msg_hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                    let segment = self.lens[start] as u16;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
                }
            }
            self.headers.push(header);
            start += count;
        }
    }

    /// End (exclusive) of the GSO run starting at datagram `start`.
    fn gso_run_end(&self, start: usize) -> usize {
        let segment = self.lens[start];
        if segment == 0 || segment >= self.gso_segment_limit {
            return start + 1;
        }
        let mut end = start + 1;
        let mut bytes = segment;
        while end < self.lens.len()
            && end - start < UDP_MAX_SEGMENTS
            && self.targets[end] == self.targets[start]
            && self.lens[end] <= segment
            // An empty datagram would vanish inside a GSO message.
            && self.lens[end] > 0
            && bytes + self.lens[end] <= UDP_GSO_MAX_BYTES
        {
            bytes += self.lens[end];
            end += 1;
            // Only the last segment of a run may be shorter.
            if self.lens[end - 1] < segment {
                break;
            }
        }
        end
    }
}

/// Why a datagram could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the send batch is full; flush it first")]
    Full,
    #[error("datagram of {len} bytes does not fit a {slot_size}-byte slot")]
    TooLong { len: usize, slot_size: usize },
}

/// The receive and send buffer sizes the kernel actually applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    pub receive: usize,
    pub send: usize,
}

/// Asks for `bytes` of receive and send buffer on `socket`: with CAP_NET_ADMIN past
/// `net.core.{r,w}mem_max` (`SO_RCVBUFFORCE`), otherwise up to those limits. Returns what the
/// kernel reports afterwards (which counts its bookkeeping overhead, about twice the request).
pub fn set_socket_buffers(socket: &impl AsRawFd, bytes: usize) -> io::Result<SocketBuffers> {
    let fd = socket.as_raw_fd();
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (forced, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_option(fd, libc::SOL_SOCKET, forced, value).is_err() {
            set_int_option(fd, libc::SOL_SOCKET, plain, value)?;
        }
    }
    Ok(SocketBuffers {
        receive: get_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)? as usize,
        send: get_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)? as usize,
    })
}

fn set_int_option(fd: RawFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_int_option(fd: RawFd, level: i32, name: i32) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live c_int and its size, which the kernel may shrink.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Waits up to `timeout` for `events` on `fd`; `Ok(false)` on timeout.
fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut entry = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut entry, 1, millis) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn storage_from_socket_addr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match address {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address the kernel wrote, with IPv4-mapped IPv6 turned back into IPv4.
fn socket_addr_from_storage(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is long enough.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, and it is long enough.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    u32::from_be(sin6.sin6_flowinfo),
                    sin6.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_survive_the_sockaddr_round_trip() {
        for text in ["192.0.2.7:1194", "[2001:db8::1]:443", "[fe80::1%3]:5000"] {
            let address: SocketAddr = text.parse().unwrap();
            let (storage, len) = storage_from_socket_addr(address);
            assert_eq!(
                socket_addr_from_storage(&storage, len),
                Some(address),
                "{text}"
            );
        }
    }

    #[test]
    fn ipv4_mapped_sources_come_out_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:198.51.100.9]:1194".parse().unwrap();
        let (storage, len) = storage_from_socket_addr(mapped);
        assert_eq!(
            socket_addr_from_storage(&storage, len),
            Some("198.51.100.9:1194".parse().unwrap())
        );
    }

    #[test]
    fn short_or_foreign_addresses_are_none() {
        let (storage, _) = storage_from_socket_addr("192.0.2.7:1".parse().unwrap());
        assert_eq!(socket_addr_from_storage(&storage, 4), None);
        // SAFETY: all-zero sockaddr_storage is valid (AF_UNSPEC).
        let unspec: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(socket_addr_from_storage(&unspec, 128), None);
    }

    #[test]
    fn gso_runs_are_equal_sized_datagrams_to_one_destination() {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1".parse().unwrap();
        let mut batch = SendBatch::new(16, 100);
        // sizes/destinations: run [100,100,60] to a; [100] to b; [100,100] to a; [0] to a;
        // a shorter datagram ends a run, a longer one starts a new run.
        for (len, to) in [
            (100, a),
            (100, a),
            (60, a),
            (100, b),
            (100, a),
            (100, a),
            (0, a),
        ] {
            batch.push(&vec![1; len], to).unwrap();
        }
        batch.prepare_headers(0);
        assert_eq!(batch.groups, vec![1; 7], "GSO is off by default");
        batch.set_udp_gso(true);
        batch.prepare_headers(0);
        assert_eq!(batch.groups, vec![3, 1, 2, 1]);
        assert_eq!(batch.headers[0].msg_hdr.msg_iovlen, 3);
        assert!(!batch.headers[0].msg_hdr.msg_control.is_null());
        assert!(
            batch.headers[1].msg_hdr.msg_control.is_null(),
            "a single datagram: no cmsg"
        );
        batch.prepare_headers(4);
        assert_eq!(
            batch.groups,
            vec![2, 1],
            "rebuilt from datagram 4 after a GSO refusal"
        );
        batch.clear();

        let mut long = SendBatch::new(200, 1400);
        for _ in 0..200 {
            long.push(&[0; 1400], a).unwrap();
        }
        long.set_udp_gso(true);
        long.prepare_headers(0);
        // 46 * 1400 = 64400 <= 65507 < 47 * 1400.
        assert!(long.groups.iter().all(|&n| n <= 46), "{:?}", long.groups);
        assert_eq!(long.groups.iter().sum::<usize>(), 200);
    }

    #[test]
    fn pushes_past_capacity_or_slot_size_fail() {
        let mut batch = SendBatch::new(2, 4);
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            batch.push(&[0; 5], to),
            Err(PushError::TooLong {
                len: 5,
                slot_size: 4
            })
        );
        batch.push(&[1; 4], to).unwrap();
        batch.push(&[2; 1], to).unwrap();
        assert!(batch.is_full());
        assert_eq!(batch.push(&[3], to), Err(PushError::Full));
        assert!(batch.next_slot().is_none());
        assert_eq!(batch.len(), 2);
    }
}
