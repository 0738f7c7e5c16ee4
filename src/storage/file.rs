//! The file storage backend: a redb database in `persistence.path`.
//!
//! redb was chosen because it is a pure-Rust, embedded, crash-safe (copy-on-write B-trees with
//! checksummed commits) key-value store with ACID transactions and an explicit choice per
//! transaction between "durable on return" and "durable at the next durable commit", which
//! maps directly onto `persistence.sync` (`always` / `interval` / `never`) and group commit.

use super::codec;
use super::{Recovered, RecoveredSession, RecoverySink, Storage, StorageError, StorageOp};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default of `persistence.cache_size`, redb's page cache. redb's own default (1 GiB) would
/// let a long-running broker's store grow towards a gigabyte of memory; a smaller cache costs
/// some throughput with `sync: never | interval` (not with `always`, which waits for fsync).
pub const DEFAULT_CACHE_SIZE: u64 = crate::config::DEFAULT_STORE_CACHE_SIZE;

/// File name of the database inside `persistence.path`.
pub const DB_FILE: &str = "mqtt-broker.redb";

const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const INBOUND: TableDefinition<(&str, u16), ()> = TableDefinition::new("inbound");

/// A redb database holding retained messages and persistent sessions.
pub struct FileStorage {
    db: Database,
    path: PathBuf,
}

fn io(e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(e.to_string())
}

impl FileStorage {
    /// Opens (or creates) the store in directory `dir` with the default page cache.
    pub fn open(dir: &Path) -> Result<FileStorage, StorageError> {
        FileStorage::open_with_cache(dir, DEFAULT_CACHE_SIZE)
    }

    /// Opens (or creates) the store in directory `dir`, caching up to `cache_size` bytes of
    /// its pages. A corrupt or unreadable store is an error naming the path; it is never
    /// silently reset.
    pub fn open_with_cache(dir: &Path, cache_size: u64) -> Result<FileStorage, StorageError> {
        let path = dir.join(DB_FILE);
        let open_err = |reason: String| StorageError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let db = Database::builder()
            .set_cache_size(usize::try_from(cache_size).unwrap_or(usize::MAX))
            .create(&path)
            .map_err(|e| open_err(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        {
            // Create the tables so that reads of a fresh store find them.
            txn.open_table(RETAINED)
                .map_err(|e| open_err(e.to_string()))?;
            txn.open_table(SESSIONS)
                .map_err(|e| open_err(e.to_string()))?;
            txn.open_table(MESSAGES)
                .map_err(|e| open_err(e.to_string()))?;
            txn.open_table(INBOUND)
                .map_err(|e| open_err(e.to_string()))?;
        }
        txn.commit().map_err(|e| open_err(e.to_string()))?;
        Ok(FileStorage { db, path })
    }

    /// Location of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves a (corrupt) store directory aside to `DIR.corrupt-<unix time>` and returns the new name.
    pub fn move_aside(dir: &Path) -> std::io::Result<PathBuf> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut target = dir.as_os_str().to_owned();
        target.push(format!(".corrupt-{secs}"));
        let target = PathBuf::from(target);
        std::fs::rename(dir, &target)?;
        Ok(target)
    }

    /// Reads every table back into `sink` (the body of [`Storage::load_into`]), in chunks:
    /// one read transaction over redb's sorted tables, sessions merged with their messages
    /// and inbound ids (all keyed by client id first), so nothing is collected whole.
    fn read_into(&self, sink: &mut dyn RecoverySink) -> Result<(), StorageError> {
        const CHUNK: usize = 4096;
        let txn = self.db.begin_read().map_err(io)?;
        let mut chunk = Vec::with_capacity(CHUNK);
        for item in txn.open_table(RETAINED).map_err(io)?.iter().map_err(io)? {
            let (_, v) = item.map_err(io)?;
            chunk.push(codec::decode_message("retained", v.value())?.0);
            if chunk.len() == CHUNK {
                sink.retained(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
            }
        }
        if !chunk.is_empty() {
            sink.retained(chunk);
        }
        let messages = txn.open_table(MESSAGES).map_err(io)?;
        let inbound = txn.open_table(INBOUND).map_err(io)?;
        let mut messages = messages.iter().map_err(io)?.peekable();
        let mut inbound = inbound.iter().map_err(io)?.peekable();
        for item in txn.open_table(SESSIONS).map_err(io)?.iter().map_err(io)? {
            let (k, v) = item.map_err(io)?;
            let id: Arc<str> = Arc::from(k.value());
            let mut session = RecoveredSession {
                client_id: id.clone(),
                record: codec::decode_session(v.value())?,
                messages: Vec::new(),
                inbound: Vec::new(),
                stream_mark: 0,
            };
            // Rows of a client id below this one belong to no stored session: leftovers of a
            // deleted one, skipped.
            loop {
                if let Some(Err(e)) = messages.next_if(|r| r.is_err()) {
                    return Err(io(e));
                }
                let Some(Ok((key, _))) = messages.peek() else {
                    break;
                };
                let (owner, seq) = key.value();
                match owner.cmp(&*id) {
                    std::cmp::Ordering::Greater => break,
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        if let Some(Ok((_, value))) = messages.peek() {
                            session
                                .messages
                                .push(codec::decode_stored(seq, value.value())?);
                        }
                    }
                }
                messages.next();
            }
            loop {
                if let Some(Err(e)) = inbound.next_if(|r| r.is_err()) {
                    return Err(io(e));
                }
                let Some(Ok((key, _))) = inbound.peek() else {
                    break;
                };
                let (owner, pid) = key.value();
                match owner.cmp(&*id) {
                    std::cmp::Ordering::Greater => break,
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => session.inbound.push(pid),
                }
                inbound.next();
            }
            sink.session(session);
        }
        Ok(())
    }

    /// A store that opens but cannot be read back is as corrupt as one that does not open:
    /// the error names the file and how to move it aside.
    fn open_error(&self, e: StorageError) -> StorageError {
        match e {
            StorageError::Open { .. } => e,
            other => StorageError::Open {
                path: self.path.clone(),
                reason: other.to_string(),
            },
        }
    }
}

impl FileStorage {
    /// Writes `ops` in one transaction committed with `durability`.
    fn write_txn(&self, ops: &[StorageOp], durability: Durability) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(durability).map_err(io)?;
        {
            let mut tables = Tables {
                retained: txn.open_table(RETAINED).map_err(io)?,
                sessions: txn.open_table(SESSIONS).map_err(io)?,
                messages: txn.open_table(MESSAGES).map_err(io)?,
                inbound: txn.open_table(INBOUND).map_err(io)?,
                buf: Vec::new(),
            };
            tables.apply(ops)?;
        }
        txn.commit().map_err(io)
    }
}

/// The tables of one write transaction.
struct Tables<'t> {
    retained: redb::Table<'t, &'static str, &'static [u8]>,
    sessions: redb::Table<'t, &'static str, &'static [u8]>,
    messages: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    inbound: redb::Table<'t, (&'static str, u16), ()>,
    /// One encoding buffer for the whole transaction instead of one allocation per record.
    buf: Vec<u8>,
}

impl Tables<'_> {
    fn apply(&mut self, ops: &[StorageOp]) -> Result<(), StorageError> {
        let buf = &mut self.buf;
        for op in ops {
            match op {
                StorageOp::PutRetained(m) => {
                    codec::encode_message_into(buf, m, None, None);
                    self.retained
                        .insert(&*m.topic, buf.as_slice())
                        .map_err(io)?;
                }
                StorageOp::DeleteRetained(t) => {
                    self.retained.remove(&**t).map_err(io)?;
                }
                StorageOp::PutSession { client_id, record } => {
                    codec::encode_session_into(buf, record);
                    self.sessions
                        .insert(&**client_id, buf.as_slice())
                        .map_err(io)?;
                }
                StorageOp::DeleteSession(id) => {
                    let id: &str = id;
                    self.sessions.remove(id).map_err(io)?;
                    self.messages
                        .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)
                        .map_err(io)?;
                    self.inbound
                        .retain_in((id, 0u16)..=(id, u16::MAX), |_, _| false)
                        .map_err(io)?;
                }
                StorageOp::PutMessage { client_id, stored } => {
                    codec::encode_message_into(buf, &stored.message, stored.pid, stored.state);
                    self.messages
                        .insert((&**client_id, stored.seq), buf.as_slice())
                        .map_err(io)?;
                }
                StorageOp::DeleteMessage { client_id, seq } => {
                    self.messages.remove((&**client_id, *seq)).map_err(io)?;
                }
                StorageOp::PutInbound { client_id, pid } => {
                    self.inbound.insert((&**client_id, *pid), ()).map_err(io)?;
                }
                StorageOp::DeleteInbound { client_id, pid } => {
                    self.inbound.remove((&**client_id, *pid)).map_err(io)?;
                }
                StorageOp::StreamMark { .. } => {}
            }
        }
        Ok(())
    }
}

impl Storage for FileStorage {
    fn apply(&self, ops: &[StorageOp], durable: bool) -> Result<(), StorageError> {
        self.write_txn(
            ops,
            if durable {
                Durability::Immediate
            } else {
                Durability::None
            },
        )
    }

    fn sync(&self) -> Result<(), StorageError> {
        // An empty durable commit makes every earlier non-durable commit durable.
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(Durability::Immediate).map_err(io)?;
        txn.commit().map_err(io)
    }

    fn load(&self) -> Result<Recovered, StorageError> {
        let mut all = Recovered::default();
        self.load_into(&mut all)?;
        Ok(all)
    }

    fn load_into(&self, sink: &mut dyn RecoverySink) -> Result<(), StorageError> {
        self.read_into(sink).map_err(|e| self.open_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("mqtt-store-badrec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = FileStorage::open(&dir).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(RETAINED)
            .unwrap()
            .insert("a/b", &b"\xff not a record"[..])
            .unwrap();
        txn.commit().unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(
            err.contains("retained") && err.contains("--move-corrupt-store"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
