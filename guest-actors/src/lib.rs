//! Guest agents: maitred, vshd, tremplin, garcon and test payloads. Built as static binaries.
pub mod cmdline;
pub mod envelopes;
pub mod garcon;
pub mod kmod;
pub mod maitred;
pub mod pid1;
pub mod tremplin;
pub mod vm_syslog;
pub mod vshd;
pub mod vsock_probe;
