//! Which trust snapshot each connected proxy has acknowledged.
//!
//! A CA rotation may not make a new CA sign before every proxy trusts it: a
//! proxy that has not yet applied a bundle holding the new CA would refuse
//! the first certificate it signs. xDS says when a proxy applied a push: it
//! ACKs the push's nonce. Each SDS stream (and, later, each agent stream)
//! registers here and reports the trust revision it is known to hold; the
//! issuer asks who is behind a revision before `pki ca activate`.
//!
//! A stream holds revision R when it has ACKed a response built from
//! snapshot R, or when it has nothing in flight and has not NACKed since its
//! last ACK while its current state is built from R (nothing it subscribes
//! to changed). Reporting is one atomic store per ACK; registering and
//! leaving take a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Every connected stream's acknowledged trust revision.
#[derive(Debug, Default)]
pub struct Acknowledgements {
    streams: Mutex<HashMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    /// The proxy's node id (or the agent's node name).
    node_id: String,
    /// `sds` or `agent`.
    kind: &'static str,
    acked: AtomicU64,
}

/// A stream that has not acknowledged the revision asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behind {
    pub node_id: String,
    pub kind: &'static str,
    /// The newest revision it has acknowledged (0: none yet).
    pub acked: u64,
}

impl Acknowledgements {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a stream; it leaves when the handle is dropped.
    pub fn register(self: &Arc<Self>, node_id: &str, kind: &'static str) -> AckHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry { node_id: node_id.to_string(), kind, acked: AtomicU64::new(0) });
        self.streams.lock().insert(id, entry.clone());
        AckHandle { registry: Arc::downgrade(self), id, entry }
    }

    /// The streams that have not acknowledged `revision` yet, by node id.
    pub fn behind(&self, revision: u64) -> Vec<Behind> {
        let mut behind: Vec<Behind> = self
            .streams
            .lock()
            .values()
            .filter(|e| e.acked.load(Ordering::Acquire) < revision)
            .map(|e| Behind { node_id: e.node_id.clone(), kind: e.kind, acked: e.acked.load(Ordering::Acquire) })
            .collect();
        behind.sort_by(|a, b| (&a.node_id, a.acked).cmp(&(&b.node_id, b.acked)));
        behind
    }

    /// The lowest revision any registered stream holds (`None`: no stream).
    pub fn lowest(&self) -> Option<u64> {
        self.streams.lock().values().map(|e| e.acked.load(Ordering::Acquire)).min()
    }

    /// How many streams are registered.
    pub fn len(&self) -> usize {
        self.streams.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One stream's place in [`Acknowledgements`].
#[derive(Debug)]
pub struct AckHandle {
    registry: Weak<Acknowledgements>,
    id: u64,
    entry: Arc<Entry>,
}

impl AckHandle {
    /// The stream holds `revision` (revisions only move forward).
    pub fn acked(&self, revision: u64) {
        self.entry.acked.fetch_max(revision, Ordering::AcqRel);
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.streams.lock().remove(&self.id);
        }
    }
}

/// What one stream has in flight, and so which revision it holds: fed by the
/// stream's driver with what it sends and what the client answers. Pure.
#[derive(Debug, Default)]
pub struct AckTracker {
    /// (nonce, revision) of each response not answered yet, oldest first.
    in_flight: Vec<(u64, u64)>,
    /// A response was NACKed and nothing was ACKed since.
    nacked: bool,
    acked: u64,
}

impl AckTracker {
    /// A response with `nonce` built from revision `revision` was sent.
    pub fn sent(&mut self, nonce: u64, revision: u64) {
        self.in_flight.push((nonce, revision));
    }

    /// The client ACKed `nonce`: that response and the older ones of the
    /// same request stream are settled.
    pub fn ack(&mut self, nonce: u64) {
        if let Some(i) = self.in_flight.iter().position(|(n, _)| *n == nonce) {
            let (_, revision) = self.in_flight.remove(i);
            self.acked = self.acked.max(revision);
            self.nacked = false;
        }
    }

    /// The client NACKed `nonce`: it kept what it had before.
    pub fn nack(&mut self, nonce: u64) {
        self.in_flight.retain(|(n, _)| *n != nonce);
        self.nacked = true;
    }

    /// The revision the stream holds, its current state being built from `current`.
    pub fn holds(&mut self, current: u64) -> u64 {
        if self.in_flight.is_empty() && !self.nacked {
            self.acked = self.acked.max(current);
        }
        self.acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_holds_what_it_acked_and_nothing_it_nacked() {
        // (step, the current revision, what the stream holds after it)
        enum Step {
            Sent(u64, u64),
            Ack(u64),
            Nack(u64),
            Quiet,
        }
        use Step::*;
        let table: &[(Step, u64, u64)] = &[
            (Sent(1, 1), 1, 0), // first response in flight
            (Ack(1), 1, 1),
            (Quiet, 2, 2),      // revision 2 changed nothing it subscribes to
            (Sent(2, 3), 3, 2), // revision 3 pushed
            (Sent(3, 3), 3, 2), // and another type of it
            (Ack(2), 3, 3),     // one ACKed
            (Nack(3), 3, 3),    // the other NACKed: still holds what it ACKed
            (Quiet, 4, 3),      // a NACK since the last ACK: not up to date
            (Sent(4, 5), 5, 3),
            (Ack(4), 5, 5),  // a later ACK settles it
            (Ack(99), 5, 5), // unknown nonces change nothing
            (Quiet, 6, 6),
        ];
        let mut t = AckTracker::default();
        for (i, (step, current, holds)) in table.iter().enumerate() {
            match step {
                Sent(n, r) => t.sent(*n, *r),
                Ack(n) => t.ack(*n),
                Nack(n) => t.nack(*n),
                Quiet => {}
            }
            assert_eq!(t.holds(*current), *holds, "step {i}");
        }
    }

    #[test]
    fn the_registry_names_who_is_behind_and_forgets_who_left() {
        let acks = Acknowledgements::new();
        let a = acks.register("envoy-a", "sds");
        let b = acks.register("envoy-b", "sds");
        a.acked(5);
        b.acked(3);
        b.acked(2); // never backwards
        assert_eq!(acks.behind(4), [Behind { node_id: "envoy-b".into(), kind: "sds", acked: 3 }]);
        assert!(acks.behind(3).is_empty());
        drop(b);
        assert!(acks.behind(5).is_empty());
        assert_eq!(acks.len(), 1);
        drop(a);
        assert!(acks.is_empty());
    }
}
