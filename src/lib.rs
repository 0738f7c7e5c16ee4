//! mqtt-broker: an MQTT 3.1.1 broker for IoT fleets.
//!
//! Layers, lowest first (a module imports only modules above it in this list; no cycles):
//! - leaves: [`protocol`] (codec, no I/O), [`model`] (message, client info, close reasons);
//! - schema and plumbing: [`config`] (the YAML schema only), [`events`], [`metrics`]
//!   (counters), `limits`, [`logging`];
//! - state machines and stores: [`session`] (one client's session), [`routing`] (topic trie,
//!   retained store), [`storage`];
//! - security: [`hooks`] (the traits and chain), [`auth`] (password and ACL files),
//!   [`plugins`] (the Wasm host);
//! - [`core`]: the runtime, session registry, routing seam and the sans-IO protocol engine;
//! - [`connection`]: the async shell between a socket and the engine; [`transport`]: TCP,
//!   TLS and WebSocket listeners; [`bridge`]: connections to remote brokers, each an
//!   in-process client of this broker relayed to a remote one;
//! - [`admin`]: the operator surfaces (HTTP API, Prometheus, `$SYS`, the config watcher),
//!   reaching the broker only through `core::control::Control`;
//! - [`broker`]: the server that wires them, and the embedding API.

pub mod admin;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod cluster;
pub mod config;
pub(crate) mod connection;
pub mod core;
pub mod events;
pub mod history;
pub mod hooks;
pub(crate) mod limits;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod plugins;
pub mod protocol;
pub mod routing;
pub mod session;
pub mod storage;
pub mod transport;

pub use broker::{Broker, BrokerError, BrokerHandle};
pub use config::Config;
pub use events::BrokerEvent;
