//! Encode each secret once and share the bytes: every stream that sends the
//! same certificate or validation context sends the same `Arc`'d buffer.
//!
//! Entries are weak: a secret lives as long as some stream holds it (streams
//! keep what they last sent), and is encoded again only if nobody did.
//! Dead entries are swept when the map has doubled since the last sweep, so
//! memory follows what is in use, not what was ever sent.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::protocol::Encoded;
use super::resources::ValidatorMode;

/// What identifies the content of one encoded secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A certificate secret: the SVID's serial (unique per certificate) and
    /// the name it is sent under (`default` or the SPIFFE ID).
    Certificate { serial: String, name: String },
    /// A validation context: the trust snapshot (revision and publication
    /// time), the name, and the validator it is written for.
    Validation { revision: u64, built_at: i128, name: String, mode: ValidatorMode },
    /// The deny-list filter config, by deny-list revision.
    DenyFilter { revision: u64 },
}

/// The shared encoding cache (one per server).
pub struct SecretCache {
    inner: Mutex<Memo>,
}

struct Memo {
    entries: HashMap<Key, Weak<Encoded>>,
    sweep_at: usize,
}

const MIN_SWEEP: usize = 256;

impl SecretCache {
    pub fn new() -> Self {
        Self { inner: Mutex::new(Memo { entries: HashMap::new(), sweep_at: MIN_SWEEP }) }
    }

    /// The live encoding for `key`, or a new one made by `encode`. Encoding
    /// happens under the lock, so concurrent streams never encode twice.
    pub fn get_or_encode(&self, key: Key, encode: impl FnOnce() -> Encoded) -> Arc<Encoded> {
        let mut memo = self.inner.lock();
        if let Some(live) = memo.entries.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        let fresh = Arc::new(encode());
        memo.entries.insert(key, Arc::downgrade(&fresh));
        if memo.entries.len() >= memo.sweep_at {
            memo.entries.retain(|_, w| w.strong_count() > 0);
            memo.sweep_at = (memo.entries.len() * 2).max(MIN_SWEEP);
        }
        fresh
    }

    /// Entries (live or not yet swept), for tests.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for SecretCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use prost::bytes::Bytes;

    use super::*;

    fn key(i: usize) -> Key {
        Key::Certificate { serial: i.to_string(), name: "default".into() }
    }

    #[test]
    fn shares_live_entries_and_sweeps_dead_ones() {
        let cache = SecretCache::new();
        let mut encodes = 0;
        let a = cache.get_or_encode(key(1), || {
            encodes += 1;
            Encoded::new("default", Bytes::from_static(b"a"))
        });
        let b = cache.get_or_encode(key(1), || {
            encodes += 1;
            Encoded::new("default", Bytes::from_static(b"a"))
        });
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(encodes, 1);
        drop((a, b));
        // Nobody holds it: encoded again.
        let _c = cache.get_or_encode(key(1), || {
            encodes += 1;
            Encoded::new("default", Bytes::from_static(b"a"))
        });
        assert_eq!(encodes, 2);
        // Many dead entries are swept.
        for i in 2..2_000 {
            drop(cache.get_or_encode(key(i), || Encoded::new("default", Bytes::from_static(b"x"))));
        }
        assert!(cache.len() < MIN_SWEEP * 2, "{} entries", cache.len());
    }
}
