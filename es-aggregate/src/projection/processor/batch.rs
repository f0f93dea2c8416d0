//! One batch: claim a partition, read, handle, move the checkpoint, commit.

use super::*;

/// Where a worker stands in the partition it is on, across the batches
/// of one pass: owned by the loop that runs the batches (`run`,
/// `catch_up`), handed to each batch.
#[derive(Default)]
pub(crate) struct Cursor {
    /// The error policy's attempt at the batch that fails (1 when none
    /// does); a partition's retry budget is its own.
    pub(crate) policy_attempts: u32,
    /// The next page, read while this batch is handled.
    pub(crate) ahead: Option<ReadAhead>,
}

impl Cursor {
    pub(crate) fn new() -> Self {
        Self {
            policy_attempts: 1,
            ahead: None,
        }
    }

    /// Moving to another partition: its retry budget starts afresh.
    pub(crate) fn next_partition(&mut self) {
        self.policy_attempts = 1;
    }
}

/// A page being read ahead, while the batch before it is handled.
pub(crate) struct ReadAhead {
    key: String,
    from: i64,
    page: tokio::task::JoinHandle<Result<EventPage, es_store::Error>>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.page.abort();
    }
}

/// How one batch attempt ended.
pub(crate) enum Batch {
    /// Another processor holds the checkpoint.
    Busy,
    /// Nothing (more) to handle.
    Idle,
    /// Events handled and committed.
    Handled { events: u64, skipped: u64 },
    /// The batch failed and the error policy wants it tried again.
    Retry,
}

impl<S, P> ProjectionProcessor<S, P>
where
    S: ProjectionStore + Clone,
    P: Projection<S::Database>,
{
    /// One batch of a partition ([`Self::claim_and_handle`]), measured.
    pub(crate) async fn batch(
        &self,
        key: &str,
        filter: &EventFilter,
        cursor: &mut Cursor,
    ) -> Result<Batch, ProjectionError> {
        let started = std::time::Instant::now();
        let outcome = self.claim_and_handle(key, filter, cursor, started).await;
        let metrics = self.metrics();
        match &outcome {
            Ok(Batch::Handled { events, .. }) if *events > 0 && metrics.lag_due() => {
                // The lag in events, at most once a second: one read of
                // the head.
                let head = async {
                    let mut conn = self.pool.acquire().await?;
                    self.store.head_position(&mut conn).await
                };
                if let (Ok(head), Some(position)) = (head.await, metrics.last_position()) {
                    metrics.lag(head - position);
                }
            }
            Err(ProjectionError::Store { .. } | ProjectionError::Unavailable { .. }) => {
                metrics.store_failure()
            }
            _ => {}
        }
        outcome
    }

    /// Claims one partition's checkpoint, reads one batch after it (or
    /// takes the page read ahead), handles it and commits it with the new
    /// checkpoint.
    pub(crate) async fn claim_and_handle(
        &self,
        key: &str,
        filter: &EventFilter,
        cursor: &mut Cursor,
        started: std::time::Instant,
    ) -> Result<Batch, ProjectionError> {
        // Wait for the read ahead before taking a connection: with a pool of
        // one, the read ahead may be waiting for it.
        let read_ahead = match cursor.ahead.take() {
            Some(mut next) if next.key == key => match (&mut next.page).await {
                Ok(Ok(page)) => Some((next.from, page)),
                _ => None, // read it again below
            },
            _ => None,
        };
        let mut tx = self.pool.begin().await.map_err(|e| self.store_error(e))?;
        let Some(checkpoint) = self
            .store
            .claim_leased(&mut tx, key, self.lease)
            .await
            .map_err(|e| self.store_error(e))?
        else {
            return Ok(Batch::Busy);
        };
        if !self.durable_commits {
            self.store
                .relax_commit_durability(&mut tx)
                .await
                .map_err(|e| self.store_error(e))?;
        }
        let page = match read_ahead {
            Some((from, page)) if from == checkpoint => page,
            _ => self
                .store
                .read_filtered(&mut tx, checkpoint, self.batch_size, filter)
                .await
                .map_err(|e| self.store_error(e))?,
        };
        if self.prefetch && page.events.len() as i64 == self.batch_size {
            let (store, pool, filter) = (self.store.clone(), self.pool.clone(), filter.clone());
            let (from, limit) = (page.scanned_to, self.batch_size);
            cursor.ahead = Some(ReadAhead {
                key: key.to_owned(),
                from,
                page: tokio::spawn(async move {
                    let mut conn = pool.acquire().await?;
                    store.read_filtered(&mut conn, from, limit, &filter).await
                }),
            });
        }
        // Only a version that still runs writes (one query, when there is
        // something to commit).
        let replay = if page.scanned_to > checkpoint {
            self.admit(&mut tx).await?
        } else {
            Replay::none(self.projection.version())
        };
        if page.events.is_empty() {
            if page.scanned_to > checkpoint {
                // Nothing in this stretch of the feed: move past it, and
                // look further.
                self.commit_checkpoint(tx, key, page.scanned_to).await?;
                self.metrics().position(key, page.scanned_to);
                return Ok(Batch::Handled {
                    events: 0,
                    skipped: 0,
                });
            }
            self.rollback(tx).await?;
            return Ok(Batch::Idle);
        }
        let span = tracing::info_span!(
            "projection_batch",
            projection = self.projection.name(),
            checkpoint = key,
            from = page.events[0].global_position,
            to = page.scanned_to,
            events = page.events.len(),
        );
        let handled = self
            .projection
            .handle_page(&mut Context::new(&mut *tx, replay), &page.events)
            .instrument(span.clone())
            .await;
        match handled {
            Ok(()) => {
                self.commit_checkpoint(tx, key, page.scanned_to)
                    .instrument(span)
                    .await?;
                self.metrics().batch(
                    key,
                    page.scanned_to,
                    page.events.len(),
                    page.events.last().map(|e| e.created_at),
                    started,
                );
                cursor.policy_attempts = 1;
                Ok(Batch::Handled {
                    events: page.events.len() as u64,
                    skipped: 0,
                })
            }
            Err(failure) => {
                // A handler that failed because the database did (a lost
                // connection, a deadlock): the store's failure, retried as
                // one, not the events' (never skipped or counted against
                // the error policy).
                // A handler whose target is unavailable ([`Transient`])
                // fails the same way.
                let failure = match failure.error.downcast::<Transient>() {
                    Ok(transient) => Err(ProjectionError::Unavailable {
                        projection: self.projection.name().to_owned(),
                        source: transient.into_inner(),
                    }),
                    Err(error) => match transient_store_error(error) {
                        Ok(source) => Err(self.store_error(source)),
                        Err(error) => Ok(BatchFailure {
                            index: failure.index,
                            error,
                        }),
                    },
                };
                let failure = match failure {
                    Ok(failure) => failure,
                    Err(transient) => {
                        if let Err(rollback) = tx.rollback().await {
                            tracing::debug!(%rollback, "could not roll back a failed batch");
                        }
                        return Err(transient);
                    }
                };
                // Release the claim before anything else claims it again.
                self.rollback(tx).await?;
                self.handle_failure(
                    key,
                    checkpoint,
                    &page.events,
                    failure,
                    &mut cursor.policy_attempts,
                    &replay,
                )
                .instrument(span)
                .await
            }
        }
    }

    pub(crate) async fn rollback(
        &self,
        tx: sqlx::Transaction<'_, S::Database>,
    ) -> Result<(), ProjectionError> {
        tx.rollback().await.map_err(|e| self.store_error(e))
    }

    pub(crate) async fn commit_checkpoint(
        &self,
        mut tx: sqlx::Transaction<'_, S::Database>,
        key: &str,
        position: i64,
    ) -> Result<(), ProjectionError> {
        self.store
            .update_checkpoint(&mut tx, key, position)
            .await
            .map_err(|e| self.store_error(e))?;
        tx.commit().await.map_err(|e| self.store_error(e))
    }
}
