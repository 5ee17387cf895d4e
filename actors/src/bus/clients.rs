//! What the control socket knows about its clients that an envelope cannot carry: who each
//! connection is (the peer credentials the kernel gave crosd, never what the client wrote), and
//! the open files a client passed with a request (SCM_RIGHTS).
//!
//! The connection ([`crate`]'s users in `cros-tools`) registers a peer when its handshake
//! succeeds and forgets it when it closes; it puts the files of a request here, keyed by the
//! client's address and the envelope id, before routing the request, and drops whatever the
//! actor did not take once the reply is back. So a passed descriptor lives no longer than the
//! request it came with, unless the actor that took it keeps it.

use cros_messages::Addr;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The kernel's word on who is at the other end of a control connection (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// Peers by connection address, and passed files by (connection address, envelope id).
#[derive(Default)]
pub struct ClientTable {
    peers: Mutex<HashMap<Addr, Peer>>,
    files: Mutex<HashMap<(Addr, u64), Vec<OwnedFd>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClientTable {
    pub fn add_peer(&self, client: Addr, peer: Peer) {
        lock(&self.peers).insert(client, peer);
    }

    /// Forgets the peer and any files its requests left behind.
    pub fn remove_peer(&self, client: &Addr) {
        lock(&self.peers).remove(client);
        lock(&self.files).retain(|(c, _), _| c != client);
    }

    /// Who connection `client` is; `None` for an address that is no control connection.
    pub fn peer(&self, client: &Addr) -> Option<Peer> {
        lock(&self.peers).get(client).copied()
    }

    /// Attaches `files` to request `id` of `client` (replacing what an earlier request with the
    /// same id left). No entry for an empty list.
    pub fn put_files(&self, client: Addr, id: u64, files: Vec<OwnedFd>) {
        let mut table = lock(&self.files);
        if files.is_empty() {
            table.remove(&(client, id));
        } else {
            table.insert((client, id), files);
        }
    }

    /// The files passed with request `id` of `client`, in the order they were sent; empty when
    /// none were. Each can be taken once.
    pub fn take_files(&self, client: &Addr, id: u64) -> Vec<OwnedFd> {
        lock(&self.files)
            .remove(&(client.clone(), id))
            .unwrap_or_default()
    }

    /// How many requests have files waiting (for tests and leak checks).
    pub fn pending_files(&self) -> usize {
        lock(&self.files).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn file() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn files_are_taken_once_by_client_and_id() {
        let t = ClientTable::default();
        let (a, b) = (Addr::client(1), Addr::client(2));
        let f = file();
        let raw = f.as_raw_fd();
        t.put_files(a.clone(), 7, vec![f, file()]);
        t.put_files(b.clone(), 7, vec![file()]);
        assert!(t.take_files(&a, 8).is_empty());
        let got = t.take_files(&a, 7);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_raw_fd(), raw, "the order they were sent in");
        assert!(t.take_files(&a, 7).is_empty(), "taken once");
        assert_eq!(t.pending_files(), 1);
        t.put_files(b.clone(), 7, Vec::new());
        assert_eq!(t.pending_files(), 0);
    }

    #[test]
    fn a_closed_connection_leaves_no_peer_and_no_files() {
        let t = ClientTable::default();
        let a = Addr::client(1);
        let peer = Peer {
            uid: 1000,
            gid: 1000,
            pid: Some(42),
        };
        t.add_peer(a.clone(), peer);
        t.put_files(a.clone(), 1, vec![file()]);
        t.put_files(Addr::client(2), 1, vec![file()]);
        assert_eq!(t.peer(&a), Some(peer));
        t.remove_peer(&a);
        assert_eq!(t.peer(&a), None);
        assert!(t.take_files(&a, 1).is_empty());
        assert_eq!(t.pending_files(), 1, "another connection's files stay");
    }
}
