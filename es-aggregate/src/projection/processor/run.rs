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
        let mut wakeup = self.wakeup.clone();
        let mut appended = self.store.committed_appends();
        let partitions = self.checkpoint_names();
        let mut policy_attempts = 1;
        let mut ahead = None;
        let (mut transient_failures, mut other_failures) = (0u32, 0u32);
        let backoff =
            RetryPolicy::exponential(u32::MAX, Duration::from_millis(50), Duration::from_secs(5));
        tokio::pin!(shutdown);
        let mut failures = 0;
        let mut active;
        loop {
            let registered = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                registered = self.register() => registered,
            };
            match registered {
                Ok(version) => {
                    active = version.state == es_store::VersionState::Active;
                    break;
                }
                Err(ProjectionError::Store { source, .. })
                    if source.is_transient()
                        && self.give_up_after.is_none_or(|limit| failures + 1 < limit) =>
                {
                    failures += 1;
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(backoff.backoff(failures)) => {}
                    }
                }
                Err(error) => return Err(error),
            }
        }
        // Start the partitions at a different place in each worker so that
        // workers spread out.
        let offset = (std::process::id() as usize + Arc::as_ptr(&self.projection) as usize)
            % partitions.len();
        // Say that a worker runs, now and every heartbeat (for operators'
        // tools: see `ProjectionVersion::worker_seen_at`).
        let mut next_beat = tokio::time::Instant::now();
        loop {
            // What is committed from here on wakes the wait below.
            appended.borrow_and_update();
            let mut progressed = false;
            for i in 0..partitions.len() {
                let (key, filter) = &partitions[(offset + i) % partitions.len()];
                loop {
                    if next_beat <= tokio::time::Instant::now() {
                        tokio::select! {
                            biased;
                            () = &mut shutdown => return Ok(()),
                            () = self.record_worker() => {}
                        }
                        next_beat = tokio::time::Instant::now()
                            + es_store::ProjectionVersion::WORKER_HEARTBEAT;
                    }
                    let batch = tokio::select! {
                        biased;
                        () = &mut shutdown => return Ok(()),
                        batch = self.batch(key, filter, &mut policy_attempts, &mut ahead) => batch,
                    };
                    match batch {
                        Ok(Batch::Handled { .. } | Batch::Retry) => {
                            progressed = true;
                            (transient_failures, other_failures) = (0, 0);
                        }
                        Ok(Batch::Busy | Batch::Idle) => {
                            // A partition's retry budget is its own. (Store
                            // failures are counted until a batch succeeds,
                            // so one failing partition cannot hide behind
                            // idle ones.)
                            policy_attempts = 1;
                            break;
                        }
                        Err(
                            error @ (ProjectionError::Store { .. }
                            | ProjectionError::Unavailable { .. }),
                        ) => {
                            let transient = error.is_transient();
                            let failures = if transient {
                                transient_failures += 1;
                                transient_failures
                            } else {
                                other_failures += 1;
                                other_failures
                            };
                            let limit = if transient {
                                self.give_up_after
                            } else {
                                Some(10)
                            };
                            if limit.is_some_and(|limit| failures >= limit) {
                                return Err(error);
                            }
                            let wait = backoff.backoff(transient_failures + other_failures);
                            tracing::warn!(
                                projection = self.projection.name(),
                                %error,
                                ?wait,
                                "batch failed, retrying"
                            );
                            tokio::select! {
                                biased;
                                () = &mut shutdown => return Ok(()),
                                () = tokio::time::sleep(wait) => {}
                            }
                            // Tried again at once, not at the next wakeup.
                            progressed = true;
                            break;
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
            if self.auto_switch && !active {
                // A pass ends when every partition has been read to the
                // head (or was busy): caught up beside the active version,
                // take over. (Waiting for a pass that found nothing would
                // wait for a pause in the appends.)
                let switched = tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(()),
                    switched = self.try_switch() => switched,
                };
                match switched {
                    Ok(Some(_)) => active = true,
                    Ok(None) => {
                        // A claim was busy (a batch in flight): again, soon.
                        tokio::select! {
                            biased;
                            () = &mut shutdown => return Ok(()),
                            () = tokio::time::sleep(versions::CLAIM_RETRY) => {}
                        }
                        progressed = true;
                    }
                    Err(ProjectionError::Store { source, .. }) => {
                        tracing::warn!(
                            projection = self.projection.name(),
                            error = %source,
                            "could not switch to this version, trying again later"
                        );
                    }
                    Err(error) => return Err(error),
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
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                _ = appended.changed() => {}
                () = wake => {}
                () = tokio::time::sleep(self.poll_interval) => {}
                () = tokio::time::sleep_until(next_beat) => {}
            }
        }
    }
}
