//! The OpenVPN protocol core, sans-IO: state machines take `now` and bytes and return actions.
pub mod control_codec;
pub mod control_replay;
pub mod data;
pub mod framing;
pub mod key_method;
pub mod keys;
#[cfg(test)]
mod openvpn_interop_tests;
pub mod options;
pub mod packet;
pub mod prf;
pub mod reliable;
pub mod server;
pub mod session;
#[cfg(test)]
mod session_tests;
pub mod tls;
pub mod tls_auth;
pub mod tls_crypt;
pub mod vocabulary;
