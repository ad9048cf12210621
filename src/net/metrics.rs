//! Connection metrics of the listeners: `trustmesh.connections.open` and
//! `trustmesh.connections.shed` (by listener and reason). Plain atomics read
//! by observable instruments, registered once per process.

use std::sync::Once;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use opentelemetry::KeyValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Tls,
    Http,
    Socket,
}

/// Why a connection was refused or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The listener holds its most connections.
    ListenerFull,
    /// The peer uid holds its most connections on the socket.
    PeerFull,
    /// No request (nor TLS handshake) within the first-request time.
    FirstRequest,
    /// No request in flight for the idle time.
    Idle,
}

const LISTENERS: [Listener; 3] = [Listener::Tls, Listener::Http, Listener::Socket];
const REASONS: [ShedReason; 4] =
    [ShedReason::ListenerFull, ShedReason::PeerFull, ShedReason::FirstRequest, ShedReason::Idle];

static OPEN: [AtomicI64; 3] = [AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0)];
static SHED: [[AtomicU64; 4]; 3] = [const { [const { AtomicU64::new(0) }; 4] }; 3];
static REGISTER: Once = Once::new();

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Http => "http",
            Self::Socket => "socket",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl ShedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ListenerFull => "listener_full",
            Self::PeerFull => "peer_full",
            Self::FirstRequest => "first_request_timeout",
            Self::Idle => "idle_timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub(super) fn register() {
    REGISTER.call_once(|| {
        let meter = opentelemetry::global::meter("trustmesh");
        meter
            .i64_observable_up_down_counter("trustmesh.connections.open")
            .with_description("Connections open, by listener")
            .with_callback(|o| {
                for l in LISTENERS {
                    o.observe(OPEN[l.index()].load(Ordering::Relaxed), &[KeyValue::new("listener", l.as_str())]);
                }
            })
            .build();
        meter
            .u64_observable_counter("trustmesh.connections.shed")
            .with_description("Connections refused or closed for a bound, by listener and reason")
            .with_callback(|o| {
                for l in LISTENERS {
                    for r in REASONS {
                        let n = SHED[l.index()][r.index()].load(Ordering::Relaxed);
                        if n > 0 {
                            o.observe(n, &[KeyValue::new("listener", l.as_str()), KeyValue::new("reason", r.as_str())]);
                        }
                    }
                }
            })
            .build();
    });
}

pub(super) fn opened(l: Listener) {
    OPEN[l.index()].fetch_add(1, Ordering::Relaxed);
}

pub(super) fn closed(l: Listener) {
    OPEN[l.index()].fetch_sub(1, Ordering::Relaxed);
}

pub(super) fn shed(l: Listener, r: ShedReason) {
    SHED[l.index()][r.index()].fetch_add(1, Ordering::Relaxed);
}
