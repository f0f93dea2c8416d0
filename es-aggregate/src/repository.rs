//! Loading aggregates and executing commands against the store.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use es_store::{
    AggregateKey, AggregateRef, AggregateStreamReader, CommandId, Connection, DecodeError,
    DomainEvent, Error as StoreError, EventStore, ExpectedVersion, Metadata, PersistedEvent,
    Snapshot, SnapshotStore, StoredEvent,
};
use serde_json::value::RawValue;
use tracing::Instrument;

use crate::telemetry;

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
    /// How many times the command was tried again after a transient
    /// failure (a lost connection, a server restart, ...): see
    /// [`RetryPolicy::with_transient_retries`].
    pub transient_retries: u32,
    /// The command's id: the one given in [`Metadata::command_id`], or the
    /// one the repository made for this call. Running the command again
    /// with it ([`Metadata::with_command_id`]) returns this outcome again
    /// and writes nothing.
    pub command_id: CommandId,
    /// Whether the events were found stored instead of appended: the
    /// command id had been applied before (by an earlier call, or by an
    /// attempt of this call whose reply was lost). `version`,
    /// `global_positions` and `events` are then the original ones, and
    /// `state` is the state right after them.
    pub replayed: bool,
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

    /// A transient failure ([`StoreError::is_transient`]: a lost
    /// connection, a server restarting, a deadlock, a busy database, a pool
    /// timeout) lasted through every retry the policy allowed
    /// ([`RetryPolicy::with_transient_retries`]), and nothing of the
    /// command was stored: running it again later is safe.
    #[error("command {command_id} on {aggregate} failed after {retries} transient retr{}: {source}",
        if *.retries == 1 { "y" } else { "ies" })]
    Unavailable {
        /// The aggregate.
        aggregate: AggregateKey,
        /// The command's id.
        command_id: CommandId,
        /// How many times the command was tried again after a failure.
        retries: u32,
        /// The last failure.
        #[source]
        source: Box<StoreError>,
    },

    /// The command may or may not have been stored: the last failure
    /// (after every retry the policy allowed) came after its events were
    /// sent, and whether they were committed could not be found out. Run
    /// the command again with the same id ([`Metadata::with_command_id`]
    /// with `command_id`): if it was stored, that returns its original
    /// outcome ([`Executed::replayed`]) and writes nothing; if not, it runs.
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository, RepositoryError};
    /// # async fn demo<A: Aggregate>(repository: Repository<A>, command: A::Command) -> Result<(), Box<dyn std::error::Error>> {
    /// match repository.execute("acc-1", &command).await {
    ///     Err(RepositoryError::OutcomeUnknown { command_id, .. }) => {
    ///         // later, when the database is back:
    ///         let metadata = es_store::Metadata::new().with_command_id(command_id);
    ///         let executed = repository.execute_with("acc-1", &command, &metadata).await?;
    ///         println!("applied once, at version {}", executed.version);
    ///     }
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    #[error("the outcome of command {command_id} on {aggregate} is unknown after {retries} transient retr{}: {source}",
        if *.retries == 1 { "y" } else { "ies" })]
    OutcomeUnknown {
        /// The aggregate.
        aggregate: AggregateKey,
        /// The command's id: run the command again with it to find out.
        command_id: CommandId,
        /// How many times the command was tried again after a failure.
        retries: u32,
        /// The last failure.
        #[source]
        source: Box<StoreError>,
    },

    /// The command id was applied before, but to another aggregate or as
    /// a different command; nothing was written.
    #[error("command id {command_id} given for {aggregate} was already used {reason}")]
    CommandIdReused {
        /// The command id.
        command_id: CommandId,
        /// The aggregate the command was run on now.
        aggregate: AggregateKey,
        /// What the id was used for.
        reason: CommandIdReuse,
    },

    /// The store failed (or refused the input, for example an empty id).
    #[error(transparent)]
    Store(StoreError),
}

/// What a reused command id was used for before
/// ([`RepositoryError::CommandIdReused`]).
///
/// ```
/// use es_aggregate::CommandIdReuse;
/// use es_store::AggregateKey;
///
/// let other = CommandIdReuse::OtherAggregate(Box::new(AggregateKey::new("Billing", "Account", "acc-2")));
/// assert_eq!(other.to_string(), "for aggregate Billing/Account/acc-2");
/// let different = CommandIdReuse::DifferentCommand { version: 7 };
/// assert_eq!(different.to_string(), "by a different command (stored at version 7)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandIdReuse {
    /// For a command on another aggregate.
    OtherAggregate(Box<AggregateKey>),
    /// For a command on this aggregate that decided differently: handled
    /// on the state the original command was decided on (the state before
    /// `version`), this command is refused or produces other events.
    DifferentCommand {
        /// The version of the original command's first event.
        version: i64,
    },
}

impl fmt::Display for CommandIdReuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandIdReuse::OtherAggregate(key) => write!(f, "for aggregate {key}"),
            CommandIdReuse::DifferentCommand { version } => {
                write!(f, "by a different command (stored at version {version})")
            }
        }
    }
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

impl<E: std::error::Error + 'static> RepositoryError<E> {
    /// Whether the command lost the optimistic-concurrency check on every
    /// attempt ([`RepositoryError::Conflict`]).
    pub fn is_conflict(&self) -> bool {
        matches!(self, RepositoryError::Conflict { .. })
    }

    /// Whether the aggregate refused the command
    /// ([`RepositoryError::Rejected`]).
    pub fn is_rejected(&self) -> bool {
        matches!(self, RepositoryError::Rejected(_))
    }

    /// Whether the failure is passing: trying again later may succeed
    /// ([`RepositoryError::Unavailable`], [`RepositoryError::OutcomeUnknown`],
    /// or a store error that [`StoreError::is_transient`]).
    ///
    /// ```
    /// use es_aggregate::RepositoryError;
    /// use es_store::{AggregateKey, Error as StoreError, ExpectedVersion};
    ///
    /// type E = RepositoryError<std::io::Error>;
    /// let conflict = E::Conflict {
    ///     aggregate: AggregateKey::new("Billing", "Account", "acc-1"),
    ///     attempts: 20,
    ///     expected: ExpectedVersion::Exact(3),
    ///     actual: Some(4),
    /// };
    /// assert!(conflict.is_conflict() && !conflict.is_transient() && conflict.outcome_known());
    /// let refused = E::Rejected(std::io::Error::other("insufficient funds"));
    /// assert!(refused.is_rejected() && !refused.is_conflict());
    /// assert!(E::from(StoreError::from(sqlx::Error::PoolTimedOut)).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            RepositoryError::Unavailable { .. } | RepositoryError::OutcomeUnknown { .. } => true,
            RepositoryError::Store(error) => error.is_transient(),
            _ => false,
        }
    }

    /// Whether the caller knows what the command did: false only for
    /// [`RepositoryError::OutcomeUnknown`], after which the events may or
    /// may not be stored. Every other error means nothing was written.
    ///
    /// ```
    /// use es_aggregate::RepositoryError;
    /// use es_store::{AggregateKey, CommandId, Error as StoreError};
    ///
    /// let lost = RepositoryError::<std::io::Error>::OutcomeUnknown {
    ///     aggregate: AggregateKey::new("Billing", "Account", "acc-1"),
    ///     command_id: CommandId::new(),
    ///     retries: 10,
    ///     source: Box::new(StoreError::from(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()))),
    /// };
    /// assert!(!lost.outcome_known());
    /// assert!(lost.is_transient());
    /// assert!(RepositoryError::<std::io::Error>::from(StoreError::NoEvents).outcome_known());
    /// ```
    pub fn outcome_known(&self) -> bool {
        !matches!(self, RepositoryError::OutcomeUnknown { .. })
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

    /// Loads the aggregate's current state.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, A> {
        let mut conn = es_store::acquire(&self.pool).await?;
        self.load_in(&mut conn, id, None).await
    }

    /// Loads the state the aggregate had at `version` (time travel): the
    /// events up to and including it. Asking beyond the current version
    /// gives the current state.
    pub async fn load_at(&self, id: &str, version: i64) -> Result<Loaded<A>, A> {
        let mut conn = es_store::acquire(&self.pool).await?;
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
        let span = tracing::debug_span!(
            "load",
            bounded_context = A::Event::BOUNDED_CONTEXT,
            aggregate_type = A::Event::AGGREGATE_TYPE,
            aggregate_id = id,
            to_version,
            version = tracing::field::Empty,
        );
        let loaded = async {
            let mut loaded = self.starting_point(conn, id, to_version).await?;
            self.catch_up(conn, id, &mut loaded, to_version).await?;
            Ok(loaded)
        }
        .instrument(span.clone())
        .await;
        if let Ok(loaded) = &loaded {
            span.record("version", loaded.version);
        }
        loaded
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
        let mut conn = es_store::acquire(&self.pool).await?;
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
    /// let executed = repository.execute_in(&mut *tx, "acc-1", &command).await?;
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
        let started = std::time::Instant::now();
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
        telemetry::load::<A>(started.elapsed());
        Ok(())
    }

    /// Executes a command with no metadata. See [`Repository::execute_with`].
    pub async fn execute(&self, id: &str, command: &A::Command) -> Result<Executed<A>, A> {
        self.execute_with(id, command, &Metadata::default()).await
    }

    /// Executes a command: load, handle, append with `Exact(version)`,
    /// retrying on conflicts and on transient failures under the retry
    /// policy. `metadata` (correlation and causation ids, free fields)
    /// lands on every event produced.
    ///
    /// A refused command is [`RepositoryError::Rejected`] and is never
    /// retried. A command that produces no events writes nothing and
    /// succeeds. After the last attempt a conflict is
    /// [`RepositoryError::Conflict`] with the number of attempts made.
    ///
    /// # Transient failures
    ///
    /// A lost connection, a server shutting down or restarting, a deadlock
    /// or serialization failure, a busy SQLite database or a pool timeout
    /// ([`StoreError::is_transient`]) is retried on a fresh connection
    /// after a backoff ([`RetryPolicy::with_transient_retries`]); the
    /// caller sees nothing of failures the retries absorb
    /// ([`Executed::transient_retries`] counts them). The command's events
    /// keep their ids on every attempt (derived from its
    /// [`CommandId`]), so a retry after a failure that may have come after
    /// the commit (the reply was lost) first looks the ids up: if the
    /// events are stored, it returns their original outcome
    /// ([`Executed::replayed`]) instead of running the command again.
    /// When the retries run out the command fails with
    /// [`RepositoryError::Unavailable`] (nothing stored) or
    /// [`RepositoryError::OutcomeUnknown`] (perhaps stored; run it again
    /// with the `command_id` it names to find out).
    ///
    /// # Idempotent commands
    ///
    /// With [`Metadata::with_command_id`] the command carries an id of the
    /// caller's (an HTTP `Idempotency-Key` through [`CommandId::from_key`],
    /// say). If a command with that id was applied before, the call
    /// returns the original outcome (versions, global positions, events,
    /// and the state right after them, with [`Executed::replayed`] set) and
    /// appends nothing, even if the aggregate moved on since. If the id was
    /// applied to another aggregate, or as a command that decides
    /// differently on the state the original was decided on, the call is
    /// [`RepositoryError::CommandIdReused`] and writes nothing. That check
    /// handles the command again on the earlier state, so it relies on
    /// `handle` being a pure function of the state and the command (as it
    /// must be for conflict retries too).
    ///
    /// This holds for as long as the command's events are stored: the id
    /// is recognised by its events' ids, which the store keeps unique
    /// forever. A command that produced no events leaves no trace, so the
    /// same id runs it again. The check costs one lookup by event id before
    /// the command runs; commands without an id skip it.
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository};
    /// # async fn demo<A: Aggregate>(repository: Repository<A>, command: A::Command) -> Result<(), Box<dyn std::error::Error>> {
    /// use es_store::{CommandId, Metadata};
    ///
    /// let metadata = Metadata::new().with_command_id(CommandId::from_key("request-8c1f"));
    /// let first = repository.execute_with("acc-1", &command, &metadata).await?;
    /// let again = repository.execute_with("acc-1", &command, &metadata).await?;
    /// assert!(again.replayed);
    /// assert_eq!((again.version, &again.global_positions), (first.version, &first.global_positions));
    /// # Ok(()) }
    /// ```
    pub async fn execute_with(
        &self,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, A> {
        let metadata = &telemetry::traced(metadata);
        observe_command(id, metadata, async {
            let given = metadata.command_id;
            let mut call = Call {
                command_id: given.unwrap_or_else(CommandId::new),
                verify: given.is_some(),
                look_up: given.is_some(),
                maybe_stored: false,
                attempt: 1,
                retries: 0,
                try_cache: true,
            };
            loop {
                let error = match self.run_call(&mut call, id, command, metadata).await {
                    Ok(mut executed) => {
                        executed.attempts = call.attempt;
                        executed.transient_retries = call.retries;
                        return Ok(executed);
                    }
                    Err(Failure::Replayed(mut executed)) => {
                        executed.attempts = call.attempt;
                        executed.transient_retries = call.retries;
                        return Ok(*executed);
                    }
                    Err(Failure::Final(error)) => return Err(error),
                    Err(Failure::Transient(error)) => error,
                };
                if let Some(cache) = &self.cache {
                    cache.evict(id);
                }
                if call.retries >= self.retry.max_transient_retries() {
                    let aggregate = Self::aggregate(id).to_owned();
                    let (command_id, retries, source) =
                        (call.command_id, call.retries, Box::new(error));
                    return Err(if call.maybe_stored {
                        RepositoryError::OutcomeUnknown {
                            aggregate,
                            command_id,
                            retries,
                            source,
                        }
                    } else {
                        RepositoryError::Unavailable {
                            aggregate,
                            command_id,
                            retries,
                            source,
                        }
                    });
                }
                call.retries += 1;
                let backoff = self.retry.transient_backoff(call.retries);
                tracing::debug!(
                    retry = call.retries,
                    ?backoff,
                    maybe_stored = call.maybe_stored,
                    %error,
                    "transient failure, retrying"
                );
                tokio::time::sleep(backoff).await;
            }
        })
        .await
    }

    /// One try of a command call on a fresh connection: find out whether
    /// the command is stored already if that is to be checked, then the
    /// cached attempt (the first time) and the conflict retries.
    async fn run_call(
        &self,
        call: &mut Call,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> std::result::Result<Executed<A>, Failure<A>> {
        let mut conn = es_store::acquire(&self.pool)
            .await
            .map_err(|e| call.failed::<A>(id, e))?;
        if call.look_up {
            // After a failure of our own, what is stored is ours: no need
            // to check that it is the same command.
            let verify = call.verify && !call.maybe_stored;
            match self
                .find_applied(&mut conn, id, command, call.command_id, verify)
                .await
            {
                Ok(Some(executed)) => return Ok(executed),
                Ok(None) => {
                    call.look_up = false;
                    call.maybe_stored = false;
                }
                Err(RepositoryError::Store(error)) => return Err(call.failed::<A>(id, error)),
                Err(error) => return Err(Failure::Final(error)),
            }
        }
        let command_id = call.command_id;
        // A conflict leaves the loaded state valid up to its version:
        // the next attempt only folds the events that came since.
        let mut loaded = None;
        if let Some(cache) = &self.cache
            && std::mem::take(&mut call.try_cache)
            && let Some(cached) = cache.get(id)
        {
            let mut unverified = Some(cached);
            match self
                .decide_and_append(
                    &mut conn,
                    id,
                    command,
                    metadata,
                    command_id,
                    &mut unverified,
                )
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
                Err(failed) => {
                    cache.evict(id);
                    return Err(self
                        .attempt_failed(&mut conn, call, id, command, failed)
                        .await);
                }
            }
        }
        let window = self.retry.contention_window();
        let lock = self.retry.lock_on_retry();
        // Recently contended: skip the optimistic attempt, which would
        // most likely lose.
        let start_locked = lock && self.contended.is_contended(id, window);
        loop {
            let outcome = if lock && (call.attempt > 1 || start_locked) {
                self.try_execute_locked(&mut conn, id, command, metadata, command_id, &mut loaded)
                    .await
            } else {
                self.try_execute(&mut conn, id, command, metadata, command_id, &mut loaded)
                    .await
            };
            match outcome {
                Err(StoreAttempt::Store(error @ StoreError::OptimisticConcurrency { .. }))
                    if call.attempt < self.retry.max_attempts() =>
                {
                    if lock {
                        self.contended.record(id, window);
                    }
                    // A locked retry waits in the aggregate's lock queue
                    // instead of sleeping.
                    let backoff = if lock {
                        Duration::ZERO
                    } else {
                        self.retry.backoff(call.attempt)
                    };
                    tracing::debug!(attempt = call.attempt, ?backoff, %error, "conflict, retrying");
                    if !backoff.is_zero() {
                        tokio::time::sleep(backoff).await;
                    }
                    call.attempt += 1;
                }
                Err(failed) => {
                    if let Some(cache) = &self.cache {
                        cache.evict(id);
                    }
                    return Err(self
                        .attempt_failed(&mut conn, call, id, command, failed)
                        .await);
                }
                Ok(mut executed) => {
                    if let Some(cache) = &self.cache {
                        cache.put(id, executed.version, &executed.state);
                    }
                    executed.attempts = call.attempt;
                    return Ok(executed);
                }
            }
        }
    }

    /// What an attempt's failure means for the call: a transient failure
    /// (perhaps after the events were committed) to retry; a reused event
    /// id, which says the command's events are stored (by a concurrent
    /// call with the same command id, or a lost attempt of this one), so
    /// their outcome is looked up; or the end.
    async fn attempt_failed(
        &self,
        conn: &mut Connection<S>,
        call: &mut Call,
        id: &str,
        command: &A::Command,
        failed: StoreAttempt<A::Error>,
    ) -> Failure<A> {
        match failed {
            StoreAttempt::Unsure(error) if error.is_transient() => {
                call.maybe_stored = true;
                call.look_up = true;
                Failure::Transient(error)
            }
            StoreAttempt::Store(error) | StoreAttempt::Unsure(error) => {
                if let StoreError::EventIdConflict { .. } = error {
                    match self
                        .find_applied(conn, id, command, call.command_id, call.verify)
                        .await
                    {
                        Ok(Some(executed)) => return Failure::Replayed(Box::new(executed)),
                        Ok(None) => {}
                        Err(RepositoryError::Store(lookup)) if lookup.is_transient() => {
                            call.look_up = true;
                            return Failure::Transient(lookup);
                        }
                        Err(other) => return Failure::Final(other),
                    }
                }
                call.failed::<A>(id, error)
            }
            StoreAttempt::Other(error) => Failure::Final(error),
        }
    }

    /// Whether the command's events are stored: if they are, the original
    /// outcome, after checking (with `verify`) that they are this
    /// aggregate's and that the command decides them on the state before
    /// them.
    async fn find_applied(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        command_id: CommandId,
        verify: bool,
    ) -> Result<Option<Executed<A>>, A> {
        /// How many event ids one lookup asks for; a longer batch takes
        /// more lookups.
        const LOOKUP_IDS: usize = 16;
        let mut stored: Vec<PersistedEvent> = Vec::new();
        loop {
            let from = stored.len();
            let ids: Vec<uuid::Uuid> = (from..from + LOOKUP_IDS)
                .map(|index| command_id.event_id(index))
                .collect();
            let found = self.store.events_by_id(conn, &ids).await?;
            let run = found
                .iter()
                .zip(&ids)
                .take_while(|(event, id)| event.event_id == **id)
                .count();
            stored.extend(found.into_iter().take(run));
            if run < ids.len() {
                break;
            }
        }
        let aggregate = Self::aggregate(id);
        let (Some(first), Some(last)) = (stored.first(), stored.last()) else {
            return Ok(None);
        };
        if first.aggregate() != aggregate {
            return Err(RepositoryError::CommandIdReused {
                command_id,
                aggregate: aggregate.to_owned(),
                reason: CommandIdReuse::OtherAggregate(Box::new(first.aggregate().to_owned())),
            });
        }
        let (first_version, version) = (first.aggregate_version, last.aggregate_version);
        let events = stored
            .iter()
            .map(|event| {
                A::Event::decode_json(&event.event_type, event.event_version, event.payload.get())
                    .map_err(|source| RepositoryError::Decode {
                        aggregate: aggregate.to_owned(),
                        source: Box::new(source),
                    })
            })
            .collect::<Result<Vec<_>, A>>()?;
        let Loaded { mut state, .. } = self.load_in(conn, id, Some(first_version - 1)).await?;
        if verify {
            let same = match state.handle(command) {
                Ok(decided) => same_events::<A>(id, &decided, &events)?,
                Err(_) => false,
            };
            if !same {
                return Err(RepositoryError::CommandIdReused {
                    command_id,
                    aggregate: aggregate.to_owned(),
                    reason: CommandIdReuse::DifferentCommand {
                        version: first_version,
                    },
                });
            }
        }
        for event in &events {
            state.apply(event);
        }
        tracing::debug!(%command_id, version, "command applied before, returning its outcome");
        Ok(Some(Executed {
            version,
            events,
            global_positions: stored.iter().map(|e| e.global_position).collect(),
            state,
            attempts: 1,
            transient_retries: 0,
            command_id,
            replayed: true,
        }))
    }

    /// Executes a command on the caller's connection or transaction, with
    /// no retry (a conflict or a transient failure aborts what the caller
    /// is doing; the caller decides whether to run it all again), and no
    /// metadata. Use it to commit a command atomically with your own writes
    /// or with commands on other aggregates; [`UnitOfWork`](crate::UnitOfWork)
    /// does that with the retries.
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository};
    /// # async fn demo<A: Aggregate>(repository: Repository<A>, debit: A::Command, credit: A::Command) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = repository.pool().begin().await?;
    /// repository.execute_in(&mut *tx, "acc-1", &debit).await?;
    /// repository.execute_in(&mut *tx, "acc-2", &credit).await?;
    /// tx.commit().await?; // both or neither
    /// # Ok(()) }
    /// ```
    pub async fn execute_in(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
    ) -> Result<Executed<A>, A> {
        self.execute_in_with(conn, id, command, &Metadata::default())
            .await
    }

    /// [`Repository::execute_in`] with metadata (correlation and causation
    /// ids, free fields) on every event produced.
    ///
    /// With a [`Metadata::command_id`], a command applied before returns
    /// its original outcome and a reused id is
    /// [`RepositoryError::CommandIdReused`], as with
    /// [`Repository::execute_with`].
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository};
    /// # async fn demo<A: Aggregate>(repository: Repository<A>, command: A::Command) -> Result<(), Box<dyn std::error::Error>> {
    /// let metadata = es_store::Metadata::new().with_correlation_id(uuid::Uuid::now_v7());
    /// let mut tx = repository.pool().begin().await?;
    /// repository.execute_in_with(&mut *tx, "acc-1", &command, &metadata).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_in_with(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, A> {
        let metadata = &telemetry::traced(metadata);
        observe_command(id, metadata, async {
            let command_id = match metadata.command_id {
                Some(given) => {
                    if let Some(executed) =
                        self.find_applied(conn, id, command, given, true).await?
                    {
                        return Ok(executed);
                    }
                    given
                }
                None => CommandId::new(),
            };
            self.try_execute(conn, id, command, metadata, command_id, &mut None)
                .await
                .map_err(StoreAttempt::into_error)
        })
        .await
    }

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

    /// A command of a unit of work, in its transaction, with the id the
    /// unit gave it (in `metadata`): looked up first when the unit may have
    /// been committed before (`look_up`), and decided under the
    /// aggregate's lock when it conflicted in an earlier run (`lock`).
    pub(crate) async fn execute_in_unit(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        look_up: bool,
        lock: bool,
    ) -> Result<Executed<A>, A> {
        let command_id = metadata
            .command_id
            .expect("the unit of work names every command");
        observe_command(id, metadata, async {
            if look_up
                && let Some(executed) = self
                    .find_applied(conn, id, command, command_id, true)
                    .await?
            {
                return Ok(executed);
            }
            let mut loaded = None;
            let outcome = if lock {
                let mut current = self.starting_point(conn, id, None).await?;
                self.fold_tail(conn, id, &mut current, Tail::Locked).await?;
                loaded = Some(current);
                self.decide_and_append(conn, id, command, metadata, command_id, &mut loaded)
                    .await
            } else {
                self.try_execute(conn, id, command, metadata, command_id, &mut loaded)
                    .await
            };
            outcome.map_err(StoreAttempt::into_error)
        })
        .await
    }

    /// A retry: the same cycle in a transaction that first locks the
    /// aggregate, so that no other writer can get in between.
    async fn try_execute_locked(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        command_id: CommandId,
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
                self.decide_and_append(&mut tx, id, command, metadata, command_id, loaded)
                    .await
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(executed) => {
                // A commit whose reply is lost may have been committed.
                tx.commit()
                    .await
                    .map_err(|e| StoreAttempt::sent(StoreError::from(e)))?;
                if !executed.events.is_empty() {
                    self.store.notify_committed();
                }
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
        command_id: CommandId,
        loaded: &mut Option<Loaded<A>>,
    ) -> std::result::Result<Executed<A>, StoreAttempt<A::Error>> {
        match loaded {
            Some(current) => self.catch_up(conn, id, current, None).await?,
            None => *loaded = Some(self.load_in(conn, id, None).await?),
        }
        self.decide_and_append(conn, id, command, metadata, command_id, loaded)
            .await
    }

    /// Handles the command on the loaded state, which is up to date, and
    /// appends what it decided after the state's version, with the event
    /// ids of `command_id`.
    async fn decide_and_append(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        command_id: CommandId,
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
                transient_retries: 0,
                command_id,
                replayed: false,
            });
        }
        let mut to_store =
            A::Event::to_events(&events, id, metadata).map_err(StoreAttempt::Store)?;
        if metadata.command_id != Some(command_id) {
            for (index, event) in to_store.iter_mut().enumerate() {
                event.event_id = command_id.event_id(index);
            }
        }
        // Once the append is sent, a lost reply leaves its outcome unknown
        // (outside a transaction it commits on its own).
        let appended = self
            .store
            .append(conn, ExpectedVersion::at(version), to_store)
            .await
            .map_err(StoreAttempt::sent)?;
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
            transient_retries: 0,
            command_id,
            replayed: false,
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

/// An attempt fails either in the store (a conflict or a transient failure
/// may be retried) or for a reason retrying cannot fix.
enum StoreAttempt<E: std::error::Error + 'static> {
    /// Nothing of the attempt was committed.
    Store(StoreError),
    /// The append or the commit failed: if the failure is transient, the
    /// events may have been committed all the same.
    Unsure(StoreError),
    Other(RepositoryError<E>),
}

/// How one try of a command call ended, when not with success.
enum Failure<A: Aggregate> {
    /// A transient failure: try again after a backoff.
    Transient(StoreError),
    /// The command's events were found stored: their outcome.
    Replayed(Box<Executed<A>>),
    /// The answer.
    Final(RepositoryError<A::Error>),
}

/// One call of [`Repository::execute_with`], across its tries.
struct Call {
    /// The id the events' ids are derived from, the same on every try.
    command_id: CommandId,
    /// Whether the caller gave the id: stored events of it must then be
    /// checked to be this command's.
    verify: bool,
    /// Whether the next try must first look up whether the events are
    /// stored.
    look_up: bool,
    /// Whether a failed try may have committed the events, and no lookup
    /// has said otherwise since.
    maybe_stored: bool,
    /// The attempt number (1 + conflicts retried).
    attempt: u32,
    /// The transient failures retried.
    retries: u32,
    /// Whether the state cache may still be tried.
    try_cache: bool,
}

impl Call {
    /// What a store failure means at this point of the call.
    fn failed<A: Aggregate>(&self, id: &str, error: StoreError) -> Failure<A> {
        if error.is_transient() {
            Failure::Transient(error)
        } else if self.maybe_stored {
            Failure::Final(RepositoryError::OutcomeUnknown {
                aggregate: AggregateKey::new(
                    A::Event::BOUNDED_CONTEXT,
                    A::Event::AGGREGATE_TYPE,
                    id,
                ),
                command_id: self.command_id,
                retries: self.retries,
                source: Box::new(error),
            })
        } else {
            Failure::Final(RepositoryError::from_store(error, self.attempt))
        }
    }
}

/// Whether two batches of events are the same when encoded (type, schema
/// version and payload, as JSON values), as the store compares a retried
/// batch.
fn same_events<A: Aggregate>(
    id: &str,
    decided: &[A::Event],
    stored: &[A::Event],
) -> std::result::Result<bool, RepositoryError<A::Error>> {
    if decided.len() != stored.len() {
        return Ok(false);
    }
    let none = Metadata::default();
    let decided = A::Event::to_events(decided, id, &none)?;
    let stored = A::Event::to_events(stored, id, &none)?;
    let value = |event: &es_store::Event| {
        serde_json::from_str::<serde_json::Value>(event.payload.get())
            .map_err(|e| RepositoryError::Store(StoreError::Serialization(e)))
    };
    for (a, b) in decided.iter().zip(&stored) {
        if a.event_type != b.event_type
            || a.event_version != b.event_version
            || value(a)? != value(b)?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

impl<E: std::error::Error + 'static> StoreAttempt<E> {
    /// What the attempt's failure is to a caller who does not retry: in
    /// the caller's transaction, the outcome is the commit's to decide.
    fn into_error(self) -> RepositoryError<E> {
        match self {
            StoreAttempt::Store(error) | StoreAttempt::Unsure(error) => {
                RepositoryError::from_store(error, 1)
            }
            StoreAttempt::Other(error) => error,
        }
    }

    /// A failure of a write that was sent: unsure when it is transient (the
    /// connection may have been lost after the commit), else refused.
    fn sent(error: StoreError) -> Self {
        if error.is_transient() {
            StoreAttempt::Unsure(error)
        } else {
            StoreAttempt::Store(error)
        }
    }
}

impl<E: std::error::Error + 'static> From<RepositoryError<E>> for StoreAttempt<E> {
    fn from(error: RepositoryError<E>) -> Self {
        match error {
            RepositoryError::Store(error) => StoreAttempt::Store(error),
            other => StoreAttempt::Other(other),
        }
    }
}

/// Runs a command in its span, and records its outcome on the span and in
/// the metrics.
async fn observe_command<A: Aggregate>(
    id: &str,
    metadata: &Metadata,
    command: impl Future<Output = Result<Executed<A>, A>>,
) -> Result<Executed<A>, A> {
    let span = command_span::<A>(id, metadata);
    let started = std::time::Instant::now();
    let outcome = command.instrument(span.clone()).await;
    telemetry::command(started, &outcome);
    record_outcome(&span, &outcome);
    outcome
}

/// The span of one command: the aggregate, the command's and correlation
/// ids; the version reached and the attempts are recorded at the end.
fn command_span<A: Aggregate>(id: &str, metadata: &Metadata) -> tracing::Span {
    tracing::debug_span!(
        "execute",
        bounded_context = A::Event::BOUNDED_CONTEXT,
        aggregate_type = A::Event::AGGREGATE_TYPE,
        aggregate_id = id,
        command_id = metadata.command_id.map(tracing::field::display),
        correlation_id = metadata.correlation_id.map(tracing::field::display),
        causation_id = metadata.causation_id.map(tracing::field::display),
        trace_id = metadata.trace_id.as_deref(),
        version = tracing::field::Empty,
        attempts = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

/// Records a command's outcome on its span.
fn record_outcome<A: Aggregate>(span: &tracing::Span, outcome: &Result<Executed<A>, A>) {
    match outcome {
        Ok(executed) => {
            span.record("version", executed.version);
            span.record("attempts", executed.attempts);
            span.record(
                "outcome",
                if executed.replayed {
                    "replayed"
                } else {
                    "executed"
                },
            );
        }
        Err(error) => {
            span.record("outcome", tracing::field::display(error));
        }
    }
}
