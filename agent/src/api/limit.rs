//! Bounds on the connections a listener keeps open, in all and per peer address, shared by the
//! gRPC service and the metrics endpoint. A connection over a bound is closed at once (a reset,
//! so neither side keeps it in TIME_WAIT) and counted: a flood costs an accept and a close, never
//! a task, a buffer or a store command. The per-peer bound keeps one flooding pod from taking
//! every slot, so kubelet's probes and the real scraper, each from its own address, still get
//! one.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use futures::{Stream, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tracing::warn;

/// Connections open on one listener, in all and per peer address.
#[derive(Debug)]
pub struct ConnectionLimit {
    /// The listener's name, for the log and the metrics' `listener` label.
    name: &'static str,
    max: usize,
    max_per_peer: usize,
    open: Mutex<Open>,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Peers with at least one connection (so at most `max` entries).
    by_peer: HashMap<IpAddr, usize>,
}

impl ConnectionLimit {
    /// At most `max` connections, `max_per_peer` of them from one address (both at least 1), on
    /// the listener called `name`.
    pub fn new(name: &'static str, max: usize, max_per_peer: usize) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            name,
            max: max.max(1),
            max_per_peer: max_per_peer.clamp(1, max.max(1)),
            open: Mutex::new(Open::default()),
            refused: AtomicU64::new(0),
        })
    }

    /// A slot for a connection from `peer`, held until the permit is dropped; `None` (and the
    /// refusal counted) when the listener or the peer is at its bound.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<ConnectionPermit> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let of_peer = open.by_peer.get(&peer).copied().unwrap_or(0);
        if open.total >= self.max || of_peer >= self.max_per_peer {
            drop(open);
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            // Logged at the 1st, 2nd, 4th, 8th... refusal: a flood shows in the log without
            // writing it.
            if refused.is_power_of_two() {
                warn!(
                    listener = self.name,
                    %peer,
                    refused,
                    max = self.max,
                    max_per_peer = self.max_per_peer,
                    "connection refused: over the listener's bound"
                );
            }
            return None;
        }
        open.total += 1;
        open.by_peer.insert(peer, of_peer + 1);
        Some(ConnectionPermit {
            limit: self.clone(),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Connections closed at once for being over a bound, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn max_per_peer(&self) -> usize {
        self.max_per_peer
    }

    /// Admits `stream` or closes it with a reset (counted).
    pub fn admit_stream(self: &Arc<Self>, stream: TcpStream) -> Option<Limited<TcpStream>> {
        let peer = stream.peer_addr().ok()?.ip();
        match self.admit(peer) {
            Some(permit) => Some(Limited {
                io: stream,
                _permit: permit,
            }),
            None => {
                refuse(stream);
                None
            }
        }
    }

    /// The accepted connections of `incoming` this limit admits; the others are closed as they
    /// arrive. Accept errors pass through.
    pub fn incoming<S>(
        self: Arc<Self>,
        incoming: S,
    ) -> impl Stream<Item = io::Result<Limited<TcpStream>>> + Send + 'static
    where
        S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
    {
        incoming.filter_map(move |accepted| {
            let admitted = match accepted {
                Ok(stream) => self.admit_stream(stream).map(Ok),
                Err(e) => Some(Err(e)),
            };
            std::future::ready(admitted)
        })
    }
}

/// Closes a refused connection with a reset rather than a FIN: the client learns at once, and
/// the agent keeps no TIME_WAIT entry per refusal.
pub fn refuse(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// A connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    limit: Arc<ConnectionLimit>,
    peer: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self
            .limit
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_peer.remove(&self.peer);
            }
        }
    }
}

/// An admitted connection: the stream and its slot, freed when the server drops it.
#[derive(Debug)]
pub struct Limited<IO> {
    io: IO,
    _permit: ConnectionPermit,
}

impl<IO> Limited<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bounds_in_all_and_per_peer_and_frees_on_drop() {
        let limit = ConnectionLimit::new("test", 3, 2);
        let a1 = limit.admit(ip("10.0.0.1")).unwrap();
        let _a2 = limit.admit(ip("10.0.0.1")).unwrap();
        assert!(limit.admit(ip("10.0.0.1")).is_none(), "per-peer bound");
        let _b1 = limit.admit(ip("10.0.0.2")).unwrap();
        assert!(limit.admit(ip("10.0.0.3")).is_none(), "total bound");
        assert_eq!((limit.open(), limit.refused()), (3, 2));
        drop(a1);
        assert_eq!(limit.open(), 2);
        let _c1 = limit.admit(ip("10.0.0.3")).unwrap();
        assert!(limit.admit(ip("10.0.0.1")).is_none());
    }

    #[test]
    fn bounds_are_at_least_one() {
        let limit = ConnectionLimit::new("test", 0, 0);
        assert_eq!((limit.max(), limit.max_per_peer()), (1, 1));
        let limit = ConnectionLimit::new("test", 4, 10);
        assert_eq!(limit.max_per_peer(), 4);
    }
}
