//! Units of work: commands on several aggregates in one transaction, run
//! again as a whole on a conflict or a transient failure.
//!
//! The parts: the unit and its runs (here), the closure's handle
//! ([`Work`], in `work`), and the error ([`WorkError`], in `error`).

mod error;
mod work;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use es_store::{
    AggregateKey, AggregateStreamReader, Backend, CommandId, Error as StoreError, EventStore,
    Metadata, SnapshotStore,
};
use tracing::Instrument;

pub use error::WorkError;
use work::Shared;
pub use work::{Work, WorkConn};

#[cfg(doc)]
use crate::Executed;
use crate::retry::Tries;
use crate::{Aggregate, Repository, RetryPolicy};

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
                tries: Tries::new(self.retry),
                contended: HashSet::new(),
                look_up: false,
            };
            loop {
                let look_up = given || run.tries.maybe_stored || run.look_up;
                let outcome = self
                    .run_once(&mut work, metadata, unit_id, look_up, &run)
                    .await;
                let (error, unsure) = match outcome {
                    Ok(value) => return Ok(value),
                    Err(Ended::Final(error)) => return Err(error),
                    Err(Ended::Stored(error)) => {
                        // The other transaction committed (a refusal on
                        // an event id waits for that): no backoff.
                        if !run.tries.next_attempt() {
                            return Err(error.with_attempts(run.tries.attempt));
                        }
                        tracing::debug!(%error, "the unit's events are stored by another run, looking them up");
                        run.look_up = true;
                        crate::telemetry::unit_rerun("stored");
                        continue;
                    }
                    Err(Ended::Conflict(error)) => {
                        if let (true, WorkError::Conflict { aggregate, .. }) =
                            (self.retry.lock_on_retry(), &error)
                        {
                            run.contended.insert(aggregate.clone());
                        }
                        if !run.tries.after_conflict().await {
                            return Err(error.with_attempts(run.tries.attempt));
                        }
                        crate::telemetry::unit_rerun("conflict");
                        continue;
                    }
                    Err(Ended::Transient {
                        error,
                        unsure,
                        proved_absent,
                    }) => {
                        if proved_absent {
                            run.tries.proved_absent();
                        }
                        (error, unsure)
                    }
                };
                if let Err(spent) = run.tries.after_transient(error, unsure).await {
                    return Err(WorkError::exhausted(unit_id, spent));
                }
                crate::telemetry::unit_rerun("transient");
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
            attempt: run.tries.attempt,
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
    /// The runs (attempts), the transient retries, and whether a run's
    /// commit may have been committed (and no run has shown since that it
    /// was not).
    tries: Tries,
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
