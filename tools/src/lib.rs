//! Client library and shared code of the user-facing binaries.
pub mod vsh_client;
pub mod client;
pub mod crosimg;
pub mod daemon;
pub mod trace_tool;
