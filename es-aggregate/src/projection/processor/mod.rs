//! The processor: feeds one projection from the store, in batches, with
//! checkpoints, partitions, leases and error policies.
//!
//! Its parts: the settings and the one-shot calls (here), the live loop
//! (`run`), one batch (`batch`) and what happens when a handler fails
//! (`failure`).

mod batch;
mod failure;
mod run;

use super::*;
pub(crate) use batch::{Batch, Cursor};

/// What a processor does when a handler fails. The failed batch is always
/// rolled back first.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Stop with [`ProjectionError::Handler`], naming the projection, the
    /// event and its position. The checkpoint stays before the batch. The
    /// default.
    Stop,
    /// Try the batch again after the policy's backoff, as many times as it
    /// allows, then stop.
    Retry(RetryPolicy),
    /// Record the event and the error in the store's failures table, handle
    /// the events before it, move the checkpoint past it and go on.
    Skip,
}

/// The most partitions a processor takes
/// ([`ProjectionProcessor::with_partitions`]): each is a checkpoint that
/// every pass, [`status`](ProjectionProcessor::status) and
/// [`rebuild`](ProjectionProcessor::rebuild) visits, and far more than the
/// workers a projection can usefully have.
pub const MAX_PARTITIONS: u32 = 1024;

/// The largest batch ([`ProjectionProcessor::with_batch_size`]): a batch
/// is held in memory (twice, with its read ahead) and handled in one
/// transaction.
pub const MAX_BATCH_SIZE: u32 = 10_000;

/// The shortest polling interval ([`ProjectionProcessor::with_poll_interval`]):
/// shorter would make [`run`](ProjectionProcessor::run) a busy loop
/// against the database.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// The shortest lease ([`ProjectionProcessor::with_lease`]): MySQL counts
/// it in whole seconds, and a shorter one would take partitions from
/// workers that merely paused.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// The longest lease ([`ProjectionProcessor::with_lease`]): PostgreSQL
/// keeps it in `idle_in_transaction_session_timeout`, a 32-bit number of
/// milliseconds (about 24.8 days).
pub const MAX_LEASE: Duration = Duration::from_millis(i32::MAX as u64);

/// How many times in a row a rebuild's reset is tried again after a
/// transient store failure (a lock wait that timed out, a deadlock).
const REBUILD_TRANSIENT_RETRIES: u32 = 10;

/// How `run` retries a batch that failed in the store: waits from 50 ms up
/// to 5 s, and gives up after 10 failures in a row that are not transient.
fn batch_retry() -> RetryPolicy {
    RetryPolicy::exponential(10, Duration::from_millis(50), Duration::from_secs(5))
}

/// Feeds one projection from the store.
pub struct ProjectionProcessor<S: Backend, P> {
    pub(crate) store: S,
    pub(crate) pool: sqlx::Pool<S::Database>,
    pub(crate) projection: Arc<P>,
    pub(crate) batch_size: i64,
    pub(crate) poll_interval: Duration,
    pub(crate) partitions: u32,
    pub(crate) error_policy: ErrorPolicy,
    pub(crate) wakeup: Option<Wakeup>,
    pub(crate) durable_commits: bool,
    pub(crate) prefetch: bool,
    pub(crate) give_up_after: Option<u32>,
    pub(crate) lease: Duration,
    pub(crate) auto_switch: bool,
    /// How `run` retries a batch that failed in the store: the backoff
    /// between tries, and how many failures in a row other than transient
    /// ones it takes before giving up (transient ones: see
    /// [`with_give_up_after`](Self::with_give_up_after)).
    pub(crate) retry: RetryPolicy,
    /// Registered at the first batch, after the application installed its
    /// metrics recorder.
    pub(crate) metrics: std::sync::OnceLock<ProjectionMetrics>,
}

impl<S: Backend, P> std::fmt::Debug for ProjectionProcessor<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionProcessor")
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("partitions", &self.partitions)
            .field("error_policy", &self.error_policy)
            .finish_non_exhaustive()
    }
}

impl<S, P> ProjectionProcessor<S, Typed<P>>
where
    S: ProjectionStore + Clone,
    P: TypedProjection<S::Database>,
{
    /// A processor of a [`TypedProjection`], with the defaults of
    /// [`new`](Self::new). `processor.projection()` dereferences to it.
    pub fn typed(store: S, pool: sqlx::Pool<S::Database>, projection: P) -> Self {
        Self::new(store, pool, Typed(projection))
    }
}

impl<S, P> ProjectionProcessor<S, P>
where
    S: ProjectionStore + Clone,
    P: Projection<S::Database>,
{
    /// A processor with batches of 500 events, a polling interval of one
    /// second, no partitions and [`ErrorPolicy::Stop`].
    pub fn new(store: S, pool: sqlx::Pool<S::Database>, projection: P) -> Self {
        Self::shared(store, pool, Arc::new(projection))
    }

    /// Like [`new`](Self::new), for a projection shared with other code.
    pub fn shared(store: S, pool: sqlx::Pool<S::Database>, projection: Arc<P>) -> Self {
        Self {
            store,
            pool,
            projection,
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            partitions: 1,
            error_policy: ErrorPolicy::Stop,
            wakeup: None,
            durable_commits: true,
            prefetch: true,
            give_up_after: None,
            lease: Duration::from_secs(30),
            auto_switch: true,
            metrics: std::sync::OnceLock::new(),
            retry: batch_retry(),
        }
    }

    /// How long a worker may hold a partition without a word to the
    /// database (30 s by default): a worker frozen inside a batch (a
    /// stopped process, a long pause, a host gone without closing its
    /// connections) loses the partition after that, to whichever worker
    /// claims it next, and cannot commit the batch when it wakes (the
    /// server has ended its session; see
    /// [`ProjectionStore::lease_transaction`]). Exactly once holds: the
    /// frozen batch is rolled back whole. Handlers must not spend longer
    /// than this between two statements of a batch (an external call
    /// inside a batch, say), or the batch fails. On SQLite one process
    /// holds the write lock until it resumes, whatever the lease.
    ///
    /// Allowed: [`MIN_LEASE`]..=[`MAX_LEASE`] (1 s to about 24.8 days);
    /// outside it [`catch_up`](Self::catch_up), [`run`](Self::run) and the
    /// others refuse to start with [`ProjectionError::InvalidSetting`].
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # fn demo<P: Projection>(pool: sqlx::PgPool, projection: P) {
    /// let processor = ProjectionProcessor::new(es_store::PostgresStore::new(), pool, projection)
    ///     .with_partitions(8)
    ///     .with_lease(std::time::Duration::from_secs(10));
    /// # }
    /// ```
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Whether [`run`](Self::run), for a version catching up beside the
    /// active one, makes it the active one as soon as it has caught up (at
    /// the end of a pass over its partitions, each read to the head), as
    /// [`switch_when_caught_up`](Self::switch_when_caught_up) does
    /// (default: yes). Without it the new version follows the feed beside
    /// the active one until something calls `switch_when_caught_up`: to
    /// check the new read model first, say.
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # fn demo<P: Projection>(pool: sqlx::PgPool, projection: P) {
    /// let processor = ProjectionProcessor::new(es_store::PostgresStore::new(), pool, projection)
    ///     .with_auto_switch(false);
    /// # }
    /// ```
    pub fn with_auto_switch(mut self, auto_switch: bool) -> Self {
        self.auto_switch = auto_switch;
        self
    }

    /// After how many transient store failures in a row (a lost
    /// connection, a restarting server, a deadlock, a pool timeout)
    /// [`run`](Self::run) gives up; by default it never does, retrying
    /// each after a backoff growing from 50 ms to 5 s. Other store errors
    /// stop it after 10 in a row.
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # fn demo<P: Projection>(pool: sqlx::PgPool, projection: P) {
    /// let processor = ProjectionProcessor::new(es_store::PostgresStore::new(), pool, projection)
    ///     .with_give_up_after(Some(100));
    /// # }
    /// ```
    pub fn with_give_up_after(mut self, failures: Option<u32>) -> Self {
        self.give_up_after = failures;
        self
    }

    /// Events per batch (and per transaction): 1..=[`MAX_BATCH_SIZE`] (0
    /// is taken as 1). A larger one is refused when the processor starts
    /// ([`ProjectionError::InvalidSetting`]).
    pub fn with_batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = i64::from(batch_size.max(1));
        self
    }

    /// How long [`run`](Self::run) waits for a wakeup before looking anyway
    /// (default 1 s): at least [`MIN_POLL_INTERVAL`] (a shorter one is
    /// refused when the processor starts, with
    /// [`ProjectionError::InvalidSetting`]: it would poll the database in
    /// a busy loop), and no longest (`Duration::MAX` never polls, and
    /// relies on wakeups).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Splits the projection's aggregates into `count` partitions
    /// (1..=[`MAX_PARTITIONS`]; 0 is taken as 1), each with its own
    /// checkpoint, so that several workers share the work. Every worker of
    /// a projection must use the same count; changing it needs a rebuild.
    /// A count over the maximum is refused when the processor starts
    /// ([`ProjectionError::InvalidSetting`]), before anything is sized by
    /// it.
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # async fn demo<P: Projection>(pool: sqlx::PgPool, projection: P) {
    /// let processor = ProjectionProcessor::new(es_store::PostgresStore::new(), pool, projection)
    ///     .with_partitions(u32::MAX);
    /// let refused = processor.catch_up().await.unwrap_err();
    /// assert!(matches!(
    ///     refused,
    ///     es_aggregate::ProjectionError::InvalidSetting { setting: "with_partitions", .. }
    /// ));
    /// # }
    /// ```
    pub fn with_partitions(mut self, count: u32) -> Self {
        self.partitions = count.max(1);
        self
    }

    /// What to do when the handler fails.
    pub fn with_error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.error_policy = policy;
        self
    }

    /// Whether each batch's commit waits until it is durable (default:
    /// yes). Without waiting, a crash can lose the last batches committed
    /// (read model writes and checkpoint together, so they are handled
    /// again: still exactly once), and a catch-up runs much faster on disks
    /// with slow flushes. Keep the default if the handler appends events to
    /// the store: those would become visible before they are durable.
    pub fn with_durable_commits(mut self, durable: bool) -> Self {
        self.durable_commits = durable;
        self
    }

    /// Whether the next batch is read (on a second connection) while the
    /// current one is handled (default: yes). Events up to a page's end
    /// never change, so a page read ahead is used as is when the checkpoint
    /// is where the read began.
    pub fn with_read_ahead(mut self, read_ahead: bool) -> Self {
        self.prefetch = read_ahead;
        self
    }

    /// Wakes [`run`](Self::run) when new events may be there.
    pub fn with_wakeup(mut self, wakeup: Wakeup) -> Self {
        self.wakeup = Some(wakeup);
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    pub(crate) fn metrics(&self) -> &ProjectionMetrics {
        self.metrics
            .get_or_init(|| ProjectionMetrics::new(self.projection.name()))
    }

    pub(crate) fn store_error(&self, source: impl Into<es_store::Error>) -> ProjectionError {
        ProjectionError::Store {
            projection: self.projection.name().to_owned(),
            source: source.into(),
        }
    }

    /// The first setting out of its allowed range, if any: refused before
    /// anything is sized by it or sent to the database.
    pub(crate) fn invalid_setting(&self) -> Option<ProjectionError> {
        let (setting, value, allowed) = if self.partitions > MAX_PARTITIONS {
            (
                "with_partitions",
                self.partitions.to_string(),
                format!("1..={MAX_PARTITIONS}"),
            )
        } else if self.batch_size > i64::from(MAX_BATCH_SIZE) {
            (
                "with_batch_size",
                self.batch_size.to_string(),
                format!("1..={MAX_BATCH_SIZE}"),
            )
        } else if self.poll_interval < MIN_POLL_INTERVAL {
            (
                "with_poll_interval",
                format!("{:?}", self.poll_interval),
                format!("at least {MIN_POLL_INTERVAL:?}"),
            )
        } else if !(MIN_LEASE..=MAX_LEASE).contains(&self.lease) {
            (
                "with_lease",
                format!("{:?}", self.lease),
                format!("{MIN_LEASE:?}..={MAX_LEASE:?}"),
            )
        } else {
            return None;
        };
        Some(ProjectionError::InvalidSetting {
            projection: self.projection.name().to_owned(),
            setting,
            value,
            allowed,
        })
    }

    /// The checkpoint name of each partition.
    pub(crate) fn checkpoint_names(&self) -> Vec<(String, EventFilter)> {
        let name = es_store::ProjectionVersion::checkpoint_stem(
            self.projection.name(),
            self.projection.version(),
        );
        let filter = self.projection.filter();
        if self.partitions == 1 {
            return vec![(name, filter)];
        }
        (0..self.partitions)
            .map(|index| {
                let partition = Partition::new(index, self.partitions).expect("index < count");
                (
                    format!("{name}#{index}/{}", self.partitions),
                    filter.clone().partition(partition),
                )
            })
            .collect()
    }

    /// Handles events until a read of every partition finds nothing more,
    /// then returns: the read model is then current up to the feed's safe
    /// position at that moment. Waits for partitions another processor is
    /// working on. (Under appends that never pause it keeps going: use
    /// [`run`](Self::run) to follow the feed.)
    pub async fn catch_up(&self) -> Result<CatchUp, ProjectionError> {
        self.register().await?;
        let mut total = CatchUp::default();
        let mut pending = self.checkpoint_names();
        let mut cursor = Cursor::new();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for (key, filter) in pending {
                loop {
                    match self.batch(&key, &filter, &mut cursor).await? {
                        Batch::Busy => {
                            still.push((key, filter));
                            cursor.next_partition();
                            break;
                        }
                        Batch::Idle => {
                            cursor.next_partition();
                            break;
                        }
                        Batch::Retry => {}
                        Batch::Handled { events, skipped } => {
                            total.events += events;
                            total.skipped += skipped;
                            total.batches += 1;
                        }
                    }
                }
            }
            if !still.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            pending = still;
        }
        self.metrics().caught_up();
        Ok(total)
    }

    /// Rebuilds the read model: clears it ([`Projection::reset`]) and
    /// resets every partition's checkpoint to 0 in one transaction, then
    /// catches up. The events up to the head of the feed at that moment
    /// are handled as replayed ([`Replay`]).
    ///
    /// Safe beside running workers, in this process or others, and beside
    /// other rebuilds: each event ends up in the read model exactly once.
    /// Before it clears anything, the rebuild owns every partition: it
    /// waits for the batches in flight to commit (or roll back), and no
    /// batch starts until the reset commits; a batch after it starts from
    /// checkpoint 0 (a page a worker read ahead is used only if it begins
    /// where the checkpoint is). Its transaction has the processor's
    /// [lease](Self::with_lease), as a batch has: a rebuild frozen while it
    /// holds the partitions loses them, and cannot commit, when the lease
    /// runs out. The reset also holds the lock a version
    /// switch and a retirement take, so a version superseded meanwhile
    /// refuses ([`ProjectionError::Superseded`]). A transient store
    /// failure of the reset (a lock wait that timed out, a deadlock) is
    /// tried again, up to 10 times in a row. On MySQL, `reset` must not
    /// run DDL (`TRUNCATE`): it would commit the reset's transaction, and
    /// its claims, early; delete the rows instead.
    ///
    /// Readers of this version see its read model cleared and refilled: to
    /// rebuild without downtime, build a new [version](Projection::version)
    /// beside it instead ([`switch_when_caught_up`](Self::switch_when_caught_up)).
    pub async fn rebuild(&self) -> Result<CatchUp, ProjectionError> {
        self.register().await?;
        let mut failures = 0;
        loop {
            match self.try_reset().await {
                Ok(true) => break,
                // A checkpoint being created by another transaction.
                Ok(false) => {}
                // A lock wait that timed out, a deadlock, a lost
                // connection: nothing was reset; again, a few times.
                Err(ProjectionError::Store { source, .. })
                    if source.is_transient() && failures < REBUILD_TRANSIENT_RETRIES =>
                {
                    failures += 1;
                    tracing::warn!(
                        projection = self.projection.name(),
                        error = %source,
                        "could not reset for a rebuild, trying again"
                    );
                }
                Err(error) => return Err(error),
            }
            tokio::time::sleep(versions::CLAIM_RETRY).await;
        }
        self.catch_up().await
    }

    /// The projection's checkpoint and lag, in events and in time.
    pub async fn status(&self) -> Result<ProjectionStatus, ProjectionError> {
        if let Some(refused) = self.invalid_setting() {
            return Err(refused);
        }
        let mut conn = self.pool.acquire().await.map_err(|e| self.store_error(e))?;
        let head = self
            .store
            .head_position(&mut conn)
            .await
            .map_err(|e| self.store_error(e))?;
        let mut partitions = Vec::new();
        let mut holders = Vec::new();
        let mut oldest_pending: Option<chrono::DateTime<chrono::Utc>> = None;
        for (key, filter) in self.checkpoint_names() {
            let position = self
                .store
                .get_checkpoint(&mut conn, &key)
                .await
                .map_err(|e| self.store_error(e))?;
            partitions.push(position);
            holders.push(
                self.store
                    .checkpoint_holder(&mut conn, &key)
                    .await
                    .map_err(|e| self.store_error(e))?,
            );
            if position < head {
                let next = self
                    .store
                    .read_filtered(&mut conn, position, 1, &filter)
                    .await
                    .map_err(|e| self.store_error(e))?;
                if let Some(event) = next.events.first() {
                    oldest_pending = Some(match oldest_pending {
                        Some(older) => older.min(event.created_at),
                        None => event.created_at,
                    });
                }
            }
        }
        let checkpoint = partitions.iter().copied().min().unwrap_or(0);
        let lag_time = oldest_pending
            .and_then(|at| (chrono::Utc::now() - at).to_std().ok())
            .unwrap_or_default();
        Ok(ProjectionStatus {
            name: self.projection.name().to_owned(),
            version: self.projection.version(),
            checkpoint,
            partitions,
            holders,
            head,
            lag: (head - checkpoint).max(0),
            oldest_pending,
            lag_time,
        })
    }
}
