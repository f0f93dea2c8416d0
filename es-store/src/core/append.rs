//! Appending: input checks, locking an aggregate, and deciding what a
//! refused append means (a conflict, or a retried batch whose stored
//! result is returned). The statements themselves and their locking are the
//! backend's [`Codec::append`](crate::core::Codec::append).

/// Stamps out [`EventStore`](crate::EventStore) and the append helpers
/// for one backend.
macro_rules! impl_append {
    ($dialect:ty, $conn:ty, $row:ty) => {
        impl $crate::EventStore for $crate::SqlStore<$dialect> {
            async fn append(
                &self,
                conn: &mut $conn,
                expected: $crate::ExpectedVersion,
                mut events: Vec<$crate::Event>,
            ) -> $crate::Result<$crate::AppendResult> {
                let expected = $crate::validate::append(expected, &mut events, self.max_json_depth())?;
                // Outside a transaction, the append commits by itself.
                let commits = !sqlx::Connection::is_in_transaction(conn);
                let started = std::time::Instant::now();
                let (context, kind) = (
                    events[0].bounded_context.clone(),
                    events[0].aggregate_type.clone(),
                );
                let span = tracing::debug_span!(
                    "append",
                    bounded_context = %context,
                    aggregate_type = %kind,
                    aggregate_id = %events[0].aggregate_id,
                    expected = %expected,
                    events = events.len(),
                    from_version = tracing::field::Empty,
                    to_version = tracing::field::Empty,
                    first_position = tracing::field::Empty,
                );
                let appended = tracing::Instrument::instrument(
                    <$dialect as $crate::core::Codec>::append(self, conn, expected, events),
                    span.clone(),
                )
                .await;
                $crate::telemetry::record_append(context, kind, started, &appended);
                let appended = appended?;
                span.record("from_version", appended.from_version());
                span.record("to_version", appended.to_version());
                if let Some(first) = appended.global_positions.first() {
                    span.record("first_position", first);
                }
                if commits {
                    self.notify_committed();
                }
                Ok(appended)
            }

            fn notify_committed(&self) {
                self.inner.committed.send_modify(|n| *n = n.wrapping_add(1));
            }

            async fn lock_aggregate(
                &self,
                conn: &mut $conn,
                aggregate: impl $crate::AsAggregateRef + Send,
            ) -> $crate::Result<i64> {
                let aggregate = aggregate.as_aggregate_ref();
                let $crate::AggregateRef {
                    bounded_context,
                    aggregate_type,
                    aggregate_id,
                } = aggregate;
                $crate::validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
                // The aggregate's own lock, where appends take one first;
                // then the head, read (and locked, on most backends).
                <$dialect as $crate::core::Codec>::lock_aggregate_row(self, conn, aggregate).await?;
                let found: Option<i64> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql().lock_head.clone()))
                        .bind(bounded_context)
                        .bind(aggregate_type)
                        .bind(aggregate_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                let version =
                    <$dialect as $crate::core::Codec>::lock_found_head(self, conn, aggregate, found).await?;
                Ok(version.unwrap_or(0))
            }

            fn begin_write_sql(&self) -> Option<&'static str> {
                <$dialect as $crate::store::sealed::Dialect>::BEGIN_WRITE
            }

            async fn events_by_id(
                &self,
                conn: &mut $conn,
                ids: &[uuid::Uuid],
            ) -> $crate::Result<Vec<$crate::PersistedEvent>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql().stored_ids.clone()))
                    .bind(<$dialect as $crate::core::Codec>::id_list(ids.iter().copied())?)
                    .fetch_all(&mut *conn)
                    .await?;
                let mut found = rows
                    .iter()
                    .map(|row| decode_row(row))
                    .collect::<$crate::Result<Vec<_>>>()?;
                found.sort_by_key(|event| ids.iter().position(|id| *id == event.event_id));
                Ok(found)
            }
        }

        impl $crate::SqlStore<$dialect> {
            /// The stored events whose ids the batch uses, in batch order,
            /// each with whether its type, schema version and payload
            /// equal the batch's.
            pub(crate) async fn stored_events(
                &self,
                conn: &mut $conn,
                events: &[$crate::Event],
            ) -> $crate::Result<Vec<($crate::PersistedEvent, bool)>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql().stored_ids.clone()))
                    .bind(<$dialect as $crate::core::Codec>::id_list(events.iter().map(|e| e.event_id))?)
                    .fetch_all(&mut *conn)
                    .await?;
                let found = rows
                    .iter()
                    .map(|row| decode_row(row))
                    .collect::<$crate::Result<Vec<_>>>()?;
                $crate::core::in_batch_order(events, found)
            }

            /// The append's check stored nothing: either the expected
            /// version did not match or some event ids are stored already.
            /// Decides which, and returns the stored result when the batch
            /// repeats one earlier append.
            pub(crate) async fn resolve_refused_append(
                &self,
                conn: &mut $conn,
                expected: $crate::ExpectedVersion,
                events: Vec<$crate::Event>,
            ) -> $crate::Result<$crate::AppendResult> {
                let stored = self.stored_events(conn, &events).await?;
                if !stored.is_empty() {
                    return $crate::replay::stored_result(&events, stored);
                }
                let first = &events[0];
                let actual: Option<i64> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql().head_version.clone()))
                        .bind(first.bounded_context.as_str())
                        .bind(first.aggregate_type.as_str())
                        .bind(first.aggregate_id.as_str())
                        .fetch_optional(&mut *conn)
                        .await?;
                Err($crate::Error::OptimisticConcurrency {
                    aggregate: first.aggregate().to_owned(),
                    expected,
                    actual: Some(actual.unwrap_or(0)),
                })
            }
        }
    };
}
pub(crate) use impl_append;
