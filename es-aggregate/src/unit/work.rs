//! The closure's handle on one run of a unit of work: its transaction and
//! the commands run in it.

use std::collections::HashSet;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use es_store::{
    AggregateKey, AggregateStreamReader, Backend, CommandId, Connection, DomainEvent, EventStore,
    Metadata, SnapshotStore,
};

use super::WorkError;
use crate::{Aggregate, Executed, Loaded, Repository};

/// What the runs of a unit share with the closure's [`Work`].
pub(super) struct Shared<S: Backend> {
    pub(super) unit_id: CommandId,
    pub(super) metadata: Metadata,
    pub(super) attempt: u32,
    pub(super) contended: HashSet<AggregateKey>,
    /// The number of the next command.
    pub(super) next: AtomicUsize,
    pub(super) look_up: AtomicBool,
    pub(super) replayed: AtomicBool,
    pub(super) proved_absent: AtomicBool,
    pub(super) tx: tokio::sync::Mutex<Option<sqlx::Transaction<'static, S::Database>>>,
}

/// The handle of one run of a unit of work, given to its closure: the
/// transaction, and the commands run in it.
///
/// Its methods take `&self`, so helpers can share it
/// (`async fn reserve(work: &Work<S>, ...)`); they run one at a time on the
/// transaction's connection.
pub struct Work<S: Backend> {
    pub(super) shared: Arc<Shared<S>>,
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
