//! Hypervisor backends behind one trait: how concierge (and the tests) start a VM process.
