//! Units of work: commands on several aggregates in one transaction, run
//! again as a whole on a conflict or a transient failure.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use es_store::{
    AggregateKey, AggregateStreamReader, Backend, CommandId, Connection, DecodeError, DomainEvent,
    Error as StoreError, EventStore, ExpectedVersion, Metadata, SnapshotStore,
};
use tracing::Instrument;

use crate::{
    Aggregate, CommandIdReuse, Executed, Loaded, Repository, RepositoryError, RetryPolicy,
};

/// Runs a closure that executes commands on several aggregates (of any
/// types) in one transaction, commits it, and runs the whole closure again
/// on an optimistic-concurrency conflict or a transient failure, under a
/// [`RetryPolicy`].
///
/// The closure gets a [`Work`], the transaction's handle: it executes
/// commands with [`Work::execute`] (one error type, [`WorkError`], for
/// every aggregate, so `?` works across them), loads and locks aggregates,
/// and reaches the connection for writes of its own ([`Work::conn`]).
/// Either everything it did is committed, or nothing.
///
/// - **Beginning.** The transaction begins the way the backend needs for
///   one that reads before it writes ([`EventStore::begin_write`]: SQLite's
///   `BEGIN IMMEDIATE`, `READ COMMITTED` on MySQL, a plain `BEGIN` on
///   PostgreSQL).
/// - **Conflicts.** When a command loses the version check, the
///   transaction is rolled back and the closure runs again from the start
///   on fresh state, up to [`RetryPolicy::max_attempts`] runs in all. With
///   [`RetryPolicy::with_lock_on_retry`] (the default) the next runs decide
///   the commands on the aggregates that conflicted under their lock, so
///   contended aggregates queue instead of racing again; and for the
///   repository's contention window
///   ([`RetryPolicy::with_contention_window`]) its other units and
///   commands start under that lock too.
/// - **Transient failures** ([`StoreError::is_transient`]: a lost
///   connection, a server restart, a deadlock, a busy database, a pool
///   timeout) run the closure again after a backoff
///   ([`RetryPolicy::with_transient_retries`]).
/// - **A lost commit.** Every command of the unit gets an id derived from
///   the unit's [`CommandId`] and its place in the closure
///   ([`CommandId::part`]), the same in every run. When the commit's reply
///   was lost, the next run first looks each command up: if the unit was
///   committed, each [`Work::execute`] returns its original outcome
///   ([`Executed::replayed`], and [`Work::replayed`] says so) and the
///   commit writes nothing new. Writes of the closure's own (through
///   [`Work::conn`]) are run again: make them idempotent, or skip them
///   when [`Work::replayed`].
/// - **Idempotent units.** With [`UnitOfWork::run_with`] and a
///   [`Metadata::with_command_id`] (an HTTP `Idempotency-Key`, say), the
///   unit is looked up on every run, across calls and processes, as
///   [`Repository::execute_with`] does for one command. Copies of the unit
///   run at the same time get one answer: one commits, the others return
///   its outcome ([`Work::replayed`]); a copy that meets the first one's
///   events (refused because of them, or refused the same event ids) runs
///   again and looks every command up.
///
/// The closure must decide the same way on the same state (it runs more
/// than once), and use the unit's repositories only on the unit's database.
///
/// ```no_run
/// # use es_aggregate::{Aggregate, Repository, UnitOfWork, WorkError};
/// # async fn demo<A: Aggregate>(accounts: Repository<A>, debit: A::Command, credit: A::Command) -> Result<(), WorkError> {
/// let unit = accounts.unit_of_work();
/// let (accounts, debit, credit) = (&accounts, &debit, &credit);
/// let version = unit
///     .run(move |work| async move {
///         work.execute(accounts, "acc-1", debit).await?;
///         let credited = work.execute(accounts, "acc-2", credit).await?;
///         Ok(credited.version)
///     })
///     .await?;
/// println!("acc-2 is at version {version}");
/// # Ok(()) }
/// ```
pub struct UnitOfWork<S: Backend = es_store::DefaultStore> {
    store: S,
    pool: sqlx::Pool<S::Database>,
    retry: RetryPolicy,
}

impl<S: Backend + Clone> Clone for UnitOfWork<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            pool: self.pool.clone(),
            retry: self.retry,
        }
    }
}

impl<S: Backend> fmt::Debug for UnitOfWork<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore> UnitOfWork<S> {
    /// Units of work on `store`, taking connections from `pool`, with the
    /// default retry policy.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) {
    /// use es_aggregate::{RetryPolicy, UnitOfWork};
    /// let unit = UnitOfWork::new(es_store::PostgresStore::new(), pool)
    ///     .with_retry_policy(RetryPolicy::exponential(10, std::time::Duration::from_millis(5), std::time::Duration::from_millis(200)));
    /// assert_eq!(unit.retry_policy().max_attempts(), 10);
    /// # }
    /// ```
    pub fn new(store: S, pool: sqlx::Pool<S::Database>) -> Self {
        Self {
            store,
            pool,
            retry: RetryPolicy::default(),
        }
    }

    /// Sets the retry policy: how many times the closure runs on
    /// conflicts, whether those runs lock the aggregates that conflicted,
    /// and the retries after transient failures.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The pool connections are taken from.
    pub fn pool(&self) -> &sqlx::Pool<S::Database> {
        &self.pool
    }

    /// Runs `work` in a transaction and commits it, running it again on
    /// conflicts and transient failures; see [`UnitOfWork`]. Returns what
    /// the last run returned.
    ///
    /// The closure gets the transaction's [`Work`] by value and returns a
    /// future: capture references (`let accounts = &accounts;` and a `move`
    /// closure), since it may be called more than once.
    ///
    /// An error the closure returns ends the unit, after rolling back,
    /// unless it is a conflict or transient ([`WorkError::is_conflict`],
    /// [`WorkError::is_transient`]) and the policy allows another run.
    pub async fn run<T, F, Fut>(&self, work: F) -> Result<T, WorkError>
    where
        F: FnMut(Work<S>) -> Fut + Send,
        Fut: Future<Output = Result<T, WorkError>> + Send,
        T: Send,
    {
        self.run_with(&Metadata::default(), work).await
    }

    /// [`UnitOfWork::run`] with metadata on every event of the unit's
    /// commands (those run with [`Work::execute`]). A
    /// [`Metadata::command_id`] names the unit: if a unit with that id was
    /// committed before, its commands return their original outcomes
    /// ([`Work::replayed`]) and nothing new is appended.
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository, UnitOfWork, WorkError};
    /// # async fn demo<A: Aggregate>(accounts: Repository<A>, debit: A::Command, key: &str) -> Result<(), WorkError> {
    /// use es_store::{CommandId, Metadata};
    /// let metadata = Metadata::new().with_command_id(CommandId::from_key(key));
    /// let (accounts, debit) = (&accounts, &debit);
    /// let replayed = accounts
    ///     .unit_of_work()
    ///     .run_with(&metadata, move |work| async move {
    ///         work.execute(accounts, "acc-1", debit).await?;
    ///         Ok(work.replayed())
    ///     })
    ///     .await?;
    /// println!("{}", if replayed { "done before" } else { "done now" });
    /// # Ok(()) }
    /// ```
    pub async fn run_with<T, F, Fut>(
        &self,
        metadata: &Metadata,
        mut work: F,
    ) -> Result<T, WorkError>
    where
        F: FnMut(Work<S>) -> Fut + Send,
        Fut: Future<Output = Result<T, WorkError>> + Send,
        T: Send,
    {
        let metadata = &crate::telemetry::traced(metadata);
        let given = metadata.command_id.is_some();
        let unit_id = metadata.command_id.unwrap_or_else(CommandId::new);
        let span = tracing::debug_span!(
            "unit_of_work",
            %unit_id,
            correlation_id = metadata.correlation_id.map(tracing::field::display),
            trace_id = metadata.trace_id.as_deref(),
            runs = tracing::field::Empty,
        );
        let outcome = async {
            let mut run = Run {
                attempt: 1,
                retries: 0,
                maybe_stored: false,
                contended: HashSet::new(),
                look_up: false,
            };
            loop {
                let look_up = given || run.maybe_stored || run.look_up;
                let outcome = self
                    .run_once(&mut work, metadata, unit_id, look_up, &run)
                    .await;
                let error = match outcome {
                    Ok(value) => return Ok(value),
                    Err(Ended::Final(error)) => return Err(error),
                    Err(Ended::Stored(error)) => {
                        if run.attempt >= self.retry.max_attempts() {
                            return Err(error.with_attempts(run.attempt));
                        }
                        // The other transaction committed (a refusal on
                        // an event id waits for that): no backoff.
                        tracing::debug!(attempt = run.attempt, %error,
                            "the unit's events are stored by another run, looking them up");
                        run.look_up = true;
                        run.attempt += 1;
                        crate::telemetry::unit_rerun("stored");
                        continue;
                    }
                    Err(Ended::Conflict(error)) => {
                        if run.attempt >= self.retry.max_attempts() {
                            return Err(error.with_attempts(run.attempt));
                        }
                        let lock = self.retry.lock_on_retry();
                        if let (true, WorkError::Conflict { aggregate, .. }) = (lock, &error) {
                            run.contended.insert(aggregate.clone());
                        }
                        let backoff = if lock {
                            Duration::ZERO
                        } else {
                            self.retry.backoff(run.attempt)
                        };
                        tracing::debug!(attempt = run.attempt, ?backoff, %error, "conflict, running the unit again");
                        if !backoff.is_zero() {
                            tokio::time::sleep(backoff).await;
                        }
                        run.attempt += 1;
                        crate::telemetry::unit_rerun("conflict");
                        continue;
                    }
                    Err(Ended::Transient {
                        error,
                        unsure,
                        proved_absent,
                    }) => {
                        if proved_absent {
                            run.maybe_stored = false;
                        }
                        run.maybe_stored |= unsure;
                        error
                    }
                };
                if run.retries >= self.retry.max_transient_retries() {
                    let (command_id, retries, source) = (unit_id, run.retries, Box::new(error));
                    return Err(if run.maybe_stored {
                        WorkError::OutcomeUnknown {
                            command_id,
                            retries,
                            source,
                        }
                    } else {
                        WorkError::Unavailable {
                            command_id,
                            retries,
                            source,
                        }
                    });
                }
                run.retries += 1;
                let backoff = self.retry.transient_backoff(run.retries);
                tracing::debug!(retry = run.retries, ?backoff, maybe_stored = run.maybe_stored, %error,
                    "transient failure, running the unit again");
                crate::telemetry::unit_rerun("transient");
                tokio::time::sleep(backoff).await;
            }
        }
        .instrument(span.clone())
        .await;
        crate::telemetry::unit(outcome.as_ref().map(|_| ()));
        outcome
    }

    /// One run of the closure in a transaction of its own.
    async fn run_once<T, F, Fut>(
        &self,
        work: &mut F,
        metadata: &Metadata,
        unit_id: CommandId,
        look_up: bool,
        run: &Run,
    ) -> Result<T, Ended>
    where
        F: FnMut(Work<S>) -> Fut + Send,
        Fut: Future<Output = Result<T, WorkError>> + Send,
    {
        let before_commit = |error: StoreError| {
            if error.is_transient() {
                Ended::Transient {
                    error,
                    unsure: false,
                    proved_absent: false,
                }
            } else {
                Ended::Final(WorkError::Store(error))
            }
        };
        let tx = self
            .store
            .begin_write(&self.pool)
            .await
            .map_err(before_commit)?;
        let shared = Arc::new(Shared {
            unit_id,
            metadata: metadata.clone(),
            attempt: run.attempt,
            contended: run.contended.clone(),
            next: AtomicUsize::new(0),
            look_up: AtomicBool::new(look_up),
            replayed: AtomicBool::new(false),
            proved_absent: AtomicBool::new(false),
            tx: tokio::sync::Mutex::new(Some(tx)),
        });
        let outcome = work(Work {
            shared: Arc::clone(&shared),
        })
        .await;
        let proved_absent = shared.proved_absent.load(Ordering::Relaxed);
        let Some(tx) = shared.tx.lock().await.take() else {
            unreachable!("only the unit takes the transaction")
        };
        match outcome {
            Ok(value) => match tx.commit().await {
                Ok(()) => {
                    self.store.notify_committed();
                    Ok(value)
                }
                // A commit whose reply is lost may have been committed.
                Err(error) => {
                    let error = StoreError::from(error);
                    if error.is_transient() {
                        Err(Ended::Transient {
                            error,
                            unsure: true,
                            proved_absent,
                        })
                    } else {
                        Err(Ended::Final(WorkError::Store(error)))
                    }
                }
            },
            Err(error) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::debug!(%rollback, "could not roll back a unit of work");
                }
                Err(match error {
                    error if error.is_conflict() => Ended::Conflict(error),
                    WorkError::Store(StoreError::EventIdConflict { .. }) => Ended::Stored(error),
                    WorkError::Store(error) if error.is_transient() => Ended::Transient {
                        error,
                        unsure: false,
                        proved_absent,
                    },
                    error => Ended::Final(error),
                })
            }
        }
    }
}

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventStore + AggregateStreamReader + SnapshotStore + Clone,
{
    /// Units of work on this repository's store and pool, with its retry
    /// policy: see [`UnitOfWork`].
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository};
    /// # fn demo<A: Aggregate>(accounts: Repository<A>) {
    /// let unit = accounts.unit_of_work();
    /// assert_eq!(unit.retry_policy().max_attempts(), accounts.retry_policy().max_attempts());
    /// # }
    /// ```
    pub fn unit_of_work(&self) -> UnitOfWork<S> {
        UnitOfWork {
            store: self.store().clone(),
            pool: self.pool().clone(),
            retry: *self.retry_policy(),
        }
    }
}

/// Across the runs of one unit.
struct Run {
    attempt: u32,
    retries: u32,
    /// Whether a run's commit may have been committed, and no run has
    /// shown since that it was not.
    maybe_stored: bool,
    /// The aggregates that conflicted: decided under their lock.
    contended: HashSet<AggregateKey>,
    /// Whether a run found a command's events stored by another
    /// transaction (a concurrent copy of the unit): the next runs look
    /// every command up.
    look_up: bool,
}

/// How a run ended, when not with success.
enum Ended {
    Conflict(WorkError),
    /// A command's event ids were stored by another transaction (a
    /// concurrent copy of the unit that committed first): run again,
    /// looking every command up.
    Stored(WorkError),
    Transient {
        error: StoreError,
        /// The failure came with the commit.
        unsure: bool,
        /// A command of the run looked itself up, was not stored, and
        /// appended: the unit was not committed before this run.
        proved_absent: bool,
    },
    Final(WorkError),
}

/// What the runs of a unit share with the closure's [`Work`].
struct Shared<S: Backend> {
    unit_id: CommandId,
    metadata: Metadata,
    attempt: u32,
    contended: HashSet<AggregateKey>,
    /// The number of the next command.
    next: AtomicUsize,
    look_up: AtomicBool,
    replayed: AtomicBool,
    proved_absent: AtomicBool,
    tx: tokio::sync::Mutex<Option<sqlx::Transaction<'static, S::Database>>>,
}

/// The handle of one run of a unit of work, given to its closure: the
/// transaction, and the commands run in it.
///
/// Its methods take `&self`, so helpers can share it
/// (`async fn reserve(work: &Work<S>, ...)`); they run one at a time on the
/// transaction's connection.
pub struct Work<S: Backend> {
    shared: Arc<Shared<S>>,
}

impl<S: Backend> fmt::Debug for Work<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Work")
            .field("unit_id", &self.shared.unit_id)
            .field("attempt", &self.shared.attempt)
            .finish_non_exhaustive()
    }
}

impl<S> Work<S>
where
    S: EventStore + AggregateStreamReader + SnapshotStore,
{
    /// Executes a command in the unit's transaction: load, handle, append
    /// with `Exact(version)`, with the unit's metadata and a command id
    /// derived from the unit's and the command's place in the closure. A
    /// refusal is [`WorkError::Rejected`]; a conflict is
    /// [`WorkError::Conflict`], after which the unit runs again (when
    /// returned from the closure).
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository, Work, WorkError};
    /// # async fn demo<A: Aggregate>(work: Work<es_store::PostgresStore>, accounts: &Repository<A>, command: &A::Command) -> Result<(), WorkError> {
    /// let executed = work.execute(accounts, "acc-1", command).await?;
    /// println!("acc-1 at version {}", executed.version);
    /// # Ok(()) }
    /// ```
    pub async fn execute<A: Aggregate>(
        &self,
        repository: &Repository<A, S>,
        id: &str,
        command: &A::Command,
    ) -> Result<Executed<A>, WorkError> {
        self.run_command(repository, id, command, None).await
    }

    /// [`Work::execute`] with this command's own metadata instead of the
    /// unit's. A [`Metadata::command_id`] in it names the command, as in
    /// [`Repository::execute_with`].
    pub async fn execute_with<A: Aggregate>(
        &self,
        repository: &Repository<A, S>,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, WorkError> {
        self.run_command(repository, id, command, Some(metadata))
            .await
    }

    async fn run_command<A: Aggregate>(
        &self,
        repository: &Repository<A, S>,
        id: &str,
        command: &A::Command,
        metadata: Option<&Metadata>,
    ) -> Result<Executed<A>, WorkError> {
        let shared = &self.shared;
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        // The unit's id names the unit, not a command: its commands get
        // ids derived from it, unless one is given its own.
        let (mut metadata, given) = match metadata {
            Some(own) => (own.clone(), own.command_id.is_some()),
            None => (shared.metadata.clone(), false),
        };
        if !given {
            metadata.command_id = Some(shared.unit_id.part(index));
        }
        let key = AggregateKey::new(A::Event::BOUNDED_CONTEXT, A::Event::AGGREGATE_TYPE, id);
        let lock = shared.contended.contains(&key) || repository.recently_contended(id);
        let look_up = given || shared.look_up.load(Ordering::Relaxed);
        let mut tx = self.connection().await?;
        let executed = repository
            .execute_in_unit(&mut tx, id, command, &metadata, look_up, lock)
            .await
            .map_err(|error| {
                if error.is_conflict() {
                    repository.record_contention(id);
                }
                WorkError::from(error).with_attempts(shared.attempt)
            })?;
        if executed.replayed {
            shared.replayed.store(true, Ordering::Relaxed);
        } else if look_up && !executed.events.is_empty() && !given {
            // Not stored, and the unit is atomic: none of it is.
            shared.look_up.store(false, Ordering::Relaxed);
            shared.proved_absent.store(true, Ordering::Relaxed);
        }
        Ok(executed)
    }

    /// Loads an aggregate's current state in the unit's transaction.
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository, Work, WorkError};
    /// # async fn demo<A: Aggregate>(work: Work<es_store::PostgresStore>, accounts: &Repository<A>) -> Result<(), WorkError> {
    /// let account = work.load(accounts, "acc-1").await?;
    /// println!("acc-1 at version {}", account.version);
    /// # Ok(()) }
    /// ```
    pub async fn load<A: Aggregate>(
        &self,
        repository: &Repository<A, S>,
        id: &str,
    ) -> Result<Loaded<A>, WorkError> {
        let mut tx = self.connection().await?;
        Ok(repository.load_in(&mut tx, id, None).await?)
    }

    /// Locks an aggregate for the rest of the unit's transaction and
    /// returns its version: no other writer appends to it until the unit
    /// commits or rolls back, so its commands here cannot conflict. For hot
    /// aggregates that many units change.
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository, Work, WorkError};
    /// # async fn demo<A: Aggregate>(work: Work<es_store::PostgresStore>, stock: &Repository<A>, reserve: &A::Command) -> Result<(), WorkError> {
    /// work.lock(stock, "sku-1").await?;
    /// work.execute(stock, "sku-1", reserve).await?; // no conflict possible
    /// # Ok(()) }
    /// ```
    pub async fn lock<A: Aggregate>(
        &self,
        repository: &Repository<A, S>,
        id: &str,
    ) -> Result<i64, WorkError> {
        let mut tx = self.connection().await?;
        Ok(repository.lock_in(&mut tx, id).await?)
    }

    /// The transaction's connection, for reads and writes of your own in
    /// the unit (they are run again when the unit is).
    ///
    /// ```no_run
    /// # use es_aggregate::{Work, WorkError};
    /// # async fn demo(work: Work<es_store::PostgresStore>) -> Result<(), WorkError> {
    /// let mut conn = work.conn().await?;
    /// sqlx::query("INSERT INTO audit (what) VALUES ('transfer')").execute(&mut *conn).await?;
    /// # Ok(()) }
    /// ```
    pub async fn conn(&self) -> Result<WorkConn<'_, S>, WorkError> {
        self.connection().await
    }

    async fn connection(&self) -> Result<WorkConn<'_, S>, WorkError> {
        let guard = self.shared.tx.lock().await;
        if guard.is_none() {
            return Err(WorkError::Ended);
        }
        Ok(WorkConn { guard })
    }
}

impl<S: Backend> Work<S> {
    /// Which run of the unit this is: 1, plus one per conflict.
    pub fn attempt(&self) -> u32 {
        self.shared.attempt
    }

    /// The unit's id: the one given in [`Metadata::command_id`], or the
    /// one made for this call.
    pub fn command_id(&self) -> CommandId {
        self.shared.unit_id
    }

    /// Whether a command of this run was found already applied (the unit
    /// was committed before: by an earlier call with the same id, or by a
    /// run whose commit reply was lost) and returned its original outcome.
    pub fn replayed(&self) -> bool {
        self.shared.replayed.load(Ordering::Relaxed)
    }
}

/// The unit of work's connection, held while it is in use
/// ([`Work::conn`]). Dereferences to the backend's connection.
pub struct WorkConn<'w, S: Backend> {
    guard: tokio::sync::MutexGuard<'w, Option<sqlx::Transaction<'static, S::Database>>>,
}

impl<S: Backend> Deref for WorkConn<'_, S> {
    type Target = Connection<S>;

    fn deref(&self) -> &Connection<S> {
        self.guard.as_ref().expect("checked when taken")
    }
}

impl<S: Backend> DerefMut for WorkConn<'_, S> {
    fn deref_mut(&mut self) -> &mut Connection<S> {
        self.guard.as_mut().expect("checked when taken")
    }
}

/// Why a unit of work failed: any of its aggregates' refusals, conflicts
/// and store failures, in one type, so that `?` works across aggregates.
///
/// ```
/// use es_aggregate::WorkError;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("out of stock")]
/// struct OutOfStock;
///
/// let refused = WorkError::reject(OutOfStock);
/// assert!(refused.is_rejected() && !refused.is_conflict() && refused.outcome_known());
/// assert!(refused.rejection::<OutOfStock>().is_some());
/// assert_eq!(refused.to_string(), "command refused: out of stock");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkError {
    /// An aggregate refused a command (or the closure refused with
    /// [`WorkError::reject`]); nothing was written. The refusal is the
    /// source: [`WorkError::rejection`] gives it typed.
    #[error("command refused: {0}")]
    Rejected(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A command lost the optimistic-concurrency check in every run the
    /// retry policy allowed.
    #[error("optimistic concurrency conflict on {aggregate} after {attempts} attempt(s): expected {expected}, {}",
        .actual.map_or_else(|| "the version changed concurrently".to_owned(), |v| format!("found version {v}")))]
    Conflict {
        /// The aggregate.
        aggregate: AggregateKey,
        /// How many times the unit ran.
        attempts: u32,
        /// The version the last run expected.
        expected: ExpectedVersion,
        /// The version the last run found, when known.
        actual: Option<i64>,
    },

    /// A stored event could not be decoded into its aggregate's event type.
    #[error("cannot decode a stored event of {aggregate}: {source}")]
    Decode {
        /// The aggregate.
        aggregate: AggregateKey,
        /// What went wrong.
        #[source]
        source: Box<DecodeError>,
    },

    /// A command id was applied before to another aggregate or as a
    /// different command; nothing was written.
    #[error("command id {command_id} given for {aggregate} was already used {reason}")]
    CommandIdReused {
        /// The command id.
        command_id: CommandId,
        /// The aggregate the command was run on now.
        aggregate: AggregateKey,
        /// What the id was used for.
        reason: CommandIdReuse,
    },

    /// Transient failures lasted through every retry the policy allowed,
    /// and nothing of the unit was committed: running it again is safe.
    #[error("unit of work {command_id} failed after {retries} transient retr{}: {source}",
        if *.retries == 1 { "y" } else { "ies" })]
    Unavailable {
        /// The unit's id.
        command_id: CommandId,
        /// How many times the unit ran again after a failure.
        retries: u32,
        /// The last failure.
        #[source]
        source: Box<StoreError>,
    },

    /// The unit may or may not have been committed: the last failure came
    /// with its commit. Run it again with the same id
    /// ([`UnitOfWork::run_with`] and [`Metadata::with_command_id`] with
    /// `command_id`): its commands then return their original outcomes if
    /// it was.
    #[error("the outcome of unit of work {command_id} is unknown after {retries} transient retr{}: {source}",
        if *.retries == 1 { "y" } else { "ies" })]
    OutcomeUnknown {
        /// The unit's id: run it again with it to find out.
        command_id: CommandId,
        /// How many times the unit ran again after a failure.
        retries: u32,
        /// The last failure.
        #[source]
        source: Box<StoreError>,
    },

    /// The store failed, or refused the input.
    #[error(transparent)]
    Store(StoreError),

    /// The [`Work`] was used after its run ended (it was kept past the
    /// closure's future).
    #[error("the unit of work's run has ended")]
    Ended,

    /// An error of the closure's own ([`WorkError::failed`]); not retried.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl WorkError {
    /// A refusal of the closure's own (a rule across aggregates, say):
    /// [`WorkError::Rejected`], never retried.
    pub fn reject(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        WorkError::Rejected(Box::new(error))
    }

    /// Another error of the closure's own: [`WorkError::Failed`], never
    /// retried.
    ///
    /// ```
    /// # use es_aggregate::WorkError;
    /// let failed = WorkError::failed(std::io::Error::other("the mail server is down"));
    /// assert!(!failed.is_rejected() && !failed.is_transient());
    /// ```
    pub fn failed(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        WorkError::Failed(Box::new(error))
    }

    /// The refusal, when the unit was refused with an error of type `E`
    /// (an aggregate's `Error` type, or one given to
    /// [`WorkError::reject`]).
    pub fn rejection<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            WorkError::Rejected(error) => error.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Whether a command lost the optimistic-concurrency check
    /// ([`WorkError::Conflict`]). Returned from the closure, it runs the
    /// unit again while the policy allows.
    pub fn is_conflict(&self) -> bool {
        matches!(self, WorkError::Conflict { .. })
    }

    /// Whether a command (or the closure) was refused
    /// ([`WorkError::Rejected`]).
    pub fn is_rejected(&self) -> bool {
        matches!(self, WorkError::Rejected(_))
    }

    /// Whether the failure is passing: [`WorkError::Unavailable`],
    /// [`WorkError::OutcomeUnknown`], or a store error that
    /// [`StoreError::is_transient`]. Returned from the closure, a
    /// transient store error runs the unit again while the policy allows.
    ///
    /// ```
    /// use es_aggregate::WorkError;
    /// use es_store::Error as StoreError;
    /// assert!(WorkError::from(StoreError::from(sqlx::Error::PoolTimedOut)).is_transient());
    /// assert!(!WorkError::from(StoreError::NoEvents).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            WorkError::Unavailable { .. } | WorkError::OutcomeUnknown { .. } => true,
            WorkError::Store(error) => error.is_transient(),
            _ => false,
        }
    }

    /// Whether the caller knows what the unit did: false only for
    /// [`WorkError::OutcomeUnknown`]. Every other error means nothing was
    /// committed.
    pub fn outcome_known(&self) -> bool {
        !matches!(self, WorkError::OutcomeUnknown { .. })
    }

    fn with_attempts(self, runs: u32) -> Self {
        match self {
            WorkError::Conflict {
                aggregate,
                expected,
                actual,
                ..
            } => WorkError::Conflict {
                aggregate,
                attempts: runs,
                expected,
                actual,
            },
            other => other,
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<RepositoryError<E>> for WorkError {
    fn from(error: RepositoryError<E>) -> Self {
        match error {
            RepositoryError::Rejected(refusal) => WorkError::Rejected(Box::new(refusal)),
            RepositoryError::Conflict {
                aggregate,
                attempts,
                expected,
                actual,
            } => WorkError::Conflict {
                aggregate,
                attempts,
                expected,
                actual,
            },
            RepositoryError::Decode { aggregate, source } => {
                WorkError::Decode { aggregate, source }
            }
            RepositoryError::Unavailable {
                command_id,
                retries,
                source,
                ..
            } => WorkError::Unavailable {
                command_id,
                retries,
                source,
            },
            RepositoryError::OutcomeUnknown {
                command_id,
                retries,
                source,
                ..
            } => WorkError::OutcomeUnknown {
                command_id,
                retries,
                source,
            },
            RepositoryError::CommandIdReused {
                command_id,
                aggregate,
                reason,
            } => WorkError::CommandIdReused {
                command_id,
                aggregate,
                reason,
            },
            RepositoryError::Store(error) => WorkError::from(error),
        }
    }
}

impl From<StoreError> for WorkError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::OptimisticConcurrency {
                aggregate,
                expected,
                actual,
            } => WorkError::Conflict {
                aggregate,
                attempts: 1,
                expected,
                actual,
            },
            other => WorkError::Store(other),
        }
    }
}

impl From<sqlx::Error> for WorkError {
    fn from(error: sqlx::Error) -> Self {
        WorkError::from(StoreError::from(error))
    }
}
