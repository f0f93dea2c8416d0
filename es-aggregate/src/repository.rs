//! Loading aggregates and executing commands against the store.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use es_store::{
    AggregateKey, AggregateRef, AggregateStreamReader, Connection, DecodeError, DomainEvent,
    Error as StoreError, EventStore, ExpectedVersion, Metadata, Snapshot, SnapshotStore,
    StoredEvent,
};
use serde_json::value::RawValue;
use tracing::Instrument;

use crate::cache::StateCache;
use crate::{Aggregate, RetryPolicy};

/// An aggregate's state and the version it was folded up to.
///
/// An aggregate with no events loads as `Default::default()` at version 0;
/// [`Loaded::exists`] tells the two apart.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Loaded<A> {
    /// The folded state.
    pub state: A,
    /// The version of the last event applied (0 when none).
    pub version: i64,
}

impl<A> Loaded<A> {
    /// Whether the aggregate has at least one event.
    pub fn exists(&self) -> bool {
        self.version > 0
    }
}

/// What a successful command did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Executed<A: Aggregate> {
    /// The aggregate's version after the command (unchanged when the
    /// command produced no events).
    pub version: i64,
    /// The events the command produced, in order.
    pub events: Vec<A::Event>,
    /// The global position of each event.
    pub global_positions: Vec<i64>,
    /// The state after the events were applied.
    pub state: A,
    /// How many times the command was handled: 1, plus one per conflict
    /// retried.
    pub attempts: u32,
}

/// Why a command or a load failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError<E: std::error::Error + 'static> {
    /// The aggregate refused the command; nothing was written.
    #[error("command refused: {0}")]
    Rejected(#[source] E),

    /// Other writers kept changing the aggregate: the command lost the
    /// optimistic-concurrency check on every attempt the retry policy
    /// allowed.
    #[error("optimistic concurrency conflict on {aggregate} after {attempts} attempt(s): expected {expected}, {}",
        .actual.map_or_else(|| "the version changed concurrently".to_owned(), |v| format!("found version {v}")))]
    Conflict {
        /// The aggregate.
        aggregate: AggregateKey,
        /// How many times the command was handled.
        attempts: u32,
        /// The version the last attempt expected.
        expected: ExpectedVersion,
        /// The version the last attempt found, when known.
        actual: Option<i64>,
    },

    /// A stored event could not be decoded into the aggregate's event type.
    #[error("cannot decode a stored event of {aggregate}: {source}")]
    Decode {
        /// The aggregate.
        aggregate: AggregateKey,
        /// What went wrong.
        #[source]
        source: Box<DecodeError>,
    },

    /// The store failed (or refused the input, for example an empty id).
    #[error(transparent)]
    Store(StoreError),
}

impl<E: std::error::Error + 'static> RepositoryError<E> {
    fn from_store(error: StoreError, attempts: u32) -> Self {
        match error {
            StoreError::OptimisticConcurrency {
                aggregate,
                expected,
                actual,
            } => RepositoryError::Conflict {
                aggregate,
                attempts,
                expected,
                actual,
            },
            other => RepositoryError::Store(other),
        }
    }
}

impl<E: std::error::Error + 'static> From<StoreError> for RepositoryError<E> {
    fn from(error: StoreError) -> Self {
        Self::from_store(error, 1)
    }
}

/// The repository's result type.
pub type Result<T, A> = std::result::Result<T, RepositoryError<<A as Aggregate>::Error>>;

/// Snapshot settings of one repository, with the (de)serializers fixed when
/// snapshots were switched on, so the rest of the repository needs no serde
/// bounds on the aggregate.
struct Snapshots<A> {
    every: i64,
    schema_version: i32,
    encode: fn(&A) -> serde_json::Result<Box<RawValue>>,
    decode: fn(&str) -> serde_json::Result<A>,
}

impl<A> Clone for Snapshots<A> {
    fn clone(&self) -> Self {
        Self { ..*self }
    }
}

/// Loads aggregates and executes commands on them.
///
/// A command is executed by loading the aggregate (its snapshot, if
/// snapshots are on, and the events after it), folding, handling the
/// command and appending the events with `Exact(version)` (`NoStream` for a
/// new aggregate). On an optimistic-concurrency conflict the whole cycle
/// runs again under the [`RetryPolicy`].
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

    /// Sets the retry policy of [`Repository::execute`].
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
    /// `capacity` below 1 is taken as 1.
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

    /// Loads the aggregate's current state.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, A> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        self.load_in(&mut conn, id, None).await
    }

    /// Loads the state the aggregate had at `version` (time travel): the
    /// events up to and including it. Asking beyond the current version
    /// gives the current state.
    pub async fn load_at(&self, id: &str, version: i64) -> Result<Loaded<A>, A> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        self.load_in(&mut conn, id, Some(version)).await
    }

    /// Loads on the caller's connection or transaction, up to `to_version`
    /// (everything when `None`).
    pub async fn load_in(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        to_version: Option<i64>,
    ) -> Result<Loaded<A>, A> {
        if let Some(to) = to_version.filter(|v| *v < 0) {
            return Err(RepositoryError::Store(StoreError::NegativeVersion {
                what: "version",
                value: to,
            }));
        }
        let mut loaded = self.starting_point(conn, id, to_version).await?;
        self.catch_up(conn, id, &mut loaded, to_version).await?;
        Ok(loaded)
    }

    /// The aggregate's latest snapshot, decoded: the state and version that
    /// loading it starts from. `None` when snapshots are off (see
    /// [`Repository::with_snapshots`]), when the aggregate has no snapshot
    /// yet, or when the stored one is ignored because it was written with
    /// another schema version or does not decode (read it as it is stored
    /// with [`SnapshotStore::load_snapshot`]).
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository};
    /// # async fn demo<A: Aggregate + serde::Serialize + serde::de::DeserializeOwned>(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let repository = Repository::<A>::new(es_store::PostgresStore::new(), pool).with_snapshots(100, 1);
    /// match repository.snapshot("acc-1").await? {
    ///     Some(snapshot) => println!("acc-1 loads from its snapshot at version {}", snapshot.version),
    ///     None => println!("acc-1 loads from its first event"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn snapshot(&self, id: &str) -> Result<Option<Loaded<A>>, A> {
        let Some(snapshots) = &self.snapshots else {
            return Ok(None);
        };
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        self.usable_snapshot(&mut conn, snapshots, id, None).await
    }

    /// Locks the aggregate `id` in the caller's transaction and returns its
    /// version (0 if it has no events yet), as
    /// [`EventStore::lock_aggregate`] does: until the transaction ends,
    /// every other append to the aggregate waits, so what the transaction
    /// decides on the version it read cannot conflict. Call it first in the
    /// transaction. An aggregate that has no events yet cannot be locked:
    /// its creation stays optimistic.
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository};
    /// # async fn demo<A: Aggregate>(repository: Repository<A>, command: A::Command) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = repository.pool().begin().await?;
    /// let version = repository.lock_in(&mut *tx, "acc-1").await?;
    /// // nobody else appends to acc-1 until tx ends
    /// let executed = repository.execute_in(&mut *tx, "acc-1", &command, &es_store::Metadata::default()).await?;
    /// assert!(executed.version >= version);
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock_in(&self, conn: &mut Connection<S>, id: &str) -> Result<i64, A> {
        Ok(self.store.lock_aggregate(conn, Self::aggregate(id)).await?)
    }

    /// Where folding starts: the latest usable snapshot at or below
    /// `to_version` when snapshots are on, else the default state.
    async fn starting_point(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        to_version: Option<i64>,
    ) -> Result<Loaded<A>, A> {
        match &self.snapshots {
            Some(snapshots) => {
                self.start_from_snapshot(conn, snapshots, id, to_version)
                    .await
            }
            None => Ok(Loaded {
                state: A::default(),
                version: 0,
            }),
        }
    }

    /// The state in the aggregate's latest usable snapshot at or below
    /// `to_version`, or the default state at version 0.
    async fn start_from_snapshot(
        &self,
        conn: &mut Connection<S>,
        snapshots: &Snapshots<A>,
        id: &str,
        to_version: Option<i64>,
    ) -> Result<Loaded<A>, A> {
        let usable = self
            .usable_snapshot(conn, snapshots, id, to_version)
            .await?;
        Ok(usable.unwrap_or_else(|| Loaded {
            state: A::default(),
            version: 0,
        }))
    }

    /// The aggregate's latest snapshot at or below `to_version`, decoded,
    /// if there is one of the repository's schema version that decodes.
    async fn usable_snapshot(
        &self,
        conn: &mut Connection<S>,
        snapshots: &Snapshots<A>,
        id: &str,
        to_version: Option<i64>,
    ) -> Result<Option<Loaded<A>>, A> {
        let snapshot = self
            .store
            .load_snapshot(conn, Self::aggregate(id), to_version)
            .await?;
        let Some(snapshot) = snapshot else {
            return Ok(None);
        };
        if snapshot.schema_version != snapshots.schema_version {
            tracing::debug!(
                aggregate_id = id,
                found = snapshot.schema_version,
                expected = snapshots.schema_version,
                "ignoring a snapshot of another schema version"
            );
            return Ok(None);
        }
        match (snapshots.decode)(snapshot.state.get()) {
            Ok(state) => Ok(Some(Loaded {
                state,
                version: snapshot.version,
            })),
            Err(error) => {
                tracing::warn!(aggregate_id = id, %error, "ignoring a snapshot that does not decode");
                Ok(None)
            }
        }
    }

    /// The store's name for the aggregate `id` of this repository.
    fn aggregate(id: &str) -> AggregateRef<'_> {
        AggregateRef::new(A::Event::BOUNDED_CONTEXT, A::Event::AGGREGATE_TYPE, id)
    }

    /// Applies the events after `loaded.version`, up to `to_version`.
    async fn catch_up(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        loaded: &mut Loaded<A>,
        to_version: Option<i64>,
    ) -> Result<(), A> {
        if to_version.is_some_and(|to| to <= loaded.version) {
            return Ok(());
        }
        self.fold_tail(conn, id, loaded, Tail::UpTo(to_version))
            .await
    }

    /// Folds the events after `loaded.version` into it: up to a version,
    /// or all of them after locking the aggregate.
    async fn fold_tail(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        loaded: &mut Loaded<A>,
        tail: Tail,
    ) -> Result<(), A> {
        let aggregate = Self::aggregate(id);
        let Loaded { state, version } = loaded;
        let from = *version + 1;
        let visit = |event: StoredEvent<'_>| {
            let decoded =
                A::Event::decode_json(event.event_type, event.event_version, event.payload)
                    .map_err(|source| RepositoryError::Decode {
                        aggregate: aggregate.to_owned(),
                        source: Box::new(source),
                    })?;
            state.apply(&decoded);
            *version = event.aggregate_version;
            Ok::<_, RepositoryError<A::Error>>(())
        };
        match tail {
            Tail::UpTo(Some(to)) => {
                self.store
                    .fold_aggregate_stream(conn, aggregate, from..=to, visit)
                    .await?
            }
            Tail::UpTo(None) => {
                self.store
                    .fold_aggregate_stream(conn, aggregate, from.., visit)
                    .await?
            }
            Tail::Locked => {
                self.store
                    .lock_and_fold_aggregate_stream(conn, aggregate, from.., visit)
                    .await?
            }
        };
        Ok(())
    }

    /// Executes a command with no metadata. See [`Repository::execute_with`].
    pub async fn execute(&self, id: &str, command: &A::Command) -> Result<Executed<A>, A> {
        self.execute_with(id, command, &Metadata::default()).await
    }

    /// Executes a command: load, handle, append with `Exact(version)`,
    /// retrying on conflicts under the retry policy. `metadata` (correlation
    /// and causation ids, free fields) lands on every event produced.
    ///
    /// A refused command is [`RepositoryError::Rejected`] and is never
    /// retried. A command that produces no events writes nothing and
    /// succeeds. After the last attempt a conflict is
    /// [`RepositoryError::Conflict`] with the number of attempts made.
    pub async fn execute_with(
        &self,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, A> {
        let span = tracing::debug_span!(
            "execute",
            bounded_context = A::Event::BOUNDED_CONTEXT,
            aggregate_type = A::Event::AGGREGATE_TYPE,
            aggregate_id = id,
        );
        async {
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            // A conflict leaves the loaded state valid up to its version:
            // the next attempt only folds the events that came since.
            let mut loaded = None;
            if let Some(cache) = &self.cache
                && let Some(cached) = cache.get(id)
            {
                let mut unverified = Some(cached);
                match self
                    .decide_and_append(&mut conn, id, command, metadata, &mut unverified)
                    .await
                {
                    Ok(executed) if !executed.events.is_empty() => {
                        cache.put(id, executed.version, &executed.state);
                        return Ok(executed);
                    }
                    // Decided on a state that may be stale (a conflict says
                    // it was): decide again the normal way, from the cached
                    // state and the events since.
                    Ok(_)
                    | Err(StoreAttempt::Other(RepositoryError::Rejected(_)))
                    | Err(StoreAttempt::Store(StoreError::OptimisticConcurrency { .. })) => {
                        loaded = cache.get(id);
                    }
                    Err(StoreAttempt::Store(error)) => {
                        cache.evict(id);
                        return Err(RepositoryError::from_store(error, 1));
                    }
                    Err(StoreAttempt::Other(error)) => {
                        cache.evict(id);
                        return Err(error);
                    }
                }
            }
            let mut attempt = 1;
            let window = self.retry.contention_window();
            let lock = self.retry.lock_on_retry();
            // Recently contended: skip the optimistic attempt, which would
            // most likely lose.
            let start_locked = lock && self.contended.is_contended(id, window);
            loop {
                let outcome = if lock && (attempt > 1 || start_locked) {
                    self.try_execute_locked(&mut conn, id, command, metadata, &mut loaded)
                        .await
                } else {
                    self.try_execute(&mut conn, id, command, metadata, &mut loaded)
                        .await
                };
                match outcome {
                    Err(StoreAttempt::Store(error @ StoreError::OptimisticConcurrency { .. }))
                        if attempt < self.retry.max_attempts() =>
                    {
                        if lock {
                            self.contended.record(id, window);
                        }
                        // A locked retry waits in the aggregate's lock queue
                        // instead of sleeping.
                        let backoff = if lock {
                            std::time::Duration::ZERO
                        } else {
                            self.retry.backoff(attempt)
                        };
                        tracing::debug!(attempt, ?backoff, %error, "conflict, retrying");
                        if !backoff.is_zero() {
                            tokio::time::sleep(backoff).await;
                        }
                        attempt += 1;
                    }
                    Err(StoreAttempt::Store(error)) => {
                        if let Some(cache) = &self.cache {
                            cache.evict(id);
                        }
                        return Err(RepositoryError::from_store(error, attempt));
                    }
                    Err(StoreAttempt::Other(error)) => {
                        if let Some(cache) = &self.cache {
                            cache.evict(id);
                        }
                        return Err(error);
                    }
                    Ok(mut executed) => {
                        if let Some(cache) = &self.cache {
                            cache.put(id, executed.version, &executed.state);
                        }
                        executed.attempts = attempt;
                        return Ok(executed);
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Executes a command on the caller's connection or transaction, with
    /// no retry (a conflict aborts what the caller is doing; the caller
    /// decides whether to run it all again). Use it to commit a command
    /// atomically with your own writes or with commands on other
    /// aggregates.
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository};
    /// # async fn demo<A: Aggregate>(repository: Repository<A>, debit: A::Command, credit: A::Command) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = repository.pool().begin().await?;
    /// let metadata = es_store::Metadata::default();
    /// repository.execute_in(&mut *tx, "acc-1", &debit, &metadata).await?;
    /// repository.execute_in(&mut *tx, "acc-2", &credit, &metadata).await?;
    /// tx.commit().await?; // both or neither
    /// # Ok(()) }
    /// ```
    pub async fn execute_in(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, A> {
        match self
            .try_execute(conn, id, command, metadata, &mut None)
            .await
        {
            Ok(executed) => Ok(executed),
            Err(StoreAttempt::Store(error)) => Err(RepositoryError::from_store(error, 1)),
            Err(StoreAttempt::Other(error)) => Err(error),
        }
    }

    /// A retry: the same cycle in a transaction that first locks the
    /// aggregate, so that no other writer can get in between.
    async fn try_execute_locked(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        loaded: &mut Option<Loaded<A>>,
    ) -> std::result::Result<Executed<A>, StoreAttempt<A::Error>> {
        let store_error = |e: sqlx::Error| StoreAttempt::Store(StoreError::from(e));
        // A first attempt starts from the snapshot, read before the
        // transaction: on SQLite a read would keep it from waiting for the
        // lock.
        let current = match loaded {
            Some(current) => current,
            None => loaded.insert(self.starting_point(conn, id, None).await?),
        };
        let mut tx = sqlx::Connection::begin(conn).await.map_err(store_error)?;
        // Lock, then read what came since: one call.
        let locked = self
            .fold_tail(&mut tx, id, current, Tail::Locked)
            .await
            .map_err(StoreAttempt::from);
        let outcome = match locked {
            Ok(()) => {
                self.decide_and_append(&mut tx, id, command, metadata, loaded)
                    .await
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(executed) => {
                tx.commit().await.map_err(store_error)?;
                Ok(executed)
            }
            Err(error) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(%rollback, "could not roll back a retried command");
                }
                Err(error)
            }
        }
    }

    /// One load-handle-append cycle.
    async fn try_execute(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        loaded: &mut Option<Loaded<A>>,
    ) -> std::result::Result<Executed<A>, StoreAttempt<A::Error>> {
        match loaded {
            Some(current) => self.catch_up(conn, id, current, None).await?,
            None => *loaded = Some(self.load_in(conn, id, None).await?),
        }
        self.decide_and_append(conn, id, command, metadata, loaded)
            .await
    }

    /// Handles the command on the loaded state, which is up to date, and
    /// appends what it decided after the state's version.
    async fn decide_and_append(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        loaded: &mut Option<Loaded<A>>,
    ) -> std::result::Result<Executed<A>, StoreAttempt<A::Error>> {
        let current = loaded.as_ref().expect("loaded by the caller");
        let version = current.version;
        let events = current
            .state
            .handle(command)
            .map_err(RepositoryError::Rejected)?;
        if events.is_empty() {
            let Loaded { state, version } = loaded.take().expect("loaded above");
            return Ok(Executed {
                version,
                events,
                global_positions: Vec::new(),
                state,
                attempts: 1,
            });
        }
        let to_store = A::Event::to_events(&events, id, metadata).map_err(StoreAttempt::Store)?;
        let appended = self
            .store
            .append(conn, ExpectedVersion::at(version), to_store)
            .await
            .map_err(StoreAttempt::Store)?;
        let Loaded { mut state, .. } = loaded.take().expect("loaded above");
        for event in &events {
            state.apply(event);
        }
        let new_version = appended.to_version();
        if let Some(snapshots) = &self.snapshots
            && new_version / snapshots.every > version / snapshots.every
        {
            // The snapshot is only a cache: its failure must neither fail
            // the command nor abort the caller's transaction.
            if let Err(error) = self
                .save_snapshot(conn, snapshots, id, new_version, &state)
                .await
            {
                tracing::warn!(
                    aggregate_id = id,
                    version = new_version,
                    %error,
                    "could not store a snapshot"
                );
            }
        }
        Ok(Executed {
            version: new_version,
            events,
            global_positions: appended.global_positions,
            state,
            attempts: 1,
        })
    }

    /// Stores a snapshot in a transaction of its own, nested in the
    /// caller's if there is one (a savepoint), so that a failure rolls back
    /// nothing but the snapshot.
    async fn save_snapshot(
        &self,
        conn: &mut Connection<S>,
        snapshots: &Snapshots<A>,
        id: &str,
        version: i64,
        state: &A,
    ) -> std::result::Result<(), StoreError> {
        let json = (snapshots.encode)(state).map_err(StoreError::Serialization)?;
        let snapshot = Snapshot::from_raw(
            A::Event::BOUNDED_CONTEXT,
            A::Event::AGGREGATE_TYPE,
            id,
            version,
            snapshots.schema_version,
            json,
        );
        let mut nested = sqlx::Connection::begin(conn).await?;
        match self.store.save_snapshot(&mut nested, &snapshot).await {
            Ok(()) => Ok(nested.commit().await?),
            Err(error) => {
                nested.rollback().await?;
                Err(error)
            }
        }
    }
}

/// The aggregates of one repository that conflicted recently, with when.
#[derive(Debug, Default)]
struct Contended {
    seen: Mutex<HashMap<String, Instant>>,
}

impl Contended {
    /// How many aggregates are remembered at most; past it, those whose
    /// window ended are forgotten, and if that is not enough, all.
    const CAPACITY: usize = 4096;

    /// Whether `id` conflicted less than `window` ago.
    fn is_contended(&self, id: &str, window: Duration) -> bool {
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
    fn record(&self, id: &str, window: Duration) {
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

/// Which events after the loaded version to fold.
enum Tail {
    /// Those up to a version (all of them with `None`).
    UpTo(Option<i64>),
    /// All of them, after locking the aggregate.
    Locked,
}

/// An attempt fails either in the store (a conflict may be retried) or for
/// a reason retrying cannot fix.
enum StoreAttempt<E: std::error::Error + 'static> {
    Store(StoreError),
    Other(RepositoryError<E>),
}

impl<E: std::error::Error + 'static> From<RepositoryError<E>> for StoreAttempt<E> {
    fn from(error: RepositoryError<E>) -> Self {
        match error {
            RepositoryError::Store(error) => StoreAttempt::Store(error),
            other => StoreAttempt::Other(other),
        }
    }
}
