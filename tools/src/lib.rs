//! Client library and shared code of the user-facing binaries.
pub mod vsh_client;
