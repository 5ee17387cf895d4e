//! `cros-messages`: every message crosd's actors exchange, the [`Envelope`] that carries them, and
//! the stream framing (little-endian `u32` length + postcard bytes) used on every socket.
//!
//! Nothing here knows about actix, KVM or a particular transport: the framing works over any
//! `std::io::Read`/`Write` and, with the `tokio` feature, over tokio's async streams.

pub mod addr;
pub mod bus;
pub mod chunneld;
pub mod cicerone;
pub mod concierge;
pub mod crosvm;
pub mod envelope;
pub mod error;
pub mod framing;
pub mod garcon;
pub mod hybrid_vsock;
pub mod imageloader;
pub mod maitred;
pub mod patchpanel;
pub mod ports;
pub mod seneschal;
pub mod termina;
pub mod trace;
pub mod tremplin;
pub mod vmlog;
pub mod vsh;

#[cfg(test)]
mod proptests;

pub use addr::{ActorKind, Addr, AddrParseError};
pub use envelope::{Body, BodyKind, Envelope, Hello};
pub use error::{CrosError, ErrorKind, FrameError};

/// Wire protocol version carried in every [`Hello`] and [`Envelope`]. Bump on any incompatible
/// change to a message; peers with different versions refuse each other with a clear error.
pub const PROTOCOL_VERSION: u16 = 1;
