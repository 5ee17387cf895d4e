//! What outlives one concierge instance. After a panic the supervisor builds a fresh concierge
//! ([`crate::supervisor`]), but the VMs the dead one ran are still running, with their watcher
//! threads and guest bridges. The dead instance hands its VM table over as it is dropped, the next
//! one takes it when it is built, and VM exits are reported to whichever instance is current: a
//! restart never stops a VM.
//!
//! What cannot be handed over is work in flight: a boot or a stop that the dead instance was
//! awaiting is gone with it. A VM caught starting is stopped (its watcher, owned by the lost boot,
//! stops it when dropped); one caught stopping is running again, and StopVm stops it.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use cros_messages::concierge::{VmInfo, VmStatus};

use super::{Concierge, VmEntry, VmExited};

/// The VMs of a concierge instance.
pub(super) struct VmTable {
    pub vms: BTreeMap<String, VmEntry>,
    pub next_generation: u64,
    /// VMs found dead at start (see [`super::vm_record`]), until they start again.
    pub stopped: BTreeMap<String, VmInfo>,
}

#[derive(Default)]
pub struct Handover {
    table: Mutex<Option<VmTable>>,
    /// Weak: the handover must not keep a dead instance alive.
    current: Mutex<Option<actix::WeakAddr<Concierge>>>,
}

impl Handover {
    pub(super) fn put(&self, table: VmTable) {
        *self.table.lock().unwrap_or_else(PoisonError::into_inner) = Some(table);
    }

    /// The table a dead instance left, made fit for a new one (see the module doc).
    pub(super) fn take(&self) -> Option<VmTable> {
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        table.vms.retain(|name, entry| match entry.info.status {
            VmStatus::Starting => {
                tracing::warn!(vm = %name, "the VM was starting when concierge crashed: its boot is lost, it is stopped");
                false
            }
            VmStatus::Stopping => {
                tracing::warn!(vm = %name, "the VM was stopping when concierge crashed: it runs on; stop it again");
                entry.info.status = VmStatus::Running;
                true
            }
            VmStatus::Running | VmStatus::Stopped => true,
        });
        tracing::info!(
            count = table.vms.len(),
            "concierge re-adopted the running VMs"
        );
        Some(table)
    }

    pub(super) fn set_current(&self, addr: actix::WeakAddr<Concierge>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(addr);
    }

    /// Tells the current instance that a VM's hypervisor exited.
    pub(super) fn vm_exited(&self, msg: VmExited) {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = current.as_ref().and_then(actix::WeakAddr::upgrade) {
            addr.do_send(msg);
        }
    }

    #[cfg(test)]
    pub(super) fn holds_table(&self) -> bool {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}
