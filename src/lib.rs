//! mqtt-broker: an MQTT 3.1.1 broker for IoT fleets.
//!
//! Layers, each in its own module: [`protocol`] (codec, no I/O), [`transport`]
//! (listeners), [`session`] (sans-IO session state), [`routing`] (topic trie, retained
//! messages), [`config`], [`metrics`], and [`broker`] which wires them; [`connection`]
//! is the async shell that moves bytes between a socket and a session. Operations:
//! [`admin`] (the HTTP admin API), [`events`] (typed events for embedders), and the
//! crate-internal `ops` (readiness, client registry, graceful shutdown) and `limits`.

pub mod admin;
pub mod auth;
pub mod broker;
pub mod config;
pub(crate) mod connection;
pub mod events;
pub mod hooks;
pub(crate) mod limits;
pub mod logging;
pub mod metrics;
pub(crate) mod ops;
pub mod plugins;
pub mod protocol;
pub mod routing;
pub mod session;
pub mod storage;
pub mod transport;

pub use broker::{Broker, BrokerError, BrokerHandle};
pub use config::Config;
pub use events::BrokerEvent;
