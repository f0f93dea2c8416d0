//! Contention: the aggregates that conflicted recently, which later
//! commands and units decide on under the aggregate's lock from the start.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use es_store::{AggregateStreamReader, EventStore, SnapshotStore};

use super::Repository;
use crate::Aggregate;

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventStore + AggregateStreamReader + SnapshotStore,
{
    /// Whether `id` conflicted within the retry policy's contention window
    /// (and retries take the lock): a unit of work then decides on it
    /// under its lock from its first run.
    pub(crate) fn recently_contended(&self, id: &str) -> bool {
        self.retry.lock_on_retry()
            && self
                .contended
                .is_contended(id, self.retry.contention_window())
    }

    /// Remembers that `id` conflicted in a unit of work.
    pub(crate) fn record_contention(&self, id: &str) {
        if self.retry.lock_on_retry() {
            self.contended.record(id, self.retry.contention_window());
        }
    }
}

/// The aggregates of one repository that conflicted recently, with when.
#[derive(Debug, Default)]
pub(super) struct Contended {
    seen: Mutex<HashMap<String, Instant>>,
}

impl Contended {
    /// How many aggregates are remembered at most; past it, those whose
    /// window ended are forgotten, and if that is not enough, all.
    const CAPACITY: usize = 4096;

    /// Whether `id` conflicted less than `window` ago.
    pub(super) fn is_contended(&self, id: &str, window: Duration) -> bool {
        if window.is_zero() {
            return false;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(id) {
            Some(at) if at.elapsed() < window => true,
            Some(_) => {
                seen.remove(id);
                false
            }
            None => false,
        }
    }

    /// Remembers that `id` conflicted now.
    pub(super) fn record(&self, id: &str, window: Duration) {
        if window.is_zero() {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= Self::CAPACITY && !seen.contains_key(id) {
            seen.retain(|_, at| at.elapsed() < window);
            if seen.len() >= Self::CAPACITY {
                seen.clear();
            }
        }
        seen.insert(id.to_owned(), Instant::now());
    }
}
