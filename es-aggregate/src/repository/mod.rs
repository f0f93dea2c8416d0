//! Loading aggregates and executing commands against the store.
//!
//! The parts: [`error`](RepositoryError) and outcomes ([`Loaded`],
//! [`Executed`]) in files of their own; `load` (snapshot, fold),
//! `execute` (the call, its retries, one attempt), `idempotency` (command
//! ids), `contention` and `snapshots`.

mod contention;
pub(crate) mod error;
mod execute;
mod idempotency;
mod load;
pub(crate) mod outcome;
mod snapshots;
mod transaction;

use std::fmt;
use std::sync::Arc;

use es_store::{AggregateRef, AggregateStreamReader, DomainEvent, EventStore, SnapshotStore};

pub use error::{CommandIdReuse, RepositoryError, Result};
pub use outcome::{Executed, Loaded};

use crate::cache::StateCache;
use crate::{Aggregate, RetryPolicy};
use contention::Contended;
use snapshots::Snapshots;

/// Loads aggregates and executes commands on them.
///
/// A command is executed by loading the aggregate (its snapshot, if
/// snapshots are on, and the events after it), folding, handling the
/// command and appending the events with `Exact(version)` (`NoStream` for a
/// new aggregate). On an optimistic-concurrency conflict the whole cycle
/// runs again under the [`RetryPolicy`], and so does a transient failure
/// (a lost connection, a server restart, ...), with the same event ids, so
/// that an attempt committed before its reply was lost is found instead
/// of stored twice (see [`Repository::execute_with`]).
///
/// With [`Repository::execute`] the load runs on a pooled connection and the
/// append is a single statement, atomic on its own: the version check
/// guarantees the events were decided on exactly the state they follow, so
/// no explicit transaction (and none of its round trips) is needed. To
/// commit a command together with your own writes, or with a command on
/// another aggregate, use [`Repository::execute_in`] inside your transaction.
///
/// ```no_run
/// # use es_aggregate::{Aggregate, Repository, RetryPolicy};
/// # async fn demo<A: Aggregate>(pool: sqlx::PgPool, command: A::Command) -> Result<(), Box<dyn std::error::Error>> {
/// let repository = Repository::<A>::new(es_store::PostgresStore::new(), pool)
///     .with_retry_policy(RetryPolicy::default());
/// let executed = repository.execute("acc-1", &command).await?;
/// println!("now at version {} after {} attempt(s)", executed.version, executed.attempts);
/// # Ok(()) }
/// ```
pub struct Repository<A: Aggregate, S: es_store::Backend = es_store::DefaultStore> {
    store: S,
    pool: sqlx::Pool<S::Database>,
    retry: RetryPolicy,
    snapshots: Option<Snapshots<A>>,
    contended: Arc<Contended>,
    cache: Option<Arc<StateCache<A>>>,
}

impl<A: Aggregate, S: es_store::Backend + Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            pool: self.pool.clone(),
            retry: self.retry,
            snapshots: self.snapshots.clone(),
            contended: self.contended.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<A: Aggregate, S: es_store::Backend> fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &std::any::type_name::<A>())
            .field("retry", &self.retry)
            .field("snapshot_every", &self.snapshots.as_ref().map(|s| s.every))
            .field("state_cache", &self.cache.as_ref().map(|c| c.capacity()))
            .finish_non_exhaustive()
    }
}

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventStore + AggregateStreamReader + SnapshotStore,
{
    /// A repository over `store`, taking connections from `pool`, with the
    /// default retry policy and no snapshots.
    pub fn new(store: S, pool: sqlx::Pool<S::Database>) -> Self {
        Self {
            store,
            pool,
            retry: RetryPolicy::default(),
            snapshots: None,
            contended: Arc::default(),
            cache: None,
        }
    }

    /// Sets the retry policy of [`Repository::execute`]: conflicts and
    /// transient failures.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Turns snapshots on: whenever a command takes the aggregate across a
    /// multiple of `every` events, the new state is stored with its version
    /// and `schema_version`. Loading then starts from the latest snapshot
    /// and folds only the events after it. A snapshot that does not decode,
    /// or was written with another `schema_version`, is ignored and the
    /// whole stream is folded: bump `schema_version` whenever the state's
    /// serialized form changes. `every` below 1 is taken as 1.
    pub fn with_snapshots(mut self, every: u32, schema_version: i32) -> Self
    where
        A: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.snapshots = Some(Snapshots {
            every: i64::from(every.max(1)),
            schema_version,
            encode: |state| serde_json::value::to_raw_value(state),
            decode: |json| serde_json::from_str(json),
        });
        self
    }

    /// Turns on a cache of the latest state of up to `capacity` aggregates
    /// (the least recently used are forgotten first), shared by the
    /// repository's clones. [`Repository::execute`] on a cached aggregate
    /// skips the load: it handles the command on the cached state and
    /// appends with `Exact(cached version)`, one round trip fewer.
    ///
    /// Correctness never depends on the cache. If another writer (another
    /// process, or a repository without this cache) moved the aggregate,
    /// the append is a conflict and the command runs the normal way, from
    /// the cached state plus the events since. A command the cached state
    /// rejects, or that produces no events, is decided again on the
    /// current state before the answer is given, so a stale cache never
    /// refuses a command the store would accept. (That first, cached
    /// attempt is not counted in [`Executed::attempts`].) Commands through
    /// [`Repository::execute_in`] neither use nor fill the cache.
    /// `capacity` below 1 is taken as 1. Nothing is allocated up front:
    /// the cache grows with the aggregates commands run on, up to
    /// `capacity` (any `usize` is accepted; `usize::MAX` is no bound).
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository};
    /// # fn demo<A: Aggregate + Clone>(pool: sqlx::PgPool) {
    /// let repository = Repository::<A>::new(es_store::PostgresStore::new(), pool)
    ///     .with_state_cache(10_000);
    /// # }
    /// ```
    pub fn with_state_cache(mut self, capacity: usize) -> Self
    where
        A: Clone,
    {
        self.cache = Some(Arc::new(StateCache::new(capacity, A::clone)));
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The pool.
    pub fn pool(&self) -> &sqlx::Pool<S::Database> {
        &self.pool
    }

    /// The store's name for the aggregate `id` of this repository.
    pub(super) fn aggregate(id: &str) -> AggregateRef<'_> {
        AggregateRef::new(A::Event::BOUNDED_CONTEXT, A::Event::AGGREGATE_TYPE, id)
    }
}
