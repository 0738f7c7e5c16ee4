//! Storage of what must survive a restart: retained messages and persistent sessions
//! (subscriptions, queued and inflight outbound messages, inbound QoS 2 packet ids).
//!
//! One trait, [`Storage`], with two backends: [`MemoryStorage`] (keeps state in the process,
//! e.g. for an embedder restarting a broker in-process, and for tests) and [`FileStorage`]
//! (a crash-safe redb database). The broker never calls a backend on its hot path: state
//! changes are journaled as [`StorageOp`]s and applied in batches by [`writer::StorageHandle`],
//! which makes concurrent writers share one fsync (group commit).
//! Clean sessions and QoS 0 messages are never written.
//!
//! Owns the stored form and the writer thread; must not import the session registry, the
//! router or anything that runs on a connection.

pub(crate) mod codec;
pub mod file;
pub mod memory;
pub mod writer;

pub use file::FileStorage;
pub use memory::MemoryStorage;
pub use writer::StorageHandle;

use crate::model::OutboundState;
use crate::model::{Message, Subscription};
#[cfg(test)]
use crate::protocol::QoS;

use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;

/// A storage failure.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The store could not be opened or read; it may be corrupt.
    #[error("cannot open the store at {path}: {reason} (start with --move-corrupt-store to move it aside and start empty)")]
    Open {
        /// Store location.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A record could not be decoded.
    #[error("corrupt record in {table}: {reason}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A read or write failed.
    #[error("storage I/O failed: {0}")]
    Io(String),
}

/// An outbound message of a persistent session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Position in the session's outbound sequence.
    pub seq: u64,
    /// The message at the QoS granted to the subscriber.
    pub message: Message,
    /// Packet id once sent (inflight), none while queued.
    pub pid: Option<u16>,
    /// Acknowledgement state once sent.
    pub state: Option<OutboundState>,
}

/// A persistent session's record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    /// User name the client last connected with (for delivery ACL checks while offline).
    pub username: Option<String>,
    /// Subscriptions with granted QoS, MQTT 5 options and identifiers.
    pub subscriptions: Vec<(String, Subscription)>,
    /// MQTT 5 Session Expiry Interval (seconds); `None` for a 3.1.1 session.
    pub expiry_interval: Option<u32>,
    /// A will waiting for its Will Delay Interval (MQTT 5).
    pub pending_will: Option<StoredWill>,
    /// Wall-clock milliseconds of the last disconnect (0 = online or unknown), for expiry.
    pub last_seen_ms: u64,
}

/// A will whose publication waits for its delay: published at `due_ms` (wall clock) unless
/// its client reconnects first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWill {
    /// The will.
    pub will: crate::protocol::LastWill,
    /// When to publish it, milliseconds since the Unix epoch.
    pub due_ms: u64,
}

/// One state change to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageOp {
    /// Store or replace the retained message of a topic.
    PutRetained(Message),
    /// Delete the retained message of a topic.
    DeleteRetained(Arc<str>),
    /// Store or replace a persistent session's record.
    PutSession {
        /// Client identifier.
        client_id: Arc<str>,
        /// The record.
        record: SessionRecord,
    },
    /// Delete a session with its messages and inbound ids.
    DeleteSession(Arc<str>),
    /// Store or replace an outbound message of a session.
    PutMessage {
        /// Client identifier.
        client_id: Arc<str>,
        /// The message and its state.
        stored: StoredMessage,
    },
    /// Delete an outbound message (acknowledged).
    DeleteMessage {
        /// Client identifier.
        client_id: Arc<str>,
        /// Its sequence number.
        seq: u64,
    },
    /// Remember an inbound QoS 2 packet id until PUBREL.
    PutInbound {
        /// Client identifier.
        client_id: Arc<str>,
        /// Packet id.
        pid: u16,
    },
    /// Forget an inbound QoS 2 packet id.
    DeleteInbound {
        /// Client identifier.
        client_id: Arc<str>,
        /// Packet id.
        pid: u16,
    },
    /// The cluster's message stream position up to which the session has seen every
    /// message (a node resuming it replays the stream after it). Only the cluster's store
    /// keeps it; the single-node stores ignore it.
    StreamMark {
        /// Client identifier.
        client_id: Arc<str>,
        /// Stream sequence.
        seq: u64,
    },
}

/// A session as loaded at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Its record.
    pub record: SessionRecord,
    /// Outbound messages, any order.
    pub messages: Vec<StoredMessage>,
    /// Inbound QoS 2 ids awaiting PUBREL.
    pub inbound: Vec<u16>,
    /// The cluster's stream position the session has seen (0: none or not a cluster).
    pub stream_mark: u64,
}

/// Everything loaded at start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Retained messages.
    pub retained: Vec<Message>,
    /// Persistent sessions.
    pub sessions: Vec<RecoveredSession>,
}

/// A storage backend.
pub trait Storage: Send + Sync + 'static {
    /// Applies a batch atomically; with `durable`, returns only once it survives a crash.
    fn apply(&self, ops: &[StorageOp], durable: bool) -> Result<(), StorageError>;
    /// Makes everything applied so far durable.
    fn sync(&self) -> Result<(), StorageError>;
    /// Loads the whole state.
    fn load(&self) -> Result<Recovered, StorageError>;
    /// Streams the whole state into `sink`: retained messages in chunks, then one session at
    /// a time, so that recovery holds one chunk of decoded records next to what the sink has
    /// taken, never a second copy of the whole store. The default loads everything first.
    fn load_into(&self, sink: &mut dyn RecoverySink) -> Result<(), StorageError> {
        let recovered = self.load()?;
        sink.retained(recovered.retained);
        for session in recovered.sessions {
            sink.session(session);
        }
        Ok(())
    }
}

/// Takes the stored state as [`Storage::load_into`] reads it.
pub trait RecoverySink {
    /// A chunk of retained messages.
    fn retained(&mut self, chunk: Vec<Message>);
    /// A persistent session with its messages and inbound packet ids.
    fn session(&mut self, session: RecoveredSession);
}

/// Collects everything (what [`Storage::load`] returns).
impl RecoverySink for Recovered {
    fn retained(&mut self, mut chunk: Vec<Message>) {
        self.retained.append(&mut chunk);
    }

    fn session(&mut self, session: RecoveredSession) {
        self.sessions.push(session);
    }
}

/// A [`RecoverySink`] made of two functions, counting what passed through them.
pub struct FnSink<R, S> {
    on_retained: R,
    on_session: S,
    /// Retained messages handed on so far.
    pub retained: usize,
    /// Sessions handed on so far.
    pub sessions: usize,
}

impl<R: FnMut(Vec<Message>), S: FnMut(RecoveredSession)> FnSink<R, S> {
    /// Hands retained chunks to `on_retained` and sessions to `on_session`.
    pub fn new(on_retained: R, on_session: S) -> Self {
        FnSink {
            on_retained,
            on_session,
            retained: 0,
            sessions: 0,
        }
    }
}

impl<R: FnMut(Vec<Message>), S: FnMut(RecoveredSession)> RecoverySink for FnSink<R, S> {
    fn retained(&mut self, chunk: Vec<Message>) {
        self.retained += chunk.len();
        (self.on_retained)(chunk);
    }

    fn session(&mut self, session: RecoveredSession) {
        self.sessions += 1;
        (self.on_session)(session);
    }
}

#[cfg(test)]
mod tests {
    //! One suite, run against both backends.
    use super::*;
    use bytes::Bytes;

    fn msg(topic: &str, payload: &'static [u8], qos: QoS) -> Message {
        Message::new(topic, Bytes::from_static(payload), qos, false)
    }

    fn write_scenario(store: &dyn Storage) {
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let retained = Message {
            retain: true,
            ..msg("r/1", b"25.5", QoS::AtLeastOnce)
        };
        store
            .apply(
                &[
                    StorageOp::PutRetained(retained.clone()),
                    StorageOp::PutRetained(msg("r/2", b"x", QoS::AtMostOnce)),
                    StorageOp::DeleteRetained(Arc::from("r/2")),
                    StorageOp::PutSession {
                        client_id: a.clone(),
                        record: SessionRecord {
                            pending_will: Some(StoredWill {
                                will: crate::protocol::LastWill {
                                    topic: "wills/a".into(),
                                    payload: bytes::Bytes::from_static(b"gone"),
                                    qos: QoS::AtLeastOnce,
                                    retain: true,
                                    properties: Some(Box::new(crate::protocol::Properties {
                                        user_properties: vec![("k".into(), "v".into())],
                                        ..Default::default()
                                    })),
                                },
                                due_ms: 1_700_000_000_000,
                            }),
                            expiry_interval: None,
                            username: Some("alice".into()),
                            subscriptions: vec![
                                ("s/#".into(), Subscription::qos(QoS::ExactlyOnce)),
                                (
                                    "t".into(),
                                    Subscription {
                                        qos: QoS::AtLeastOnce,
                                        options: crate::protocol::SubscriptionOptions {
                                            no_local: true,
                                            retain_as_published: true,
                                            retain_handling:
                                                crate::protocol::RetainHandling::DoNotSend,
                                        },
                                        id: Some(7),
                                    },
                                ),
                            ],
                            last_seen_ms: 42,
                        },
                    },
                    StorageOp::PutSession {
                        client_id: b.clone(),
                        record: SessionRecord::default(),
                    },
                    StorageOp::PutMessage {
                        client_id: a.clone(),
                        stored: StoredMessage {
                            seq: 2,
                            message: msg("s/x", b"two", QoS::ExactlyOnce),
                            pid: None,
                            state: None,
                        },
                    },
                    StorageOp::PutMessage {
                        client_id: a.clone(),
                        stored: StoredMessage {
                            seq: 1,
                            message: msg("s/x", b"one", QoS::AtLeastOnce),
                            pid: Some(7),
                            state: Some(OutboundState::AwaitPubAck),
                        },
                    },
                    StorageOp::PutMessage {
                        client_id: a.clone(),
                        stored: StoredMessage {
                            seq: 3,
                            message: msg("s/x", b"three", QoS::AtLeastOnce),
                            pid: None,
                            state: None,
                        },
                    },
                    StorageOp::DeleteMessage {
                        client_id: a.clone(),
                        seq: 3,
                    },
                    StorageOp::PutInbound {
                        client_id: a.clone(),
                        pid: 9,
                    },
                    StorageOp::PutInbound {
                        client_id: a.clone(),
                        pid: 10,
                    },
                    StorageOp::DeleteInbound {
                        client_id: a.clone(),
                        pid: 10,
                    },
                    StorageOp::PutMessage {
                        client_id: b.clone(),
                        stored: StoredMessage {
                            seq: 1,
                            message: msg("q", b"b1", QoS::AtLeastOnce),
                            pid: None,
                            state: None,
                        },
                    },
                    StorageOp::PutInbound {
                        client_id: b.clone(),
                        pid: 1,
                    },
                ],
                true,
            )
            .unwrap();
        // Replacing a message updates its state in place.
        store
            .apply(
                &[StorageOp::PutMessage {
                    client_id: a.clone(),
                    stored: StoredMessage {
                        seq: 2,
                        message: msg("s/x", b"", QoS::ExactlyOnce),
                        pid: Some(8),
                        state: Some(OutboundState::AwaitPubComp),
                    },
                }],
                true,
            )
            .unwrap();
        store
            .apply(&[StorageOp::DeleteSession(b.clone())], false)
            .unwrap();
        store.sync().unwrap();
    }

    fn check(loaded: Recovered) {
        let retained = Message {
            retain: true,
            ..msg("r/1", b"25.5", QoS::AtLeastOnce)
        };
        {
            assert_eq!(loaded.retained, vec![retained.clone()]);
            assert_eq!(loaded.sessions.len(), 1, "{loaded:?}");
            let s = &loaded.sessions[0];
            assert_eq!(&*s.client_id, "a");
            assert_eq!(s.record.username.as_deref(), Some("alice"));
            assert_eq!(s.record.subscriptions.len(), 2);
            assert_eq!(s.record.last_seen_ms, 42);
            let mut m = s.messages.clone();
            m.sort_by_key(|m| m.seq);
            assert_eq!(m.len(), 2);
            assert_eq!(
                (m[0].seq, m[0].pid, m[0].state),
                (1, Some(7), Some(OutboundState::AwaitPubAck))
            );
            assert_eq!(&m[0].message.payload[..], b"one");
            assert_eq!(
                (m[1].seq, m[1].pid, m[1].state),
                (2, Some(8), Some(OutboundState::AwaitPubComp))
            );
            assert_eq!(s.inbound, vec![9]);
        }
    }

    /// Streaming hands on the same state as loading it whole.
    fn check_streamed(store: &dyn Storage) {
        let mut streamed = Recovered::default();
        store.load_into(&mut streamed).unwrap();
        check(streamed);
    }

    #[test]
    fn memory_backend() {
        let store = MemoryStorage::default();
        write_scenario(&store);
        check(store.load().unwrap());
        check_streamed(&store);
        // A second handle on the same state sees it (an in-process restart).
        check(store.clone().load().unwrap());
    }

    #[test]
    fn file_backend() {
        let dir = std::env::temp_dir().join(format!("mqtt-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = FileStorage::open(&dir).unwrap();
            write_scenario(&store);
            check(store.load().unwrap());
        }
        // Everything is there after closing and reopening the database.
        check(FileStorage::open(&dir).unwrap().load().unwrap());
        check_streamed(&FileStorage::open(&dir).unwrap());
    }

    #[test]
    fn corrupt_file_is_a_clear_error_naming_the_path() {
        let dir = std::env::temp_dir().join(format!("mqtt-store-corrupt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(file::DB_FILE),
            b"this is not a redb database at all, sorry",
        )
        .unwrap();
        let err = FileStorage::open(&dir).err().unwrap().to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
    }
}
