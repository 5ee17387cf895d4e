//! The VMM's control socket (`crosvm stop|pause|resume|status SOCKET`).

use serde::{Deserialize, Serialize};

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum CrosvmRequest {
    /// Graceful stop (ACPI power button or i8042) with a deadline, then forced.
    Stop {},
    Pause {},
    Resume {},
    Status {},
    ResizeDisk {
        index: u32,
        size: u64,
    },
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
pub enum VmRunState {
    Running,
    Paused,
    Stopping,
    Stopped,
}

#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum CrosvmReply {
    Ack {},
    Status {
        state: VmRunState,
        pid: u32,
        vcpus: u32,
        memory_mib: u32,
    },
}
