//! Client sessions: the per-client protocol state machine and the registry that finds a
//! session by client id and hands it from one connection to the next.

pub mod state;

pub use state::{DropReason, InboundQos2, Session, SessionLimits, WrongAck};
