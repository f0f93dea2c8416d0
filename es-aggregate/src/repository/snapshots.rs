//! Snapshots: the settings, the latest usable one, and storing one.

use es_store::{
    AggregateStreamReader, Connection, DomainEvent, Error as StoreError, EventStore, Snapshot,
    SnapshotStore,
};
use serde_json::value::RawValue;

use super::{Loaded, Repository, Result};
use crate::Aggregate;

/// Snapshot settings of one repository, with the (de)serializers fixed when
/// snapshots were switched on, so the rest of the repository needs no serde
/// bounds on the aggregate.
pub(super) struct Snapshots<A> {
    pub(super) every: i64,
    pub(super) schema_version: i32,
    pub(super) encode: fn(&A) -> serde_json::Result<Box<RawValue>>,
    pub(super) decode: fn(&str) -> serde_json::Result<A>,
}

impl<A> Clone for Snapshots<A> {
    fn clone(&self) -> Self {
        Self { ..*self }
    }
}

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventStore + AggregateStreamReader + SnapshotStore,
{
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

    /// The state in the aggregate's latest usable snapshot at or below
    /// `to_version`, or the default state at version 0.
    pub(super) async fn start_from_snapshot(
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
    pub(super) async fn usable_snapshot(
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

    /// Stores a snapshot in a transaction of its own, nested in the
    /// caller's if there is one (a savepoint), so that a failure rolls back
    /// nothing but the snapshot.
    pub(super) async fn save_snapshot(
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
