//! chunneld: a container's listening TCP ports on the host's localhost, tunnelled over vsock
//! (issue 14 item 4), so forwarding works with or without IP routing to the VM.
//!
//! [`forwarder`] is the host half: one listener per forwarded port on 127.0.0.1 and [::1],
//! each accepted connection handed to a [`forwarder::Dial`] that opens a stream to the
//! container's port; [`dial`] is that Dial for a real VM (hybrid vsock to garcon, whose side
//! is `cros_guest::garcon::forward`). Not wired yet: cicerone feeding garcon's ListeningPorts
//! into [`forwarder::Forwards::sync`] and forgetting a stopped container's forwards, and
//! `vmc port-forward list|add|remove`.

pub mod dial;
pub mod forwarder;
