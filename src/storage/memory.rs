//! The in-memory storage backend: the same semantics as the file store, kept in the process.
//! Cloning a `MemoryStorage` shares its state, so an embedder can stop a broker and start a
//! new one on the same store.

use super::{
    Recovered, RecoveredSession, SessionRecord, Storage, StorageError, StorageOp, StoredMessage,
};
use crate::model::Message;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Default)]
struct State {
    retained: BTreeMap<Arc<str>, Message>,
    sessions: BTreeMap<Arc<str>, SessionRecord>,
    messages: BTreeMap<(Arc<str>, u64), StoredMessage>,
    inbound: BTreeSet<(Arc<str>, u16)>,
}

/// State kept in memory; survives a broker restart within the process, not a process exit.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    state: Arc<Mutex<State>>,
}

impl Storage for MemoryStorage {
    fn apply(&self, ops: &[StorageOp], _durable: bool) -> Result<(), StorageError> {
        let mut s = self.state.lock();
        for op in ops {
            match op {
                StorageOp::PutRetained(m) => {
                    s.retained.insert(m.topic.clone(), m.clone());
                }
                StorageOp::DeleteRetained(t) => {
                    s.retained.remove(t);
                }
                StorageOp::PutSession { client_id, record } => {
                    s.sessions.insert(client_id.clone(), record.clone());
                }
                StorageOp::DeleteSession(id) => {
                    s.sessions.remove(id);
                    s.messages.retain(|(c, _), _| c != id);
                    s.inbound.retain(|(c, _)| c != id);
                }
                StorageOp::PutMessage { client_id, stored } => {
                    s.messages
                        .insert((client_id.clone(), stored.seq), stored.clone());
                }
                StorageOp::DeleteMessage { client_id, seq } => {
                    s.messages.remove(&(client_id.clone(), *seq));
                }
                StorageOp::PutInbound { client_id, pid } => {
                    s.inbound.insert((client_id.clone(), *pid));
                }
                StorageOp::DeleteInbound { client_id, pid } => {
                    s.inbound.remove(&(client_id.clone(), *pid));
                }
                StorageOp::StreamMark { .. } => {}
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn load(&self) -> Result<Recovered, StorageError> {
        let s = self.state.lock();
        Ok(Recovered {
            retained: s.retained.values().cloned().collect(),
            sessions: s
                .sessions
                .iter()
                .map(|(id, record)| RecoveredSession {
                    client_id: id.clone(),
                    record: record.clone(),
                    messages: s
                        .messages
                        .iter()
                        .filter(|((c, _), _)| c == id)
                        .map(|(_, m)| m.clone())
                        .collect(),
                    inbound: s
                        .inbound
                        .iter()
                        .filter(|(c, _)| c == id)
                        .map(|(_, p)| *p)
                        .collect(),
                    stream_mark: 0,
                })
                .collect(),
        })
    }
}
