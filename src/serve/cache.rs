//! The dashboard cache: finished results of read-only queries, keyed by what determines them.
//!
//! A key is the statement text, its parameters, the wire formats and client settings that shape
//! the encoded rows, and the fingerprint of every file behind the tables it reads (paths, sizes,
//! modification times, ETags). A changed, added or removed file changes the fingerprint, so the
//! next identical query misses and runs. Entries are the encoded rows themselves, so a hit sends
//! bytes without touching DataFusion. Bounded by bytes, least recently used first out. Must not
//! cache a result that did not finish, or one larger than an eighth of the cache.

use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion_postgres::pgwire;
use lru::LruCache;
use pgwire::api::results::{FieldInfo, QueryResponse};
use pgwire::messages::data::DataRow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Everything that decides a result's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// The privacy role the result was computed under: another role must not be served it.
    pub(crate) role: String,
    pub(crate) sql: String,
    pub(crate) parameters: Vec<Option<Vec<u8>>>,
    /// Parameter and result format codes, and client settings such as `DateStyle`.
    pub(crate) shape: String,
    /// Of the files behind the statement's tables.
    pub(crate) fingerprint: u64,
}

/// A finished result.
pub(crate) struct Entry {
    pub(crate) fields: Arc<Vec<FieldInfo>>,
    pub(crate) command_tag: String,
    pub(crate) rows: Vec<DataRow>,
    pub(crate) bytes: usize,
}

impl Entry {
    /// The result, ready to send again.
    pub(crate) fn response(&self) -> QueryResponse {
        let rows: Vec<_> = self.rows.iter().cloned().map(Ok).collect();
        let mut response = QueryResponse::new(self.fields.clone(), futures::stream::iter(rows));
        response.set_command_tag(&self.command_tag);
        response
    }
}

/// Bytes a row costs in the cache.
pub(crate) fn row_bytes(row: &DataRow) -> usize {
    row.data.len() + std::mem::size_of::<DataRow>()
}

/// Hit, miss and size counters, for logs and `SHOW spillway_stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stored: AtomicU64,
    pub(crate) too_big: AtomicU64,
}

pub(crate) struct ResultCache {
    capacity: usize,
    inner: Mutex<Inner>,
    pub(crate) counters: Counters,
}

struct Inner {
    entries: LruCache<Key, Arc<Entry>>,
    bytes: usize,
    /// The cache's share of the engine's memory pool, when it has one: cached results count
    /// against `--memory-limit` like any operator's memory, and a statement that needs the
    /// memory wins (the entry is not kept).
    reservation: Option<MemoryReservation>,
}

impl ResultCache {
    /// A cache of at most `capacity` bytes (0: off).
    pub(crate) fn new(capacity: usize) -> ResultCache {
        ResultCache {
            capacity,
            inner: Mutex::new(Inner {
                entries: LruCache::unbounded(),
                bytes: 0,
                reservation: None,
            }),
            counters: Counters::default(),
        }
    }

    /// A cache whose bytes are reserved in `pool`.
    pub(crate) fn in_pool(capacity: usize, pool: &Arc<dyn MemoryPool>) -> ResultCache {
        let cache = ResultCache::new(capacity);
        if let Ok(mut inner) = cache.inner.lock() {
            inner.reservation = Some(MemoryConsumer::new("dashboard cache").register(pool));
        }
        cache
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The largest result worth keeping.
    pub(crate) fn entry_limit(&self) -> usize {
        self.capacity / 8
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let found = self
            .inner
            .lock()
            .ok()
            .and_then(|mut inner| inner.entries.get(key).cloned());
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub(crate) fn insert(&self, key: Key, entry: Entry) {
        if entry.bytes > self.entry_limit() {
            self.counters.too_big.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let size = entry.bytes;
        if let Some(old) = inner.entries.pop(&key) {
            inner.release(old.bytes);
        }
        while inner.bytes + size > self.capacity {
            match inner.entries.pop_lru() {
                Some((_, evicted)) => inner.release(evicted.bytes),
                None => break,
            }
        }
        if let Some(reservation) = &mut inner.reservation {
            if reservation.try_grow(size).is_err() {
                self.counters.too_big.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        inner.entries.put(key, Arc::new(entry));
        inner.bytes += size;
        self.counters.stored.fetch_add(1, Ordering::Relaxed);
    }

    /// Entries and bytes held now.
    pub(crate) fn size(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map(|inner| (inner.entries.len(), inner.bytes))
            .unwrap_or((0, 0))
    }
}

impl Inner {
    fn release(&mut self, bytes: usize) {
        self.bytes -= bytes;
        if let Some(reservation) = &mut self.reservation {
            reservation.shrink(bytes.min(reservation.size()));
        }
    }
}

/// A fingerprint of a set of files: order-independent of how the listing came back.
pub(crate) fn fingerprint_files<'a>(
    files: impl IntoIterator<Item = &'a object_store::ObjectMeta>,
) -> u64 {
    let mut parts: Vec<String> = files
        .into_iter()
        .map(|meta| {
            format!(
                "{}\u{0}{}\u{0}{}\u{0}{}",
                meta.location,
                meta.size,
                meta.last_modified.timestamp_nanos_opt().unwrap_or_default(),
                meta.e_tag.as_deref().unwrap_or("")
            )
        })
        .collect();
    parts.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn key(sql: &str) -> Key {
        Key {
            role: String::new(),
            sql: sql.into(),
            parameters: vec![],
            shape: String::new(),
            fingerprint: 1,
        }
    }

    fn entry(bytes: usize) -> Entry {
        let row = DataRow::new(BytesMut::from(&vec![0u8; bytes][..]), 1);
        Entry {
            fields: Arc::new(vec![]),
            command_tag: "SELECT".into(),
            bytes: row_bytes(&row),
            rows: vec![row],
        }
    }

    #[test]
    fn least_recently_used_entries_leave_first_and_the_byte_bound_holds() {
        let unit = row_bytes(&entry(100).rows[0]);
        let cache = ResultCache::new(unit * 8 * 2);
        for name in ["a", "b", "c"] {
            cache.insert(key(name), entry(100));
        }
        assert!(cache.get(&key("a")).is_some());
        // Fill far past the bound: "a" was used last among the first three, "b" goes first.
        for index in 0..20 {
            cache.insert(key(&format!("x{index}")), entry(100));
        }
        let (_, bytes) = cache.size();
        assert!(bytes <= unit * 16, "{bytes}");
        assert!(cache.get(&key("b")).is_none());
        assert_eq!(cache.counters.hits.load(Ordering::Relaxed), 1);
        assert_eq!(cache.counters.misses.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn cached_bytes_are_reserved_in_the_memory_pool_and_given_back_on_eviction() {
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        let unit = row_bytes(&entry(100).rows[0]);
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(unit * 3));
        let cache = ResultCache::in_pool(unit * 100, &pool);
        for name in ["a", "b", "c"] {
            cache.insert(key(name), entry(100));
        }
        assert_eq!(pool.reserved(), unit * 3);
        // The pool is full: the fourth result is not kept, and nothing was evicted for it.
        cache.insert(key("d"), entry(100));
        assert_eq!(cache.size(), (3, unit * 3));
        assert_eq!(cache.counters.too_big.load(Ordering::Relaxed), 1);
        drop(cache);
        assert_eq!(pool.reserved(), 0);
    }

    #[test]
    fn a_result_over_an_eighth_of_the_cache_is_not_kept() {
        let cache = ResultCache::new(8000);
        cache.insert(key("big"), entry(1200));
        assert!(cache.get(&key("big")).is_none());
        assert_eq!(cache.counters.too_big.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn fingerprints_change_with_size_or_time_and_ignore_listing_order() {
        use object_store::path::Path;
        let meta = |name: &str, size: u64, secs: i64| object_store::ObjectMeta {
            location: Path::from(name),
            last_modified: chrono::DateTime::from_timestamp(secs, 0).unwrap(),
            size,
            e_tag: None,
            version: None,
        };
        let a = [meta("a.csv", 10, 1), meta("b.csv", 20, 1)];
        let reordered = [meta("b.csv", 20, 1), meta("a.csv", 10, 1)];
        assert_eq!(fingerprint_files(&a), fingerprint_files(&reordered));
        assert_ne!(
            fingerprint_files(&a),
            fingerprint_files(&[meta("a.csv", 11, 1), meta("b.csv", 20, 1)])
        );
        assert_ne!(
            fingerprint_files(&a),
            fingerprint_files(&[meta("a.csv", 10, 2), meta("b.csv", 20, 1)])
        );
        assert_ne!(fingerprint_files(&a), fingerprint_files(&a[..1]));
    }
}
