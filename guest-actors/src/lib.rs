//! Guest agents: maitred, vshd, tremplin, garcon and test payloads. Built as static binaries.
pub mod vshd;
