//! Plain TCP listeners: bind, accept, and hand each socket to a connection task.

use crate::broker::Shared;
use crate::config::ListenerConfig;
use crate::connection::{self, ConnectionInfo};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tracing::{error, warn};

/// Binds a listener socket (with SO_REUSEADDR, so a restart can rebind at once).
pub(crate) async fn bind(cfg: &ListenerConfig) -> std::io::Result<TcpListener> {
    let socket = if cfg.bind.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(cfg.bind)?;
    socket.listen(1024)
}

/// Accepts connections until the task is aborted.
pub(crate) async fn accept_loop(listener: TcpListener, cfg: ListenerConfig, shared: Arc<Shared>) {
    let listener_conns = Arc::new(AtomicUsize::new(0));
    let name: Arc<str> = cfg.display_name().into();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning; existing clients are unaffected.
                error!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            warn!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let over_listener_limit = cfg
            .max_connections
            .is_some_and(|max| listener_conns.load(Ordering::Relaxed) >= max);
        let info = ConnectionInfo {
            peer,
            transport: cfg.protocol,
            listener: name.clone(),
            listener_conns: listener_conns.clone(),
            over_listener_limit,
        };
        tokio::spawn(connection::serve(shared.clone(), stream, info));
    }
}
