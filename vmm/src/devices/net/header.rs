//! `struct virtio_net_hdr_v1` (virtio 1.2, 5.1.6): the 12 bytes in front of every frame, on
//! the queues and on the tap alike (the tap is opened with vnet headers of this size). With
//! VIRTIO_F_VERSION_1 the header always has its `num_buffers` field, whether or not
//! VIRTIO_NET_F_MRG_RXBUF was negotiated.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
};

use super::error::FrameError;

/// Size of `virtio_net_hdr_v1`.
pub const HEADER_SIZE: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// The fields of a header that decide whether a peer may receive the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetHeader {
    pub flags: u8,
    pub gso_type: u8,
}

impl NetHeader {
    /// The header at the start of `frame`, which must hold at least [`HEADER_SIZE`] bytes.
    pub fn parse(frame: &[u8]) -> Result<Self, FrameError> {
        if frame.len() < HEADER_SIZE {
            return Err(FrameError::ShortFrame { len: frame.len() });
        }
        Ok(Self {
            flags: frame[0],
            gso_type: frame[1],
        })
    }

    /// Checks that a side which negotiated `features` may be handed this frame: a partial
    /// checksum needs the checksum feature, segmentation offload its GSO feature. `rx`: the
    /// guest receives it (the GUEST_* bits), else the guest sent it (the CSUM and HOST_* bits).
    pub fn check(&self, features: u64, rx: bool) -> Result<(), FrameError> {
        let has = |bit: u32| features & (1 << bit) != 0;
        let (csum, tso4, tso6, ufo) = if rx {
            (
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_UFO,
            )
        } else {
            (
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_TSO6,
                VIRTIO_NET_F_HOST_UFO,
            )
        };
        if u32::from(self.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !has(csum) {
            return Err(FrameError::OffloadNotNegotiated {
                what: "a partial checksum",
            });
        }
        let gso = u32::from(self.gso_type) & !VIRTIO_NET_HDR_GSO_ECN;
        let needed = match gso {
            VIRTIO_NET_HDR_GSO_NONE => return Ok(()),
            VIRTIO_NET_HDR_GSO_TCPV4 => (tso4, "TCPv4 segmentation"),
            VIRTIO_NET_HDR_GSO_TCPV6 => (tso6, "TCPv6 segmentation"),
            VIRTIO_NET_HDR_GSO_UDP => (ufo, "UDP fragmentation"),
            other => {
                return Err(FrameError::UnknownGsoType {
                    gso_type: other as u8,
                });
            }
        };
        if !has(needed.0) {
            return Err(FrameError::OffloadNotNegotiated { what: needed.1 });
        }
        Ok(())
    }
}

/// Writes `num_buffers` into the header at the start of `frame`.
pub fn set_num_buffers(frame: &mut [u8], num_buffers: u16) {
    if let Some(field) = frame.get_mut(NUM_BUFFERS_OFFSET..HEADER_SIZE) {
        field.copy_from_slice(&num_buffers.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso_type: u8) -> NetHeader {
        NetHeader { flags, gso_type }
    }

    #[test]
    fn offloads_need_their_features() {
        let all = u64::MAX;
        assert!(hdr(0, 0).check(0, true).is_ok());
        assert!(hdr(1, 0).check(0, true).is_err());
        assert!(hdr(1, 0).check(1 << VIRTIO_NET_F_GUEST_CSUM, true).is_ok());
        assert!(
            hdr(1, 0)
                .check(1 << VIRTIO_NET_F_GUEST_CSUM, false)
                .is_err()
        );
        assert!(hdr(1, 1).check(1 << VIRTIO_NET_F_CSUM, false).is_err());
        assert!(hdr(1, 1).check(all, false).is_ok());
        // ECN on top of TCPv6.
        assert!(
            hdr(0, 0x84)
                .check(1 << VIRTIO_NET_F_GUEST_TSO6, true)
                .is_ok()
        );
        assert_eq!(
            hdr(0, 5).check(all, true),
            Err(FrameError::UnknownGsoType { gso_type: 5 })
        );
    }

    #[test]
    fn short_frames_and_num_buffers() {
        assert_eq!(
            NetHeader::parse(&[0; 11]),
            Err(FrameError::ShortFrame { len: 11 })
        );
        let mut f = [0u8; 14];
        set_num_buffers(&mut f, 0x0302);
        assert_eq!(&f[10..12], &[2, 3]);
    }
}
