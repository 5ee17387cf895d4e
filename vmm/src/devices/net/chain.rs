//! Descriptor chains, validated before the device touches guest memory: every descriptor of
//! the direction the queue needs (read-only on tx, write-only on rx), inside guest memory,
//! and the chain ending where its last descriptor says it ends (virtio-queue's iterator stops
//! quietly at a loop or a next index outside the table; we turn that into an error).

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::error::FrameError;

/// One buffer of a validated chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Which way a chain's buffers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device-readable (the tx queue).
    Readable,
    /// Device-writable (the rx queue).
    Writable,
}

/// The segments of `chain`, all of direction `dir` and inside `mem`, with their total
/// length; refused once the total passes `max_total` (tx frames have a size limit; rx
/// chains are only read as far as needed, so they pass `u64::MAX`).
pub fn segments<M>(
    chain: DescriptorChain<M>,
    mem: &M::Target,
    dir: Direction,
    max_total: u64,
) -> Result<(Vec<Segment>, u64), FrameError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let access = match dir {
        Direction::Readable => Permissions::Read,
        Direction::Writable => Permissions::Write,
    };
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut ended = false;
    for (index, desc) in chain.enumerate() {
        match (dir, desc.is_write_only()) {
            (Direction::Readable, true) => return Err(FrameError::WriteOnlyInTx { index }),
            (Direction::Writable, false) => return Err(FrameError::ReadOnlyInRx { index }),
            _ => {}
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, access) {
            return Err(FrameError::InvalidAddress {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        total += u64::from(desc.len());
        if total > max_total {
            return Err(FrameError::FrameTooLarge {
                len: usize::try_from(total).unwrap_or(usize::MAX),
                max: usize::try_from(max_total).unwrap_or(usize::MAX),
            });
        }
        if desc.len() > 0 {
            out.push(Segment {
                addr: desc.addr(),
                len: desc.len(),
            });
        }
        ended = !desc.has_next();
    }
    if !ended {
        return Err(FrameError::BrokenChain);
    }
    Ok((out, total))
}
