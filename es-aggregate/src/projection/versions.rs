//! Projection versions: a new version builds its read model beside the
//! active one and takes over when it has caught up (a blue/green rebuild);
//! the versions a projection has, and which one is active, are recorded in
//! the store.

use std::time::Duration;

use es_store::{PersistedEvent, ProjectionStore, ProjectionVersion, VersionState};

use super::{Batch, Context, Cursor, Projection, ProjectionError, ProjectionProcessor};

/// Which events of a batch are replayed: those at or before
/// [`until`](Replay::until), the head of the feed when this version of the
/// projection was first started (or last [rebuilt](ProjectionProcessor::rebuild)).
/// A version that existed before versions were recorded (a checkpoint
/// from an earlier release) counts from its checkpoint then: what it had
/// not handled yet is live.
///
/// Replayed events were appended before the version started: their side
/// effects (mails, calls to other services) happened when an earlier
/// version handled them, or are too old to matter. Events after `until`
/// are live, during the catch-up too.
///
/// ```
/// use es_aggregate::projection::Replay;
/// let replay = Replay::new(2, 100);
/// assert!(replay.is_replaying_position(100));
/// assert!(!replay.is_replaying_position(101));
/// assert_eq!(replay.version(), 2);
/// assert!(!Replay::none(1).is_replaying_position(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    version: u32,
    until: i64,
}

impl Replay {
    /// Replaying the events of `version` up to position `until`.
    pub fn new(version: u32, until: i64) -> Self {
        Self { version, until }
    }

    /// Replaying nothing.
    pub fn none(version: u32) -> Self {
        Self::new(version, 0)
    }

    /// The version of the projection handling the events.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The last replayed position (0: none).
    pub fn until(&self) -> i64 {
        self.until
    }

    /// Whether `event` is handled as a replay.
    pub fn is_replaying(&self, event: &PersistedEvent) -> bool {
        self.is_replaying_position(event.global_position)
    }

    /// Whether an event at `position` is handled as a replay.
    pub fn is_replaying_position(&self, position: i64) -> bool {
        position <= self.until
    }
}

/// What a switch did: see [`ProjectionProcessor::switch_when_caught_up`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Switched {
    /// The version that was active before (`None` when none was, or when
    /// this version was active already).
    pub previous: Option<u32>,
    /// The version now active: this processor's.
    pub version: u32,
    /// The position up to which the new version had handled every event
    /// when it took over (at least as far as the previous version had).
    pub position: i64,
}

/// How long to wait before trying again for a claim another transaction
/// holds (a batch in flight).
pub(super) const CLAIM_RETRY: Duration = Duration::from_millis(20);

/// How long a worker waits, at most, to record that it runs.
const RECORD_WORKER_WITHIN: Duration = Duration::from_secs(2);

impl<S, P> ProjectionProcessor<S, P>
where
    S: ProjectionStore + Clone,
    P: Projection<S::Database>,
{
    /// The projection's recorded versions, lowest first: which one is
    /// active, which are catching up beside it, which were superseded and
    /// wait to be [retired](Self::retire).
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # async fn demo<P: Projection>(processor: ProjectionProcessor<es_store::PostgresStore, P>) -> Result<(), Box<dyn std::error::Error>> {
    /// for v in processor.versions().await? {
    ///     println!("v{}: {} (replays up to {})", v.version, v.state, v.replay_until);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn versions(&self) -> Result<Vec<ProjectionVersion>, ProjectionError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.store_error(e))?;
        self.store
            .projection_versions(&mut conn, self.projection.name())
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Builds this version of the projection beside the active one and
    /// makes it the active one once it has caught up, without downtime:
    /// readers keep being served from the active version (whose processors
    /// keep running) until, in one transaction, this version handles what
    /// it still trails the active one by, [`Projection::promote`] runs and
    /// the version is recorded as active. Returns when this version is
    /// active (at once if it was).
    ///
    /// Nothing is lost or handled twice across the switch: each version
    /// has its own checkpoints, and this one goes on from its own after it
    /// (keep its processors running, [`run`](Self::run)). The previous
    /// version is recorded as [superseded](VersionState::Superseded): its
    /// processors stop with [`ProjectionError::Superseded`] at their next
    /// batch, and its read model stays until [`retire`](Self::retire)
    /// drops it. Under appends that never pause, the switch comes as soon
    /// as this version is within a batch of the head (the switch's
    /// transaction handles the rest, while the active version's batches
    /// wait), provided it handles events faster than they are appended.
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # async fn demo<P: Projection>(v2: ProjectionProcessor<es_store::PostgresStore, P>) -> Result<(), Box<dyn std::error::Error>> {
    /// let switched = v2.switch_when_caught_up().await?;
    /// if let Some(old) = switched.previous {
    ///     // once the old deployment is stopped and no reader uses its tables:
    ///     v2.retire(old).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn switch_when_caught_up(&self) -> Result<Switched, ProjectionError> {
        let version = self.register().await?;
        if version.state == VersionState::Active {
            return Ok(Switched {
                previous: None,
                version: version.version,
                position: self.status().await?.checkpoint,
            });
        }
        loop {
            self.close_to_head().await?;
            match self.try_switch().await {
                Ok(Some(switched)) => return Ok(switched),
                Ok(None) => {}
                // A lock wait that timed out, a deadlock, a lost connection.
                Err(ProjectionError::Store { source, .. }) if source.is_transient() => {
                    tracing::warn!(error = %source, "switch failed, trying again");
                }
                Err(error) => return Err(error),
            }
            tokio::time::sleep(CLAIM_RETRY).await;
        }
    }

    /// Drops version `version` of the projection: in one transaction,
    /// [`Projection::retire`] drops its read model, and its checkpoints and
    /// its record are removed. Refuses the active version
    /// ([`ProjectionError::RetireActive`]). Waits for a batch of that
    /// version in flight to end; its processors stop at their next batch
    /// ([`ProjectionError::Superseded`], or [`ProjectionError::Retired`]
    /// for a version newer than the active one). Readers must have moved
    /// off its tables.
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # async fn demo<P: Projection>(v2: ProjectionProcessor<es_store::PostgresStore, P>) -> Result<(), Box<dyn std::error::Error>> {
    /// v2.retire(1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn retire(&self, version: u32) -> Result<(), ProjectionError> {
        let name = self.projection.name();
        loop {
            let mut tx = self.pool.begin().await.map_err(|e| self.store_error(e))?;
            self.lock_versions(&mut tx).await?;
            let versions = self.list_versions(&mut tx).await?;
            let Some(retired) = versions.into_iter().find(|v| v.version == version) else {
                return Err(ProjectionError::UnknownVersion {
                    projection: name.to_owned(),
                    version,
                });
            };
            if retired.state == VersionState::Active {
                return Err(ProjectionError::RetireActive {
                    projection: name.to_owned(),
                    version,
                });
            }
            let keys = retired.checkpoint_names();
            if self.claim_all(&mut tx, &keys).await?.is_none() {
                drop(tx);
                tokio::time::sleep(CLAIM_RETRY).await;
                continue;
            }
            if let Err(source) = self.projection.retire(&mut tx, version).await {
                let projection = name.to_owned();
                return Err(if source.is::<super::NoRetire>() {
                    ProjectionError::NoRetire {
                        projection,
                        version,
                    }
                } else {
                    ProjectionError::Retire {
                        projection,
                        version,
                        source,
                    }
                });
            }
            for key in &keys {
                self.store
                    .delete_checkpoint(&mut tx, key)
                    .await
                    .map_err(|e| self.store_error(e))?;
            }
            self.store
                .delete_projection_version(&mut tx, name, version)
                .await
                .map_err(|e| self.store_error(e))?;
            return tx.commit().await.map_err(|e| self.store_error(e));
        }
    }

    /// Records this version if it is not recorded, and returns its record:
    /// the first version recorded is active, a later one newer than the
    /// active one catches up beside it. Fails with
    /// [`ProjectionError::Superseded`] for a version older than the active
    /// one.
    pub(super) async fn register(&self) -> Result<ProjectionVersion, ProjectionError> {
        // Every way in (catch_up, run, rebuild, a switch) comes here
        // first: settings out of range are refused before anything is
        // sized by them.
        if let Some(refused) = self.invalid_setting() {
            return Err(refused);
        }
        let me = self.projection.version();
        let name = self.projection.name();
        // Recorded already (every start but the first): no lock.
        {
            let mut conn = self.pool.acquire().await.map_err(|e| self.store_error(e))?;
            let versions = self.list_versions(&mut conn).await?;
            if let Some(known) = self.known(&versions).map_err(|v| self.superseded(v))? {
                return self.declare_side_effects(&mut conn, known).await;
            }
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.store_error(e))?;
        self.lock_versions(&mut tx).await?;
        let versions = self.list_versions(&mut tx).await?;
        if let Some(known) = self.known(&versions).map_err(|v| self.superseded(v))? {
            self.rollback(tx).await?;
            let mut conn = self.pool.acquire().await.map_err(|e| self.store_error(e))?;
            return self.declare_side_effects(&mut conn, known).await;
        }
        let declared = self.projection.has_side_effects();
        let active = versions.iter().find(|v| v.state == VersionState::Active);
        let head = self
            .store
            .head_position(&mut tx)
            .await
            .map_err(|e| self.store_error(e))?;
        let record = if active.is_some() || !versions.is_empty() {
            ProjectionVersion::new(name, me, VersionState::CatchingUp, head, self.partitions)
        } else if me > 1
            && let Some(legacy) = self.legacy_version_1(&mut tx).await?
        {
            // A version 1 that ran before versions were recorded keeps
            // serving while this one catches up.
            self.store
                .insert_projection_version(&mut tx, &legacy.with_side_effects(declared))
                .await
                .map_err(|e| self.store_error(e))?;
            ProjectionVersion::new(name, me, VersionState::CatchingUp, head, self.partitions)
        } else {
            ProjectionVersion::new(name, me, VersionState::Active, head, self.partitions)
        };
        let mut record = record.with_side_effects(declared);
        if record.state == VersionState::Active {
            // A version that handled events before versions were recorded
            // goes on live from where it is.
            let mut lowest: Option<i64> = None;
            for (key, _) in self.checkpoint_names() {
                let at = self
                    .store
                    .get_checkpoint(&mut tx, &key)
                    .await
                    .map_err(|e| self.store_error(e))?;
                lowest = Some(lowest.map_or(at, |l| l.min(at)));
            }
            if let Some(lowest) = lowest.filter(|l| *l > 0) {
                record.replay_until = lowest;
            }
        }
        self.store
            .insert_projection_version(&mut tx, &record)
            .await
            .map_err(|e| self.store_error(e))?;
        tx.commit().await.map_err(|e| self.store_error(e))?;
        Ok(record)
    }

    /// `known`, after recording whether the projection declares side
    /// effects where its record says otherwise (a record from before
    /// projections declared them, or a declaration that changed), so that
    /// tools that rewind projections see it.
    async fn declare_side_effects(
        &self,
        conn: &mut <S::Database as sqlx::Database>::Connection,
        mut known: ProjectionVersion,
    ) -> Result<ProjectionVersion, ProjectionError> {
        let declared = self.projection.has_side_effects();
        if known.side_effects != declared {
            self.store
                .record_projection_side_effects(conn, &known.name, known.version, declared)
                .await
                .map_err(|e| self.store_error(e))?;
            known.side_effects = declared;
        }
        Ok(known)
    }

    /// Records that a worker runs this version
    /// ([`ProjectionStore::record_projection_worker`]): [`run`](Self::run)
    /// does every [`ProjectionVersion::WORKER_HEARTBEAT`]. A failure is
    /// logged, not returned, and it waits a few seconds at most (for a
    /// connection, or for a switch holding the record): the record is for
    /// operators' tools, and the worker goes on handling events.
    pub(super) async fn record_worker(&self) {
        let recorded = async {
            let mut conn = self.pool.acquire().await?;
            self.store
                .record_projection_worker(
                    &mut conn,
                    self.projection.name(),
                    self.projection.version(),
                )
                .await
        };
        let error = match tokio::time::timeout(RECORD_WORKER_WITHIN, recorded).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {RECORD_WORKER_WITHIN:?}"),
        };
        tracing::warn!(
            projection = self.projection.name(),
            %error,
            "could not record that this worker runs"
        );
    }

    /// This version's record among `versions`, if it is there and still
    /// runs; the active version if this one no longer runs (it was
    /// superseded, or a newer version is active).
    fn known(&self, versions: &[ProjectionVersion]) -> Result<Option<ProjectionVersion>, u32> {
        let me = self.projection.version();
        let active = versions.iter().find(|v| v.state == VersionState::Active);
        if let Some(active) = active
            && active.version > me
        {
            return Err(active.version);
        }
        match versions.iter().find(|v| v.version == me) {
            Some(mine) if mine.state == VersionState::Superseded => {
                Err(active.map_or(me, |a| a.version))
            }
            Some(mine) => Ok(Some(mine.clone())),
            None => Ok(None),
        }
    }

    /// Lets a batch of this version commit if the version still runs, and
    /// says which of its events are replayed; runs in the batch's
    /// transaction, after its claim (a switch or retirement holds the
    /// claim while it changes the record, so the batch sees the outcome).
    pub(super) async fn admit(
        &self,
        tx: &mut <S::Database as sqlx::Database>::Connection,
    ) -> Result<Replay, ProjectionError> {
        let me = self.projection.version();
        let versions = self.list_versions(tx).await?;
        if let Some(active) = versions
            .iter()
            .find(|v| v.state == VersionState::Active && v.version > me)
        {
            return Err(self.superseded(active.version));
        }
        match versions.iter().find(|v| v.version == me) {
            Some(mine) if mine.state != VersionState::Superseded => {
                Ok(Replay::new(me, mine.replay_until))
            }
            Some(_) => Err(self.superseded(me)),
            None => Err(ProjectionError::Retired {
                projection: self.projection.name().to_owned(),
                version: me,
            }),
        }
    }

    fn superseded(&self, active: u32) -> ProjectionError {
        ProjectionError::Superseded {
            projection: self.projection.name().to_owned(),
            version: self.projection.version(),
            active,
        }
    }

    async fn list_versions(
        &self,
        conn: &mut <S::Database as sqlx::Database>::Connection,
    ) -> Result<Vec<ProjectionVersion>, ProjectionError> {
        self.store
            .projection_versions(conn, self.projection.name())
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Serialises changes to the projection's version records, until the
    /// transaction ends.
    async fn lock_versions(
        &self,
        tx: &mut <S::Database as sqlx::Database>::Connection,
    ) -> Result<(), ProjectionError> {
        self.store
            .lock_projection_versions(tx, self.projection.name())
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Claims every checkpoint in `keys`, waiting for batches in flight to
    /// end; their positions, or `None` when one cannot be had (being
    /// created by another transaction).
    async fn claim_all(
        &self,
        tx: &mut <S::Database as sqlx::Database>::Connection,
        keys: &[String],
    ) -> Result<Option<Vec<i64>>, ProjectionError> {
        let mut positions = Vec::with_capacity(keys.len());
        for key in keys {
            match self
                .store
                .wait_for_checkpoint(tx, key)
                .await
                .map_err(|e| self.store_error(e))?
            {
                Some(position) => positions.push(position),
                None => return Ok(None),
            }
        }
        Ok(Some(positions))
    }

    /// The reset of a [rebuild](Self::rebuild), in one transaction: takes
    /// the version records' lock (so that a switch, a retirement or
    /// another rebuild waits), checks that this version still runs, claims
    /// every partition's checkpoint, waiting for the batches in flight to
    /// end (so that none is in flight, and none starts, until it commits),
    /// and only then clears the read model and moves every checkpoint back
    /// to 0. `Ok(false)` when a checkpoint could not be claimed (being
    /// created by another transaction): nothing was changed.
    pub(super) async fn try_reset(&self) -> Result<bool, ProjectionError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.store_error(e))?;
        // It holds every partition, as a batch holds one: a rebuild frozen
        // here loses them when its lease runs out, as a worker would.
        self.store
            .lease_transaction(&mut tx, self.lease)
            .await
            .map_err(|e| self.store_error(e))?;
        self.lock_versions(&mut tx).await?;
        let versions = self.list_versions(&mut tx).await?;
        let Some(mut version) = self.known(&versions).map_err(|v| self.superseded(v))? else {
            return Err(ProjectionError::Retired {
                projection: self.projection.name().to_owned(),
                version: self.projection.version(),
            });
        };
        let keys: Vec<String> = self
            .checkpoint_names()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        // Every partition first: a batch that began before this claim
        // commits before the reset below, or never (it holds its
        // partition's claim until it ends, and this waits for it).
        if self.claim_all(&mut tx, &keys).await?.is_none() {
            self.rollback(tx).await?;
            return Ok(false);
        }
        // A projection that cannot be reset refuses here; the transaction
        // is rolled back and nothing changed.
        if let Err(source) = self.projection.reset(&mut tx).await {
            let projection = self.projection.name().to_owned();
            return Err(if source.is::<super::NoReset>() {
                ProjectionError::NoReset { projection }
            } else {
                ProjectionError::Reset { projection, source }
            });
        }
        for key in &keys {
            self.store
                .update_checkpoint(&mut tx, key, 0)
                .await
                .map_err(|e| self.store_error(e))?;
        }
        version.replay_until = self
            .store
            .head_position(&mut tx)
            .await
            .map_err(|e| self.store_error(e))?;
        version.partitions = self.partitions;
        self.store
            .update_projection_version(&mut tx, &version)
            .await
            .map_err(|e| self.store_error(e))?;
        tx.commit().await.map_err(|e| self.store_error(e))?;
        Ok(true)
    }

    /// Version 1 as it ran before versions were recorded: its checkpoint
    /// (unpartitioned, or with this processor's partition count), if it
    /// has moved.
    async fn legacy_version_1(
        &self,
        tx: &mut <S::Database as sqlx::Database>::Connection,
    ) -> Result<Option<ProjectionVersion>, ProjectionError> {
        let name = self.projection.name();
        let mut counts = vec![1];
        if self.partitions > 1 {
            counts.push(self.partitions);
        }
        for partitions in counts {
            let probe = ProjectionVersion::new(name, 1, VersionState::Active, 0, partitions);
            let mut lowest = i64::MAX;
            for key in probe.checkpoint_names() {
                let at = self
                    .store
                    .get_checkpoint(tx, &key)
                    .await
                    .map_err(|e| self.store_error(e))?;
                lowest = lowest.min(at);
            }
            if lowest > 0 {
                return Ok(Some(ProjectionVersion::new(
                    name,
                    1,
                    VersionState::Active,
                    lowest,
                    partitions,
                )));
            }
        }
        Ok(None)
    }

    /// Batches on every partition until each is within a batch of the
    /// head.
    async fn close_to_head(&self) -> Result<(), ProjectionError> {
        let mut cursor = Cursor::new();
        for (key, filter) in self.checkpoint_names() {
            loop {
                match self.batch(&key, &filter, &mut cursor).await? {
                    Batch::Retry => {}
                    Batch::Handled { events, .. } if events as i64 >= self.batch_size => {}
                    Batch::Handled { .. } | Batch::Busy | Batch::Idle => {
                        cursor.next_partition();
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// The switch, in one transaction: claims this version's checkpoints
    /// and the active version's, waiting for their batches in flight (so
    /// that none is in flight, and none starts, until it commits),
    /// handles the events this version trails the active one by, promotes
    /// it and records it as active. `None` when a claim was held, or when
    /// the handler failed (the processor's batches meet that event and
    /// apply the error policy).
    pub(super) async fn try_switch(&self) -> Result<Option<Switched>, ProjectionError> {
        let me = self.projection.version();
        let mut tx = self.pool.begin().await.map_err(|e| self.store_error(e))?;
        self.lock_versions(&mut tx).await?;
        let versions = self.list_versions(&mut tx).await?;
        let Some(mut mine) = versions.iter().find(|v| v.version == me).cloned() else {
            return Err(ProjectionError::Retired {
                projection: self.projection.name().to_owned(),
                version: me,
            });
        };
        let active = versions
            .iter()
            .find(|v| v.state == VersionState::Active)
            .cloned();
        match &active {
            Some(active) if active.version == me => {
                // Another worker of this version switched.
                self.rollback(tx).await?;
                return Ok(Some(Switched {
                    previous: None,
                    version: me,
                    position: self.status().await?.checkpoint,
                }));
            }
            Some(active) if active.version > me => return Err(self.superseded(active.version)),
            _ if mine.state == VersionState::Superseded => return Err(self.superseded(me)),
            _ => {}
        }
        let partitions = self.checkpoint_names();
        let keys: Vec<String> = partitions.iter().map(|(key, _)| key.clone()).collect();
        let Some(mut positions) = self.claim_all(&mut tx, &keys).await? else {
            return Ok(None);
        };
        let mut target = 0;
        if let Some(active) = &active {
            let Some(theirs) = self.claim_all(&mut tx, &active.checkpoint_names()).await? else {
                return Ok(None);
            };
            target = theirs.into_iter().max().unwrap_or(0);
        }
        // Handle what this version trails the active one by: the active
        // version's batches wait meanwhile, so the gap is bounded.
        let replay = Replay::new(me, mine.replay_until);
        for ((key, filter), position) in partitions.iter().zip(positions.iter_mut()) {
            while *position < target {
                let page = self
                    .store
                    .read_filtered(&mut tx, *position, self.batch_size, filter)
                    .await
                    .map_err(|e| self.store_error(e))?;
                let upto = page
                    .events
                    .partition_point(|event| event.global_position <= target);
                let events = &page.events[..upto];
                if !events.is_empty()
                    && let Err(failure) = self
                        .projection
                        .handle_page(&mut Context::new(&mut *tx, replay), events)
                        .await
                {
                    tracing::debug!(error = %failure.error, "handler failed during a switch");
                    self.rollback(tx).await?;
                    return Ok(None);
                }
                let next = page.scanned_to.min(target);
                if next <= *position {
                    // Not visible yet: try again.
                    self.rollback(tx).await?;
                    return Ok(None);
                }
                *position = next;
            }
            self.store
                .update_checkpoint(&mut tx, key, *position)
                .await
                .map_err(|e| self.store_error(e))?;
        }
        if let Err(source) = self.projection.promote(&mut tx).await {
            return Err(ProjectionError::Promote {
                projection: self.projection.name().to_owned(),
                version: me,
                source,
            });
        }
        if let Some(active) = &active {
            let mut previous = active.clone();
            previous.state = VersionState::Superseded;
            self.store
                .update_projection_version(&mut tx, &previous)
                .await
                .map_err(|e| self.store_error(e))?;
        }
        mine.state = VersionState::Active;
        self.store
            .update_projection_version(&mut tx, &mine)
            .await
            .map_err(|e| self.store_error(e))?;
        tx.commit().await.map_err(|e| self.store_error(e))?;
        let position = positions.iter().copied().min().unwrap_or(target);
        tracing::info!(
            projection = self.projection.name(),
            version = me,
            previous = active.as_ref().map(|a| a.version),
            position,
            "projection version switched"
        );
        Ok(Some(Switched {
            previous: active.map(|a| a.version),
            version: me,
            position,
        }))
    }
}
