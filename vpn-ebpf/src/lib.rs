//! Library target only so that `vpn-daemon` can name this crate as a build-dependency (which makes
//! its build.rs re-run on changes); the programs live in the `vpn-ebpf` binary.
#![no_std]
