//! Loading: the starting point (a snapshot or the default state) and the
//! events after it, folded.

use es_store::{
    AggregateStreamReader, Connection, DomainEvent, Error as StoreError, EventStore, SnapshotStore,
    StoredEvent,
};
use tracing::Instrument;

use super::{Loaded, Repository, RepositoryError, Result};
use crate::{Aggregate, telemetry};

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventStore + AggregateStreamReader + SnapshotStore,
{
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
    pub(super) async fn starting_point(
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

    /// Applies the events after `loaded.version`, up to `to_version`.
    pub(super) async fn catch_up(
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
    pub(super) async fn fold_tail(
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
}

/// Which events after the loaded version to fold.
pub(super) enum Tail {
    /// Those up to a version (all of them with `None`).
    UpTo(Option<i64>),
    /// All of them, after locking the aggregate.
    Locked,
}
