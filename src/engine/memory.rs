//! Memory pools and their sizing: the pool every query shares ([`PeakPool`], a `FairSpillPool`
//! under a `TrackConsumersPool` that remembers its high-water mark), the per-statement cap the
//! server puts on top of it ([`CappedPool`]), and the rules that size the pool, batches and
//! spill merges from the memory limit and worker count. Must not create sessions.

use super::DEFAULT_BATCH_SIZE;
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The default memory limit: this share of the machine's (or cgroup's) memory. The rest is
/// headroom for what DataFusion does not track (decoding buffers, hash tables' slack, the
/// allocator's own overhead), which measurements show can rival the tracked part.
pub(crate) const DEFAULT_MEMORY_FRACTION: f64 = 0.5;

/// The share of `--memory-limit` given to DataFusion's memory pool; the rest is headroom for
/// memory the pool does not see. Measured on H2O q6 (`median` per group, 1e8 rows of CSV): with
/// the whole 1 GiB as the pool, peak RSS was 2.1 GiB (the aggregation's state is copied when it
/// is emitted and spilled, outside the pool); with a 600 MiB pool it was 1.2 GiB. Every other
/// H2O question and claims query stayed under 0.9 GiB either way.
pub(crate) const POOL_SHARE: f64 = 0.6;

/// The memory pool's size for a memory limit.
pub(crate) fn pool_size(memory_limit: u64) -> u64 {
    (memory_limit as f64 * POOL_SHARE) as u64
}

/// How many memory consumers an exhausted-memory error names.
const TOP_CONSUMERS: usize = 5;

/// The batch size for a memory pool when the user sets none: DataFusion's 8192 rows unless
/// each partition's share of the pool is small. Sorts merge their spill files a batch per file
/// at a time in memory that cannot spill, so at 8 MiB per partition 8192-row batches of a wide
/// table failed where 2048-row batches spilled and finished (100k claims rows, 16 MiB, 2 workers).
pub(crate) fn batch_size_for(pool: u64, workers: usize) -> usize {
    let per_partition = pool / workers.max(1) as u64;
    (per_partition / 4096).clamp(1024, DEFAULT_BATCH_SIZE as u64) as usize
}

/// How many spill files one sort merges at once. DataFusion's default is unbounded, and each
/// merge reserves a buffer per file for as many files as the pool allows: the first partition
/// to finish sorting takes the whole pool and the others then fail with "Not enough memory to
/// continue external sort" (seen at 64 MiB, 2 workers, a 17-column sort). Capping the fan-in
/// at about 8 MiB of the partition's share per file leaves room for every partition; merges
/// of more files than that run in several passes.
pub(crate) fn spill_merge_fan_in(pool: u64, workers: usize) -> usize {
    let per_partition = pool / workers.max(1) as u64;
    (per_partition / (8 << 20)).clamp(2, 256) as usize
}

/// A memory pool that remembers the most it ever had reserved.
#[derive(Debug)]
pub(crate) struct PeakPool {
    inner: TrackConsumersPool<FairSpillPool>,
    peak: AtomicUsize,
    /// High-water marks of the pool kept for a while by others (a cluster executor's running
    /// tasks, which share this process's pool); `watched` saves the lock when there are none.
    watches: std::sync::Mutex<Vec<std::sync::Weak<AtomicUsize>>>,
    watched: std::sync::atomic::AtomicBool,
}

impl PeakPool {
    pub(crate) fn new(limit: usize) -> Self {
        let top = NonZeroUsize::new(TOP_CONSUMERS).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: TrackConsumersPool::new(FairSpillPool::new(limit), top),
            peak: AtomicUsize::new(0),
            watches: std::sync::Mutex::new(Vec::new()),
            watched: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A high-water mark of the pool from now on, for as long as the returned value is held.
    pub(crate) fn watch(&self) -> Arc<AtomicUsize> {
        let mark = Arc::new(AtomicUsize::new(self.inner.reserved()));
        if let Ok(mut watches) = self.watches.lock() {
            watches.retain(|watch| watch.strong_count() > 0);
            watches.push(Arc::downgrade(&mark));
            self.watched.store(true, Ordering::Relaxed);
        }
        mark
    }

    /// The most memory reserved at once so far, in bytes.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Forget the high-water mark (between statements).
    pub(crate) fn reset_peak(&self) {
        self.peak.store(self.inner.reserved(), Ordering::Relaxed);
    }

    fn note(&self) {
        let reserved = self.inner.reserved();
        self.peak.fetch_max(reserved, Ordering::Relaxed);
        if self.watched.load(Ordering::Relaxed) {
            if let Ok(mut watches) = self.watches.lock() {
                watches.retain(|watch| match watch.upgrade() {
                    Some(mark) => {
                        mark.fetch_max(reserved, Ordering::Relaxed);
                        true
                    }
                    None => false,
                });
                self.watched.store(!watches.is_empty(), Ordering::Relaxed);
            }
        }
    }
}

impl fmt::Display for PeakPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

impl MemoryPool for PeakPool {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }
    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }
    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.note();
    }
    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink)
    }
    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        self.inner.try_grow(reservation, additional)?;
        self.note();
        Ok(())
    }
    fn reserved(&self) -> usize {
        self.inner.reserved()
    }
    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

/// A share of another pool: one statement may reserve at most `cap` bytes of the shared pool,
/// so a runaway query on one server connection fails on its own instead of starving the
/// others. Reservations still go through the shared pool (and its fair spilling).
#[derive(Debug)]
pub(crate) struct CappedPool {
    shared: Arc<dyn MemoryPool>,
    cap: usize,
    used: AtomicUsize,
}

impl CappedPool {
    pub(crate) fn new(shared: Arc<dyn MemoryPool>, cap: usize) -> Self {
        Self {
            shared,
            cap,
            used: AtomicUsize::new(0),
        }
    }
}

impl fmt::Display for CappedPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CappedPool(cap {} of {})", self.cap, self.shared)
    }
}

impl MemoryPool for CappedPool {
    fn name(&self) -> &str {
        "CappedPool"
    }
    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer)
    }
    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer)
    }
    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.shared.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::Relaxed);
    }
    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.shared.shrink(reservation, shrink);
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }
    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(additional) > self.cap {
            return Err(datafusion::error::DataFusionError::ResourcesExhausted(
                format!(
                    "Failed to allocate additional {} for {}: this statement already holds {} \
                 of its {} cap ([server] query_memory)",
                    crate::units::human_bytes(additional as u64),
                    reservation.consumer().name(),
                    crate::units::human_bytes(used as u64),
                    crate::units::human_bytes(self.cap as u64),
                ),
            ));
        }
        self.shared.try_grow(reservation, additional)?;
        self.used.fetch_add(additional, Ordering::Relaxed);
        Ok(())
    }
    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_only_when_each_partition_has_little_memory() {
        assert_eq!(batch_size_for(12 << 30, 2), DEFAULT_BATCH_SIZE);
        assert_eq!(batch_size_for(16 << 20, 2), 2048);
        assert_eq!(batch_size_for(1 << 20, 4), 1024);
    }

    #[test]
    fn spill_merges_fan_in_by_the_partition_share_of_memory() {
        assert_eq!(spill_merge_fan_in(64 << 20, 2), 4);
        assert_eq!(spill_merge_fan_in(8 << 20, 2), 2);
        assert_eq!(spill_merge_fan_in(1 << 30, 2), 64);
        assert_eq!(spill_merge_fan_in(64 << 30, 1), 256);
    }
}
