//! Executing commands: the call with its retries, one attempt (load,
//! decide, append), and the variants in a caller's transaction or a unit
//! of work.

use es_store::{
    AggregateKey, AggregateStreamReader, CommandId, Connection, DomainEvent, Error as StoreError,
    EventIdConflictReason, EventStore, ExpectedVersion, Metadata, SnapshotStore,
};

use super::load::Tail;
use super::{Executed, Loaded, Repository, RepositoryError, Result};
use crate::Aggregate;
#[cfg(doc)]
use crate::RetryPolicy;
use crate::retry::Tries;
use crate::telemetry::{self, observe_command};

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventStore + AggregateStreamReader + SnapshotStore,
{
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
    /// Copies of the command sent at the same time (a client retrying its
    /// `Idempotency-Key` while the first request still runs) get the same
    /// answer: exactly one runs the command, every other returns its
    /// outcome with [`Executed::replayed`], never a refusal or a conflict
    /// caused by the first copy's events. A copy that is refused, decides
    /// nothing, or finds its batch stored looks the id up again before it
    /// answers, so this costs nothing when no copy races.
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
                try_cache: true,
                tries: Tries::new(self.retry),
            };
            loop {
                let (error, unsure) = match self.run_call(&mut call, id, command, metadata).await {
                    Ok(executed) => return Ok(call.finish(executed)),
                    Err(Failure::Replayed(executed)) => return Ok(call.finish(*executed)),
                    Err(Failure::Final(error)) => return Err(error),
                    Err(Failure::Transient { error, unsure }) => (error, unsure),
                };
                if let Some(cache) = &self.cache {
                    cache.evict(id);
                }
                if let Err(spent) = call.tries.after_transient(error, unsure).await {
                    let aggregate = Self::aggregate(id).to_owned();
                    return Err(RepositoryError::exhausted(
                        aggregate,
                        call.command_id,
                        spent,
                    ));
                }
            }
        })
        .await
    }

    /// One try of a command call on a fresh connection: find out whether
    /// the command is stored already if that is to be checked, then the
    /// cached attempt (the first time) and the conflict retries.
    pub(super) async fn run_call(
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
            let verify = call.verify && !call.tries.maybe_stored;
            match self
                .find_applied(&mut conn, id, command, call.command_id, verify)
                .await
            {
                Ok(Some(executed)) => return Ok(executed),
                Ok(None) => {
                    call.look_up = false;
                    call.tries.proved_absent();
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
            let outcome = if lock && (call.tries.attempt > 1 || start_locked) {
                self.try_execute_locked(&mut conn, id, command, metadata, command_id, &mut loaded)
                    .await
            } else {
                self.try_execute(&mut conn, id, command, metadata, command_id, &mut loaded)
                    .await
            };
            if let Err(StoreAttempt::Store(StoreError::OptimisticConcurrency { .. })) = &outcome {
                if lock {
                    self.contended.record(id, window);
                }
                if call.tries.after_conflict().await {
                    continue;
                }
            }
            match outcome {
                Err(failed) => {
                    if let Some(cache) = &self.cache {
                        cache.evict(id);
                    }
                    return Err(self
                        .attempt_failed(&mut conn, call, id, command, failed)
                        .await);
                }
                Ok(mut executed) => {
                    if call.verify && executed.events.is_empty() {
                        // Perhaps nothing to do because a concurrent copy
                        // of the command did it.
                        match self
                            .find_applied(&mut conn, id, command, call.command_id, true)
                            .await
                        {
                            Ok(Some(stored)) => return Err(Failure::Replayed(Box::new(stored))),
                            Ok(None) => {}
                            Err(RepositoryError::Store(error)) => {
                                return Err(call.failed::<A>(id, error));
                            }
                            Err(error) => return Err(Failure::Final(error)),
                        }
                    }
                    if let Some(cache) = &self.cache {
                        cache.put(id, executed.version, &executed.state);
                    }
                    executed.attempts = call.tries.attempt;
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
    pub(super) async fn attempt_failed(
        &self,
        conn: &mut Connection<S>,
        call: &mut Call,
        id: &str,
        command: &A::Command,
        failed: StoreAttempt<A::Error>,
    ) -> Failure<A> {
        match failed {
            StoreAttempt::Unsure(error) if error.is_transient() => {
                call.look_up = true;
                Failure::Transient {
                    error,
                    unsure: true,
                }
            }
            StoreAttempt::Store(error) | StoreAttempt::Unsure(error) => {
                let stored = matches!(error, StoreError::EventIdConflict { .. });
                let failed = call.failed::<A>(id, error);
                if stored {
                    let verify = call.verify;
                    self.stored_or(conn, call, id, command, verify, failed)
                        .await
                } else {
                    failed
                }
            }
            // Perhaps refused because a concurrent copy of the command
            // committed between the look-up and the load.
            StoreAttempt::Other(refused @ RepositoryError::Rejected(_)) if call.verify => {
                self.stored_or(conn, call, id, command, true, Failure::Final(refused))
                    .await
            }
            StoreAttempt::Other(error) => Failure::Final(error),
        }
    }

    /// After a try that may have met the command's events stored (by a
    /// concurrent copy of the command, or a lost attempt of this call):
    /// their outcome if they are, else `otherwise`.
    pub(super) async fn stored_or(
        &self,
        conn: &mut Connection<S>,
        call: &mut Call,
        id: &str,
        command: &A::Command,
        verify: bool,
        otherwise: Failure<A>,
    ) -> Failure<A> {
        match self
            .find_applied(conn, id, command, call.command_id, verify)
            .await
        {
            Ok(Some(executed)) => Failure::Replayed(Box::new(executed)),
            Ok(None) => otherwise,
            Err(RepositoryError::Store(lookup)) if lookup.is_transient() => {
                call.look_up = true;
                Failure::transient(lookup)
            }
            Err(other) => Failure::Final(other),
        }
    }

    /// A retry: the same cycle in a transaction that first locks the
    /// aggregate, so that no other writer can get in between.
    pub(super) async fn try_execute_locked(
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
    pub(super) async fn try_execute(
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
    pub(super) async fn decide_and_append(
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
        if appended.replayed && appended.from_version() != version + 1 {
            // Stored by a concurrent copy of the command (or a lost
            // attempt), decided on another state: its outcome is looked up.
            return Err(StoreAttempt::Store(StoreError::EventIdConflict {
                event_id: appended.events[0].event_id,
                reason: EventIdConflictReason::StoredConcurrently,
            }));
        }
        let Loaded { mut state, .. } = loaded.take().expect("loaded above");
        for event in &events {
            state.apply(event);
        }
        let new_version = appended.to_version();
        if let Some(snapshots) = &self.snapshots
            && !appended.replayed
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
            // Stored by a concurrent copy of the command, decided on the
            // same state: the stored outcome is this one.
            replayed: appended.replayed,
        })
    }
}

/// An attempt fails either in the store (a conflict or a transient failure
/// may be retried) or for a reason retrying cannot fix.
pub(super) enum StoreAttempt<E: std::error::Error + 'static> {
    /// Nothing of the attempt was committed.
    Store(StoreError),
    /// The append or the commit failed: if the failure is transient, the
    /// events may have been committed all the same.
    Unsure(StoreError),
    Other(RepositoryError<E>),
}

/// How one try of a command call ended, when not with success.
pub(super) enum Failure<A: Aggregate> {
    /// A transient failure: try again after a backoff. `unsure`: it came
    /// after the events were sent, which may have been committed.
    Transient { error: StoreError, unsure: bool },
    /// The command's events were found stored: their outcome.
    Replayed(Box<Executed<A>>),
    /// The answer.
    Final(RepositoryError<A::Error>),
}

/// One call of [`Repository::execute_with`], across its tries.
pub(super) struct Call {
    /// The id the events' ids are derived from, the same on every try.
    command_id: CommandId,
    /// Whether the caller gave the id: stored events of it must then be
    /// checked to be this command's.
    verify: bool,
    /// Whether the next try must first look up whether the events are
    /// stored.
    look_up: bool,
    /// The attempts, transient retries and whether a failed try may have
    /// committed the events (and no lookup has said otherwise since).
    tries: Tries,
    /// Whether the state cache may still be tried.
    try_cache: bool,
}

impl Call {
    /// What a store failure means at this point of the call.
    fn failed<A: Aggregate>(&self, id: &str, error: StoreError) -> Failure<A> {
        if error.is_transient() {
            Failure::transient(error)
        } else if self.tries.maybe_stored {
            Failure::Final(RepositoryError::OutcomeUnknown {
                aggregate: AggregateKey::new(
                    A::Event::BOUNDED_CONTEXT,
                    A::Event::AGGREGATE_TYPE,
                    id,
                ),
                command_id: self.command_id,
                retries: self.tries.retries,
                source: Box::new(error),
            })
        } else {
            Failure::Final(RepositoryError::from_store(error, self.tries.attempt))
        }
    }

    /// The call's answer: what the last try gave, with the call's counts.
    fn finish<A: Aggregate>(&self, mut executed: Executed<A>) -> Executed<A> {
        executed.attempts = self.tries.attempt;
        executed.transient_retries = self.tries.retries;
        executed
    }
}

impl<A: Aggregate> Failure<A> {
    /// A transient failure before anything was sent.
    fn transient(error: StoreError) -> Self {
        Failure::Transient {
            error,
            unsure: false,
        }
    }
}

impl<E: std::error::Error + 'static> StoreAttempt<E> {
    /// What the attempt's failure is to a caller who does not retry: in
    /// the caller's transaction, the outcome is the commit's to decide.
    pub(super) fn into_error(self) -> RepositoryError<E> {
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
