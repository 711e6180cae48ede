//! Logging that exists only in debug builds. With the `log` feature (vpn-daemon/build.rs turns it
//! on for debug builds) these forward to aya-log, whose records the daemon reads from a ring buffer
//! and whose level it sets at load time from `RUST_LOG` (target `vpn_ebpf`). Without it they
//! expand to nothing, so release objects carry neither the code nor the ring buffer map.

/// A decision worth seeing when debugging, at most one per packet (a drop and its reason).
#[cfg(feature = "log")]
macro_rules! debug {
    ($ctx:expr, $($rest:tt)+) => { aya_log_ebpf::debug!($ctx, $($rest)+) };
}

/// The per-packet detail of a pass (admitted handshakes, steering choices).
#[cfg(feature = "log")]
macro_rules! trace {
    ($ctx:expr, $($rest:tt)+) => { aya_log_ebpf::trace!($ctx, $($rest)+) };
}

#[cfg(not(feature = "log"))]
macro_rules! debug {
    ($ctx:expr, $format:literal $(, $arg:expr)* $(,)?) => {{
        let _ = $ctx;
        $(let _ = $arg;)*
    }};
}

#[cfg(not(feature = "log"))]
macro_rules! trace {
    ($ctx:expr, $format:literal $(, $arg:expr)* $(,)?) => {{
        let _ = $ctx;
        $(let _ = $arg;)*
    }};
}

pub(crate) use {debug, trace};
