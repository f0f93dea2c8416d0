//! The repository's opt-in cache of aggregate state (see
//! [`Repository::with_state_cache`](crate::Repository::with_state_cache)).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::repository::outcome::Loaded;

/// Up to `capacity` aggregates' latest known state and version, by id,
/// least recently used evicted first.
pub(crate) struct StateCache<A> {
    capacity: usize,
    clone: fn(&A) -> A,
    entries: Mutex<Entries<A>>,
}

struct Entries<A> {
    by_id: HashMap<String, (Loaded<A>, u64)>,
    /// Bumped on every use; an entry's stamp is its last use.
    clock: u64,
}

impl<A> StateCache<A> {
    pub(crate) fn new(capacity: usize, clone: fn(&A) -> A) -> Self {
        Self {
            capacity: capacity.max(1),
            clone,
            entries: Mutex::new(Entries {
                by_id: HashMap::new(),
                clock: 0,
            }),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// A copy of what is known of `id`, marking it used.
    pub(crate) fn get(&self, id: &str) -> Option<Loaded<A>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.clock += 1;
        let clock = entries.clock;
        let (loaded, stamp) = entries.by_id.get_mut(id)?;
        *stamp = clock;
        Some(Loaded {
            state: (self.clone)(&loaded.state),
            version: loaded.version,
        })
    }

    /// Remembers `state` at `version` for `id`, unless a later version is
    /// known already (another task got there first).
    pub(crate) fn put(&self, id: &str, version: i64, state: &A) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.clock += 1;
        let clock = entries.clock;
        if let Some((known, stamp)) = entries.by_id.get_mut(id) {
            if known.version <= version {
                *known = Loaded {
                    state: (self.clone)(state),
                    version,
                };
            }
            *stamp = clock;
            return;
        }
        if entries.by_id.len() >= self.capacity {
            // An O(capacity) scan, only when full: a command costs a round
            // trip to the database, which dwarfs it.
            let oldest = entries
                .by_id
                .iter()
                .min_by_key(|(_, (_, stamp))| *stamp)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                entries.by_id.remove(&oldest);
            }
        }
        let loaded = Loaded {
            state: (self.clone)(state),
            version,
        };
        entries.by_id.insert(id.to_owned(), (loaded, clock));
    }

    /// Forgets `id`.
    pub(crate) fn evict(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.by_id.remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> StateCache<i64> {
        StateCache::new(capacity, |n| *n)
    }

    #[test]
    fn the_least_recently_used_is_evicted_when_full() {
        let cache = cache(2);
        cache.put("a", 1, &10);
        cache.put("b", 1, &20);
        assert_eq!(cache.get("a").map(|l| l.state), Some(10)); // a is used
        cache.put("c", 1, &30); // evicts b
        assert_eq!(cache.len(), 2);
        assert!(cache.get("b").is_none());
        assert_eq!(cache.get("a").map(|l| (l.version, l.state)), Some((1, 10)));
        assert_eq!(cache.get("c").map(|l| l.state), Some(30));
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let cache = cache(4);
        cache.put("a", 5, &50);
        cache.put("a", 3, &30);
        assert_eq!(cache.get("a").map(|l| (l.version, l.state)), Some((5, 50)));
        cache.put("a", 6, &60);
        assert_eq!(cache.get("a").map(|l| (l.version, l.state)), Some((6, 60)));
        cache.evict("a");
        assert!(cache.get("a").is_none());
    }
}
