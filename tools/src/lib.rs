//! Client library and shared code of the user-facing binaries.
pub mod client;
pub mod crosimg;
pub mod daemon;
pub mod trace_tool;
pub mod vmc_container;
pub mod vmc_port_forward;
pub mod vmc_share;
pub mod vsh_client;
