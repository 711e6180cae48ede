//! Bounds-checked reads from packet memory, in the form the verifier accepts.

pub const ETH_HDR_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPV6_HDR_LEN: usize = 40;

/// Reads a `T` at `offset` from `start` if it lies wholly before `end`.
#[inline(always)]
pub fn read<T: Copy>(start: usize, end: usize, offset: usize) -> Option<T> {
    let at = start + offset;
    if at + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: the range [at, at + size_of::<T>()) was checked against the packet end above;
    // read_unaligned because packet headers carry no alignment guarantee.
    Some(unsafe { core::ptr::read_unaligned(at as *const T) })
}

#[inline(always)]
pub fn read_be16(start: usize, end: usize, offset: usize) -> Option<u16> {
    read::<[u8; 2]>(start, end, offset).map(u16::from_be_bytes)
}
