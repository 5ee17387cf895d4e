//! vm_syslog: collects the guest kernel's log (/dev/kmsg) and programs' syslog (/dev/log) and
//! ships them in batches to the host's vmlog_forwarder (vsock port 9999).

pub mod parse;
pub mod shipper;
