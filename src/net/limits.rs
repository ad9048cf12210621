//! What clients of one listener can hold: connections (in all, and per peer
//! uid on the local socket), the time until a connection's first request,
//! and the time it may sit with no request in flight.
//!
//! The budgets come from the process's file-descriptor limit, with a reserve
//! no listener can take: a flood of half-open connections on the plaintext
//! port or the socket fills that listener's budget and is shed there, while
//! the TLS port, the store, and connections already serving (an Envoy's SDS
//! stream is a request in flight for its whole life) keep working. Every
//! connection refused or closed for a bound is counted, and logged at most
//! once per [`SHED_LOG_INTERVAL`] per listener.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::metrics::{self, Listener, ShedReason};
use crate::domain::throttle::Throttle;

/// At most one log line per listener per this interval about shed connections.
pub const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_connections: usize,
    /// Most connections one peer uid may hold (local socket only).
    pub per_peer: Option<usize>,
    /// A connection whose first request has not arrived by then is closed.
    pub first_request: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle: Duration,
}

impl ListenerLimits {
    /// No bound on connections, the default timeouts: for a server embedded in
    /// a test or a benchmark, where the process's budget is not the point.
    pub fn unbounded() -> Self {
        Self {
            max_connections: usize::MAX / 2,
            per_peer: None,
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(300),
        }
    }
}

/// The bounds of every listener, from one file-descriptor budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub tls: ListenerLimits,
    pub http: ListenerLimits,
    pub socket: ListenerLimits,
    /// Descriptors no listener may take (store, files, outbound connections).
    pub reserve: usize,
}

impl Limits {
    /// Splits `fd_limit` descriptors: a tenth (at least 64) in reserve, then
    /// half of the rest to the TLS port (remote proxies and agents, the CLI),
    /// two fifths to the local socket (a quarter of that per uid) and a tenth
    /// to the plaintext port (health, metrics, bundle, CRL).
    pub fn from_fd_limit(fd_limit: u64, first_request: Duration, idle: Duration) -> Self {
        let fds = usize::try_from(fd_limit).unwrap_or(usize::MAX).min(1 << 24);
        let reserve = (fds / 10).max(64).min(fds);
        let usable = fds - reserve;
        let listener = |max_connections: usize, per_peer: Option<usize>| ListenerLimits {
            max_connections: max_connections.max(1),
            per_peer,
            first_request,
            idle,
        };
        let socket = usable * 4 / 10;
        Self {
            tls: listener(usable / 2, None),
            http: listener(usable / 10, None),
            socket: listener(socket, Some((socket / 4).max(1))),
            reserve,
        }
    }
}

/// Admits connections of one listener within its bounds.
pub struct Gate {
    listener: Listener,
    limits: ListenerLimits,
    open: AtomicUsize,
    per_peer: Mutex<HashMap<u32, usize>>,
    shed_log: Mutex<Throttle>,
}

/// One admitted connection; dropping it frees its place.
pub struct Admission {
    gate: Arc<Gate>,
    peer: Option<u32>,
}

impl Gate {
    pub fn new(listener: Listener, limits: ListenerLimits) -> Arc<Self> {
        metrics::register();
        Arc::new(Self {
            listener,
            limits,
            open: AtomicUsize::new(0),
            per_peer: Mutex::new(HashMap::new()),
            shed_log: Mutex::new(Throttle::new(SHED_LOG_INTERVAL)),
        })
    }

    pub fn limits(&self) -> &ListenerLimits {
        &self.limits
    }

    /// A place for a new connection (of peer uid `peer`), or `None` when the
    /// listener or the peer is at its bound (counted and logged).
    pub fn admit(self: &Arc<Self>, peer: Option<u32>) -> Option<Admission> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.shed(ShedReason::ListenerFull, peer);
            return None;
        }
        if let (Some(uid), Some(max)) = (peer, self.limits.per_peer) {
            let mut per_peer = self.per_peer.lock();
            let held = per_peer.entry(uid).or_insert(0);
            if *held >= max {
                drop(per_peer);
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.shed(ShedReason::PeerFull, peer);
                return None;
            }
            *held += 1;
        }
        metrics::opened(self.listener);
        Some(Admission { gate: self.clone(), peer: peer.filter(|_| self.limits.per_peer.is_some()) })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Counts a connection closed after its idle time (normal, not logged).
    pub fn closed_idle(&self) {
        metrics::shed(self.listener, ShedReason::Idle);
    }

    /// `accept` failed (typically: out of file descriptors); logged at most
    /// once per interval with the listener's state.
    pub fn accept_failed(&self, err: &std::io::Error) {
        if let Some(held_back) = self.shed_log.lock().admit(Instant::now()) {
            tracing::error!(
                listener = self.listener.as_str(),
                error = %err,
                open = self.open(),
                failed_since_last_report = held_back,
                "accepting a connection failed"
            );
        }
    }

    /// Counts a connection refused or closed for a bound; logs the first one
    /// and then one line per interval with how many followed.
    pub fn shed(&self, reason: ShedReason, peer: Option<u32>) {
        metrics::shed(self.listener, reason);
        if let Some(held_back) = self.shed_log.lock().admit(Instant::now()) {
            tracing::warn!(
                listener = self.listener.as_str(),
                reason = reason.as_str(),
                peer_uid = peer,
                open = self.open(),
                max_connections = self.limits.max_connections,
                shed_since_last_report = held_back,
                "connection shed"
            );
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(uid) = self.peer {
            let mut per_peer = self.gate.per_peer.lock();
            if let Some(held) = per_peer.get_mut(&uid) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    per_peer.remove(&uid);
                }
            }
        }
        metrics::closed(self.gate.listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(10);

    #[test]
    fn budgets_split_the_descriptor_limit_and_keep_a_reserve() {
        let l = Limits::from_fd_limit(20_000, S, S);
        assert_eq!(l.reserve, 2_000);
        assert_eq!((l.tls.max_connections, l.socket.max_connections, l.http.max_connections), (9_000, 7_200, 1_800));
        assert_eq!(l.socket.per_peer, Some(1_800));
        let total = l.tls.max_connections + l.socket.max_connections + l.http.max_connections + l.reserve;
        assert!(total <= 20_000);
        let small = Limits::from_fd_limit(256, S, S);
        assert_eq!(small.reserve, 64);
        assert!(small.http.max_connections >= 1 && small.socket.per_peer >= Some(1));
        let tiny = Limits::from_fd_limit(10, S, S);
        assert_eq!(tiny.reserve, 10);
        assert_eq!(tiny.tls.max_connections, 1);
    }

    #[test]
    fn a_full_listener_and_a_full_peer_are_shed_and_places_come_back_on_drop() {
        let limits = ListenerLimits { max_connections: 3, per_peer: Some(2), first_request: S, idle: S };
        let gate = Gate::new(Listener::Socket, limits);
        let a1 = gate.admit(Some(1)).unwrap();
        let a2 = gate.admit(Some(1)).unwrap();
        assert!(gate.admit(Some(1)).is_none(), "uid 1 holds its two places");
        let b1 = gate.admit(Some(2)).unwrap();
        assert!(gate.admit(Some(3)).is_none(), "the listener is full");
        assert_eq!(gate.open(), 3);
        drop(a1);
        assert!(gate.admit(Some(3)).is_some_and(|a3| {
            drop(a3);
            true
        }));
        let a3 = gate.admit(Some(1)).unwrap();
        drop((a2, a3, b1));
        assert_eq!(gate.open(), 0);
        assert!(gate.per_peer.lock().is_empty());
    }
}
