//! Where a client's session lives when several nodes act as one: the interface the
//! connection asks before attaching a client (the cluster implements it; a single node has
//! none). Kept here, below the cluster, so that the core never depends on NATS.

use crate::hooks::ClientInfo;
use crate::protocol::LastWill;
use std::future::Future;
use std::pin::Pin;

/// A future the directory returns.
pub type DirectoryFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a claim does with the session the cluster stored for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimMode {
    /// Return it: the client resumes its session and this node does not hold it.
    Load,
    /// Leave it: this node holds the session already (its copy is the current one).
    Keep,
    /// Delete it: the client starts clean [MQTT-3.1.2-4].
    Discard,
}

/// The cluster-wide owner of each client id's session.
pub trait SessionDirectory: Send + Sync {
    /// Makes this node the one owner of `client_id`'s session, fencing any other node's
    /// connection for it [MQTT-3.1.4-2] once that node has stored what it held, and treats
    /// the stored session as `mode` says: [`ClaimMode::Load`] puts the stored session into
    /// this node's registry, caught up with what was published meanwhile. An error (the
    /// cluster is unreachable) refuses the connection.
    fn claim<'a>(
        &'a self,
        client_id: &'a str,
        mode: ClaimMode,
    ) -> DirectoryFuture<'a, Result<(), String>>;

    /// Records the will of a client that connected here (`None`: it has none), so that
    /// another node publishes it if this node dies while the client is connected; returns
    /// the token [`SessionDirectory::will_done`] takes.
    fn will_armed<'a>(
        &'a self,
        client: &'a ClientInfo,
        will: Option<&'a LastWill>,
    ) -> DirectoryFuture<'a, Option<u64>>;

    /// The connection whose will `token` recorded has ended here: its will was published,
    /// deferred or discarded by this node.
    fn will_done(&self, client_id: &str, token: u64);
}
