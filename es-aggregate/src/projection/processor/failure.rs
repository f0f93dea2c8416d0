//! A failed batch: the error policy, skipping, and finding the event at fault.

use super::*;

impl<S, P> ProjectionProcessor<S, P>
where
    S: ProjectionStore + Clone,
    P: Projection<S::Database>,
{
    /// The batch failed and was rolled back: apply the error policy.
    pub(crate) async fn handle_failure(
        &self,
        key: &str,
        start: i64,
        events: &[PersistedEvent],
        failure: BatchFailure,
        policy_attempts: &mut u32,
        replay: &Replay,
    ) -> Result<Batch, ProjectionError> {
        // Whether the event at fault is known (a failure that no single
        // event reproduces is blamed on the first, but never skipped).
        let (index, error, known) = match failure.index {
            Some(index) if index < events.len() => (index, failure.error, true),
            _ => {
                self.find_failing_event(events, failure.error, replay)
                    .await?
            }
        };
        let event = &events[index];
        self.metrics().handler_failure();
        tracing::warn!(
            projection = self.projection.name(),
            global_position = event.global_position,
            event_type = %event.event_type,
            %error,
            "handler failed"
        );
        let give_up = |attempts: u32, source: HandlerError| ProjectionError::Handler {
            projection: self.projection.name().to_owned(),
            global_position: event.global_position,
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            attempts,
            source,
        };
        match self.error_policy {
            ErrorPolicy::Stop => Err(give_up(*policy_attempts, error)),
            ErrorPolicy::Retry(policy) => {
                if *policy_attempts >= policy.max_attempts() {
                    let attempts = *policy_attempts;
                    *policy_attempts = 1;
                    return Err(give_up(attempts, error));
                }
                tokio::time::sleep(policy.backoff(*policy_attempts)).await;
                *policy_attempts += 1;
                Ok(Batch::Retry)
            }
            ErrorPolicy::Skip if !known => Err(give_up(*policy_attempts, error)),
            ErrorPolicy::Skip => {
                match self
                    .skip(
                        key,
                        start,
                        &events[..index],
                        event,
                        &error.to_string(),
                        replay,
                    )
                    .await?
                {
                    Some(handled) => Ok(Batch::Handled {
                        events: handled,
                        skipped: 1,
                    }),
                    // Another processor holds the checkpoint now; it meets
                    // the event in its turn.
                    None => Ok(Batch::Busy),
                }
            }
        }
    }

    /// Handles `before`, records `failed` as skipped and moves the
    /// checkpoint to it, in one transaction. Returns how many events it
    /// handled, or `None` if it did nothing because the checkpoint is no
    /// longer `start`, where the failed batch began (another processor
    /// moved it, or a rebuild reset it).
    pub(crate) async fn skip(
        &self,
        key: &str,
        start: i64,
        before: &[PersistedEvent],
        failed: &PersistedEvent,
        error: &str,
        replay: &Replay,
    ) -> Result<Option<u64>, ProjectionError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.store_error(e))?;
        let Some(checkpoint) = self
            .store
            .claim_checkpoint(&mut tx, key)
            .await
            .map_err(|e| self.store_error(e))?
        else {
            return Ok(None);
        };
        if checkpoint != start {
            self.rollback(tx).await?;
            return Ok(None);
        }
        if !before.is_empty()
            && let Err(failure) = self
                .projection
                .handle_page(&mut Context::new(&mut *tx, *replay), before)
                .await
        {
            // The handler is not deterministic: the next batch meets it again.
            tracing::warn!(error = %failure.error, "handler failed on events it handled before");
            self.rollback(tx).await?;
            return Ok(None);
        }
        self.store
            .record_failure(&mut tx, self.projection.name(), failed, error)
            .await
            .map_err(|e| self.store_error(e))?;
        self.commit_checkpoint(tx, key, failed.global_position)
            .await?;
        self.metrics().skipped(1);
        self.metrics().position(key, failed.global_position);
        Ok(Some(before.len() as u64))
    }

    /// Replays a batch one event at a time, in a transaction that is rolled
    /// back, to find which event a whole-batch failure came from. Returns
    /// the event's index and error, and whether it was found (if every
    /// event passes on its own, the first is blamed with the batch's error).
    pub(crate) async fn find_failing_event(
        &self,
        events: &[PersistedEvent],
        batch_error: HandlerError,
        replay: &Replay,
    ) -> Result<(usize, HandlerError, bool), ProjectionError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.store_error(e))?;
        let mut found = (0, batch_error, false);
        for (index, event) in events.iter().enumerate() {
            let mut ctx = Context::alone(&mut *tx, *replay);
            let alone = std::slice::from_ref(event);
            if let Err(failure) = self.projection.handle_page(&mut ctx, alone).await {
                found = (index, failure.error, true);
                break;
            }
        }
        self.rollback(tx).await?;
        Ok(found)
    }
}
