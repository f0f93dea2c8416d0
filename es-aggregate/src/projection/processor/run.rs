//! The live loop: every partition in turn, then a wait for more.

use super::*;

impl<S, P> ProjectionProcessor<S, P>
where
    S: ProjectionStore + Clone,
    P: Projection<S::Database>,
{
    /// Keeps the projection current until `shutdown` completes: processes
    /// what is there, then waits until appends are committed in this
    /// process ([`EventReader::committed_appends`](es_store::EventReader::committed_appends),
    /// on every backend), a [`Wakeup`] comes (a PostgreSQL notification,
    /// for appends of other processes), or the polling interval passes.
    ///
    /// A store failure is retried after a backoff (from 50 ms up to 5 s),
    /// without waiting for a wakeup: transient ones
    /// ([`es_store::Error::is_transient`]) for ever by default
    /// ([`with_give_up_after`](Self::with_give_up_after)), others up to 10
    /// in a row. Returns an error when the error policy gives up on a
    /// handler, or when store failures outlast that.
    ///
    /// A version catching up beside the active one becomes the active one
    /// when it has caught up (unless
    /// [`with_auto_switch(false)`](Self::with_auto_switch)); a version
    /// that a newer one superseded stops with
    /// [`ProjectionError::Superseded`] at its next batch.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        if let Some(refused) = self.invalid_setting() {
            return Err(refused);
        }
        tokio::pin!(shutdown);
        let shutdown = &mut shutdown;
        let Some(mut worker) = or_shutdown(shutdown, self.start()).await.transpose()? else {
            return Ok(());
        };
        let mut wakeup = self.wakeup.clone();
        let mut appended = self.store.committed_appends();
        loop {
            // What is committed from here on wakes the wait below.
            appended.borrow_and_update();
            let mut progressed = false;
            for i in 0..worker.partitions.len() {
                let index = (worker.offset + i) % worker.partitions.len();
                match or_shutdown(shutdown, self.pass_partition(&mut worker, index)).await {
                    None => return Ok(()),
                    Some(passed) => progressed |= passed?,
                }
            }
            if self.auto_switch && !worker.active {
                // A pass ends when every partition has been read to the
                // head (or was busy): caught up beside the active version,
                // take over. (Waiting for a pass that found nothing would
                // wait for a pause in the appends.)
                match or_shutdown(shutdown, self.switch_if_caught_up(&mut worker)).await {
                    None => return Ok(()),
                    Some(again) => progressed |= again?,
                }
            }
            if progressed {
                continue;
            }
            self.metrics().caught_up();
            let wake = async {
                match wakeup.as_mut() {
                    Some(w) => w.wait().await,
                    None => std::future::pending().await,
                }
            };
            let more = async {
                tokio::select! {
                    _ = appended.changed() => {}
                    () = wake => {}
                    () = tokio::time::sleep(self.poll_interval) => {}
                    () = tokio::time::sleep_until(worker.next_beat) => {}
                }
            };
            if or_shutdown(shutdown, more).await.is_none() {
                return Ok(());
            }
        }
    }

    /// Registers the version (retrying transient failures under the
    /// processor's policy) and sets up the worker's state.
    async fn start(&self) -> Result<Worker, ProjectionError> {
        let mut failures = 0;
        let version = loop {
            match self.register().await {
                Ok(version) => break version,
                Err(ProjectionError::Store { source, .. })
                    if source.is_transient()
                        && self.give_up_after.is_none_or(|limit| failures + 1 < limit) =>
                {
                    failures += 1;
                    tokio::time::sleep(self.retry.backoff(failures)).await;
                }
                Err(error) => return Err(error),
            }
        };
        let partitions = self.checkpoint_names();
        // Start the partitions at a different place in each worker so that
        // workers spread out.
        let offset = (std::process::id() as usize + Arc::as_ptr(&self.projection) as usize)
            % partitions.len();
        Ok(Worker {
            partitions,
            offset,
            cursor: Cursor::new(),
            transient_failures: 0,
            other_failures: 0,
            // Say that a worker runs, now and every heartbeat (for
            // operators' tools: see `ProjectionVersion::worker_seen_at`).
            next_beat: tokio::time::Instant::now(),
            active: version.state == es_store::VersionState::Active,
        })
    }

    /// Runs the batches of one partition until it is idle or busy, or a
    /// batch fails in the store (then after the backoff). Whether anything
    /// happened that calls for another pass at once.
    async fn pass_partition(
        &self,
        worker: &mut Worker,
        index: usize,
    ) -> Result<bool, ProjectionError> {
        let (key, filter) = &worker.partitions[index];
        let mut progressed = false;
        loop {
            if worker.next_beat <= tokio::time::Instant::now() {
                self.record_worker().await;
                worker.next_beat =
                    tokio::time::Instant::now() + es_store::ProjectionVersion::WORKER_HEARTBEAT;
            }
            match self.batch(key, filter, &mut worker.cursor).await {
                Ok(Batch::Handled { .. } | Batch::Retry) => {
                    progressed = true;
                    (worker.transient_failures, worker.other_failures) = (0, 0);
                }
                Ok(Batch::Busy | Batch::Idle) => {
                    // (Store failures are counted until a batch succeeds,
                    // so one failing partition cannot hide behind idle
                    // ones.)
                    worker.cursor.next_partition();
                    return Ok(progressed);
                }
                Err(
                    error @ (ProjectionError::Store { .. } | ProjectionError::Unavailable { .. }),
                ) => {
                    let Some(wait) = self.after_store_failure(worker, &error) else {
                        return Err(error);
                    };
                    tokio::time::sleep(wait).await;
                    // Tried again at once, not at the next wakeup.
                    return Ok(true);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Counts a batch's store failure: the wait before trying again, or
    /// `None` when the processor's policy is spent (transient ones
    /// after [`with_give_up_after`](Self::with_give_up_after), never by
    /// default; others after the policy's attempts).
    fn after_store_failure(
        &self,
        worker: &mut Worker,
        error: &ProjectionError,
    ) -> Option<Duration> {
        let (failures, limit) = if error.is_transient() {
            worker.transient_failures += 1;
            (worker.transient_failures, self.give_up_after)
        } else {
            worker.other_failures += 1;
            (worker.other_failures, Some(self.retry.max_attempts()))
        };
        if limit.is_some_and(|limit| failures >= limit) {
            return None;
        }
        let wait = self
            .retry
            .backoff(worker.transient_failures + worker.other_failures);
        tracing::warn!(
            projection = self.projection.name(),
            %error,
            ?wait,
            "batch failed, retrying"
        );
        Some(wait)
    }

    /// Caught up beside the active version: tries to take over. Whether to
    /// pass again at once (a claim was busy).
    async fn switch_if_caught_up(&self, worker: &mut Worker) -> Result<bool, ProjectionError> {
        match self.try_switch().await {
            Ok(Some(_)) => {
                worker.active = true;
                Ok(false)
            }
            Ok(None) => {
                // A claim was busy (a batch in flight): again, soon.
                tokio::time::sleep(versions::CLAIM_RETRY).await;
                Ok(true)
            }
            Err(ProjectionError::Store { source, .. }) => {
                tracing::warn!(
                    projection = self.projection.name(),
                    error = %source,
                    "could not switch to this version, trying again later"
                );
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }
}

/// What one running worker keeps across its passes.
struct Worker {
    /// Each partition's checkpoint name and filter.
    partitions: Vec<(String, EventFilter)>,
    /// Where this worker starts each pass, so that workers spread out.
    offset: usize,
    /// The partition being read: its retry budget and read-ahead.
    cursor: Cursor,
    /// Store failures in a row since the last batch that succeeded.
    transient_failures: u32,
    other_failures: u32,
    /// When to record next that this worker runs.
    next_beat: tokio::time::Instant,
    /// Whether this version is the active one.
    active: bool,
}

/// Runs `work` unless `shutdown` completes first (`None` then). Shutdown
/// wins a tie, so that a stopping worker starts no more work.
async fn or_shutdown<T>(
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = shutdown.as_mut() => None,
        done = work => Some(done),
    }
}
