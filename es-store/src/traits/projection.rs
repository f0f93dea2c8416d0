//! What projection processors need: claims and leases, the failure log,
//! the head of the feed, projection versions and commit durability.

use std::future::Future;

use super::{CheckpointHolder, CheckpointStore, Connection, EventReader, ProjectionFailure};
use crate::{PersistedEvent, ProjectionVersion, Result, VersionState};

/// What projection processors need beyond reading and checkpoints:
/// exclusive claims on a checkpoint, a record of skipped events, and the
/// head of the feed.
///
/// ```no_run
/// use es_store::{PostgresStore, ProjectionStore};
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// let store = PostgresStore::new();
/// let mut tx = pool.begin().await?;
/// match store.claim_checkpoint(&mut *tx, "balances").await? {
///     Some(position) => println!("ours until commit, from position {position}"),
///     None => println!("another processor is on it"),
/// }
/// # Ok(()) }
/// ```
pub trait ProjectionStore: EventReader + CheckpointStore {
    /// Takes the projection's checkpoint for the rest of the caller's
    /// transaction and returns its position; `None` when another
    /// transaction holds it (it does not wait for it). A checkpoint that
    /// does not exist yet is created at 0; if another transaction is
    /// creating the same one at that moment, the claim waits for it to end.
    ///
    /// Backends with a single writer may wait: on SQLite the claim is the
    /// database's write lock, so a second claimant waits for the holder's
    /// transaction to end (up to the busy timeout) and then gets the
    /// position the holder committed; it gets `None` only when the lock
    /// cannot be had (see `SqliteStore`).
    fn claim_checkpoint(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Records that the projection skipped `event` because handling it
    /// failed with `error`.
    fn record_failure(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        event: &PersistedEvent,
        error: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The events the projection skipped, in position order.
    fn failures(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Vec<ProjectionFailure>>> + Send;

    /// The highest global position stored (0 when the store is empty).
    fn head_position(
        &self,
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Bounds how long the caller's transaction may stay idle, waiting for
    /// the client: past `lease`, the server ends the session and rolls the
    /// transaction back, which frees its locks (a checkpoint claim among
    /// them) for others, and the client can no longer commit it.
    /// PostgreSQL: `idle_in_transaction_session_timeout` for this
    /// transaction. MySQL: the session's `wait_timeout` (whole seconds,
    /// at least 1). SQLite: nothing (one process holds the database's
    /// write lock until it resumes).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let mut tx = pool.begin().await?;
    /// store.lease_transaction(&mut *tx, std::time::Duration::from_secs(30)).await?;
    /// if let Some(position) = store.claim_checkpoint(&mut *tx, "balances").await? {
    ///     // ... handle events after `position`; a worker frozen here for
    ///     // 30 s loses the claim, and its commit fails ...
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn lease_transaction(
        &self,
        conn: &mut Connection<Self>,
        lease: std::time::Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// [`claim_checkpoint`](ProjectionStore::claim_checkpoint) after
    /// [`lease_transaction`](ProjectionStore::lease_transaction), in one
    /// statement where the backend can (PostgreSQL).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let mut tx = pool.begin().await?;
    /// let lease = std::time::Duration::from_secs(30);
    /// if let Some(position) = store.claim_leased(&mut *tx, "balances", lease).await? {
    ///     println!("claimed at {position}, for as long as this transaction talks to the server");
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn claim_leased(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        lease: std::time::Duration,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// The recorded versions of a projection, lowest first (none for a
    /// projection whose processor never ran since versions exist).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// for version in PostgresStore::new().projection_versions(&mut *conn, "balances").await? {
    ///     println!("v{}: {}", version.version, version.state);
    /// }
    /// # Ok(()) }
    /// ```
    fn projection_versions(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Vec<ProjectionVersion>>> + Send;

    /// The version of the projection readers should be served from: the
    /// one recorded as [`VersionState::Active`], or `None` when none is
    /// recorded yet. Readers that name their tables after the version look
    /// it up here, in the transaction they read the read model in.
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut tx = pool.begin().await?;
    /// let version = PostgresStore::new().active_projection_version(&mut *tx, "balances").await?;
    /// let table = format!("balances_v{}", version.unwrap_or(1));
    /// # Ok(()) }
    /// ```
    fn active_projection_version(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Option<u32>>> + Send {
        async move {
            Ok(self
                .projection_versions(conn, projection_name)
                .await?
                .into_iter()
                .find(|v| v.state == VersionState::Active)
                .map(|v| v.version))
        }
    }

    /// Records a version, unless one with its name and number is recorded
    /// (then changes nothing).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore, ProjectionVersion, VersionState};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// let v1 = ProjectionVersion::new("balances", 1, VersionState::Active, 0, 1);
    /// PostgresStore::new().insert_projection_version(&mut *conn, &v1).await?;
    /// # Ok(()) }
    /// ```
    fn insert_projection_version(
        &self,
        conn: &mut Connection<Self>,
        version: &ProjectionVersion,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Changes a recorded version's state, replay position and partition
    /// count to `version`'s.
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore, ProjectionVersion, VersionState};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut tx = pool.begin().await?;
    /// let v1 = ProjectionVersion::new("balances", 1, VersionState::Superseded, 0, 1);
    /// PostgresStore::new().update_projection_version(&mut *tx, &v1).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn update_projection_version(
        &self,
        conn: &mut Connection<Self>,
        version: &ProjectionVersion,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Records whether a recorded version's projection declares side
    /// effects ([`ProjectionVersion::side_effects`]); changes nothing else
    /// (nor a version that is not recorded). Processors record it when they
    /// start. Does nothing by default (a store that does not record it).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// PostgresStore::new().record_projection_side_effects(&mut *conn, "publisher", 1, true).await?;
    /// # Ok(()) }
    /// ```
    fn record_projection_side_effects(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        version: u32,
        side_effects: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (conn, projection_name, version, side_effects);
        async { Ok(()) }
    }

    /// Records that a worker runs this version now
    /// ([`ProjectionVersion::worker_seen_at`]); changes nothing else (nor a
    /// version that is not recorded). A running processor calls it every
    /// [`ProjectionVersion::WORKER_HEARTBEAT`], so that operators' tools can
    /// tell whether anything will replay a projection they rewind. Does
    /// nothing by default (a store that does not record it).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// PostgresStore::new().record_projection_worker(&mut *conn, "balances", 1).await?;
    /// # Ok(()) }
    /// ```
    fn record_projection_worker(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        version: u32,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (conn, projection_name, version);
        async { Ok(()) }
    }

    /// Forgets a version (its checkpoints are removed separately, with
    /// [`delete_checkpoint`](ProjectionStore::delete_checkpoint)).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// PostgresStore::new().delete_projection_version(&mut *conn, "balances", 1).await?;
    /// # Ok(()) }
    /// ```
    fn delete_projection_version(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        version: u32,
    ) -> impl Future<Output = Result<()>> + Send;

    /// [`claim_checkpoint`](ProjectionStore::claim_checkpoint), waiting for
    /// a transaction that holds the checkpoint to end instead of skipping
    /// it (PostgreSQL and MySQL wait on the row lock, up to the server's
    /// lock timeout). `None` only when a checkpoint that did not exist is
    /// being created by another transaction that holds it. For a switch of
    /// projection versions, which must take a checkpoint that busy workers
    /// keep claiming.
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut tx = pool.begin().await?;
    /// let position = PostgresStore::new().wait_for_checkpoint(&mut *tx, "balances").await?;
    /// # Ok(()) }
    /// ```
    fn wait_for_checkpoint(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Serialises changes to a projection's version records: waits for
    /// another transaction holding the projection's lock, then holds it
    /// until the caller's transaction ends. Registering a version, a
    /// switch and a retirement take it first.
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let mut tx = pool.begin().await?;
    /// store.lock_projection_versions(&mut *tx, "balances").await?;
    /// let versions = store.projection_versions(&mut *tx, "balances").await?;
    /// // ... change them ...
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn lock_projection_versions(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes a checkpoint (nothing when there is none).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// PostgresStore::new().delete_checkpoint(&mut *conn, "balances").await?;
    /// # Ok(()) }
    /// ```
    fn delete_checkpoint(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Who holds the checkpoint now, without waiting: a claim that skips a
    /// held row, in a transaction (nested in the caller's, if any) that is
    /// rolled back. PostgreSQL names the holder's session (its backend
    /// pid, application name and client address, found through the row's
    /// locking transaction); MySQL only says that it is held; SQLite
    /// cannot tell without waiting for the writer
    /// ([`CheckpointHolder::Unknown`]). So is a checkpoint not stored
    /// yet: the first batch of a projection creates its checkpoint, a row
    /// no other transaction sees until it commits.
    ///
    /// ```no_run
    /// use es_store::{CheckpointHolder, PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// match PostgresStore::new().checkpoint_holder(&mut *conn, "balances#0/4").await? {
    ///     CheckpointHolder::Held { by: Some(session) } => println!("held by {session}"),
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    fn checkpoint_holder(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<CheckpointHolder>> + Send;

    /// Lets the caller's transaction commit without waiting for it to be
    /// durable, where the backend can (PostgreSQL: `SET LOCAL
    /// synchronous_commit = off`). A crash may then lose the transaction
    /// whole (never part of it), after its effects were visible to others.
    /// Does nothing by default.
    fn relax_commit_durability(
        &self,
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = conn;
        async { Ok(()) }
    }
}
