//! Architecture support: how a vCPU starts and what the guest finds in memory at boot.

pub mod x86_64;
