//! Commands in a transaction that is not the repository's: the caller's
//! ([`Repository::execute_in`]) or a unit of work's. No retries here: a
//! conflict or a transient failure aborts the transaction, and whoever
//! owns it runs it again.

use es_store::{
    AggregateStreamReader, CommandId, Connection, Error as StoreError, EventIdConflictReason,
    EventStore, Metadata, SnapshotStore,
};

use super::execute::StoreAttempt;
use super::load::Tail;
use super::{Executed, Repository, RepositoryError, Result};
use crate::Aggregate;
use crate::telemetry::{self, observe_command};

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventStore + AggregateStreamReader + SnapshotStore,
{
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
            let (command_id, look_up) = match metadata.command_id {
                Some(given) => (given, true),
                None => (CommandId::new(), false),
            };
            self.execute_once_in(conn, id, command, metadata, command_id, look_up, false)
                .await
        })
        .await
    }

    /// A command in a transaction (the caller's or a unit's), tried once.
    ///
    /// With `look_up` (the command's id may be stored already), the id is
    /// looked up first, and again when the command is refused, decides
    /// nothing, or its batch turns out to be stored at other versions: a
    /// concurrent copy of the command may have committed after the first
    /// look-up, and its outcome is then the answer. With `lock`, the
    /// command is decided under the aggregate's lock.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn execute_once_in(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        command_id: CommandId,
        look_up: bool,
        lock: bool,
    ) -> Result<Executed<A>, A> {
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
        let stored_elsewhere = match &outcome {
            Ok(executed) => look_up && executed.events.is_empty(),
            Err(StoreAttempt::Other(RepositoryError::Rejected(_))) => look_up,
            // Not after a refusal that aborted the transaction (Unverified):
            // nothing can be read in it any more.
            Err(StoreAttempt::Store(StoreError::EventIdConflict {
                reason: EventIdConflictReason::StoredConcurrently,
                ..
            })) => true,
            Err(_) => false,
        };
        if stored_elsewhere
            && let Some(executed) = self
                .find_applied(conn, id, command, command_id, true)
                .await?
        {
            return Ok(executed);
        }
        outcome.map_err(StoreAttempt::into_error)
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
            self.execute_once_in(conn, id, command, metadata, command_id, look_up, lock)
                .await
        })
        .await
    }
}
