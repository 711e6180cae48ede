//! The OpenVPN protocol core, sans-IO: state machines take `now` and bytes and return actions.
pub mod control_replay;
pub mod data;
pub mod framing;
pub mod keys;
#[cfg(test)]
mod openvpn_interop_tests;
pub mod packet;
pub mod prf;
pub mod tls_auth;
pub mod tls_crypt;
