//! The host actor bus and host actors.
