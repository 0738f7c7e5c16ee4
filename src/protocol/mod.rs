//! The MQTT 3.1.1 protocol: packet types, the wire codec and topic rules.
//!
//! Pure code: no I/O, no broker state. Everything else in the crate builds on it.
//!
//! Owns the wire format only; must not import any other module of the crate.

pub mod codec;
pub mod error;
pub mod packet;
pub mod topic;

#[cfg(test)]
mod codec_v5_tests;

pub use codec::{decode, encode};
pub use error::ProtocolError;
pub use packet::*;
