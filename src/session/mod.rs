//! One client's session: the sans-IO state machine of its subscriptions, queues, inflight
//! window and inbound QoS 2 ids ([`state`]).
//!
//! Owns a session's state and its journal of storage operations; must not touch sockets,
//! clocks, other sessions or the registry that holds it (`crate::core::registry`).

pub mod state;

pub use state::{DropReason, InboundQos2, Session, SessionLimits, WrongAck};
