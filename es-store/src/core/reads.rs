//! Reading: one aggregate's stream (whole, or folded as rows arrive), and
//! the gap-safe global feed, up to the backend's `Codec::safe_position`.

/// Stamps out [`AggregateStreamReader`](crate::AggregateStreamReader),
/// [`EventReader`](crate::EventReader) and the row decoder for one backend.
macro_rules! impl_reads {
    ($dialect:ty, $conn:ty, $row:ty) => {
        /// Decodes a row selected with [`EVENT_COLUMNS`](crate::core::EVENT_COLUMNS).
        fn decode_row(row: &$row) -> $crate::Result<$crate::PersistedEvent> {
            use sqlx::Row as _;
            let event = $crate::Event {
                event_id: <$dialect as $crate::core::Codec>::get_uuid(row, 2)?,
                bounded_context: row.try_get(3)?,
                aggregate_type: row.try_get(4)?,
                aggregate_id: row.try_get(5)?,
                event_type: row.try_get(6)?,
                event_version: row.try_get(7)?,
                payload: <$dialect as $crate::core::Codec>::get_json(row, 8)?,
                metadata: <$dialect as $crate::core::Codec>::get_json(row, 9)?,
                correlation_id: <$dialect as $crate::core::Codec>::get_opt_uuid(row, 10)?,
                causation_id: <$dialect as $crate::core::Codec>::get_opt_uuid(row, 11)?,
                trace_id: row.try_get(12)?,
                created_at: <$dialect as $crate::core::Codec>::get_time(row, 13)?,
            };
            Ok($crate::PersistedEvent::new(
                event,
                row.try_get(1)?,
                row.try_get(0)?,
            ))
        }

        /// Visits rows of (aggregate_version, event_type, event_version,
        /// payload) as they arrive, not gathered first, lending each row's
        /// text to `visit` without copying it.
        async fn visit_rows<F, E>(
            mut rows: impl futures_util::Stream<Item = Result<$row, sqlx::Error>> + Unpin,
            mut visit: F,
        ) -> Result<u64, E>
        where
            F: FnMut($crate::StoredEvent<'_>) -> Result<(), E>,
            E: From<$crate::Error>,
        {
            use futures_util::TryStreamExt as _;
            use sqlx::Row as _;
            let mut visited = 0;
            while let Some(row) = rows.try_next().await.map_err($crate::Error::from)? {
                // The column types are those of our own queries, so the
                // per-value type checks are skipped.
                let get = |e: sqlx::Error| E::from($crate::Error::from(e));
                visit($crate::StoredEvent {
                    aggregate_version: row.try_get_unchecked(0).map_err(get)?,
                    event_type: row.try_get_unchecked(1).map_err(get)?,
                    event_version: row.try_get_unchecked(2).map_err(get)?,
                    payload: <$dialect as $crate::core::Codec>::json_text(&row, 3)?,
                })?;
                visited += 1;
            }
            Ok(visited)
        }

        impl $crate::AggregateStreamReader for $crate::SqlStore<$dialect> {
            async fn read_aggregate_stream(
                &self,
                conn: &mut $conn,
                aggregate: impl $crate::AsAggregateRef + Send,
                versions: impl std::ops::RangeBounds<i64> + Send,
            ) -> $crate::Result<$crate::Stream> {
                let aggregate = aggregate.as_aggregate_ref();
                let $crate::AggregateRef {
                    bounded_context,
                    aggregate_type,
                    aggregate_id,
                } = aggregate;
                $crate::validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
                let (from, to) = $crate::validate::versions(&versions)?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql().read_stream.clone()))
                    .bind(bounded_context)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(from)
                    .bind(to)
                    .fetch_all(&mut *conn)
                    .await?;
                let events = rows.iter().map(decode_row).collect::<$crate::Result<_>>()?;
                Ok($crate::Stream::new(
                    bounded_context,
                    aggregate_type,
                    aggregate_id,
                    events,
                ))
            }

            /// Reads four columns instead of fourteen and lends each row's
            /// text to `visit` as it arrives: no copy, and the payload is
            /// parsed once, by the visitor.
            async fn fold_aggregate_stream<F, E>(
                &self,
                conn: &mut $conn,
                aggregate: impl $crate::AsAggregateRef + Send,
                versions: impl std::ops::RangeBounds<i64> + Send,
                visit: F,
            ) -> Result<u64, E>
            where
                F: FnMut($crate::StoredEvent<'_>) -> Result<(), E> + Send,
                E: From<$crate::Error> + Send,
            {
                let $crate::AggregateRef {
                    bounded_context,
                    aggregate_type,
                    aggregate_id,
                } = aggregate.as_aggregate_ref();
                $crate::validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
                let (from, to) = $crate::validate::versions(&versions)?;
                let query = sqlx::query(sqlx::AssertSqlSafe(self.sql().fold_stream.clone()))
                    .bind(bounded_context)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(from)
                    .bind(to);
                visit_rows(query.fetch(&mut *conn), visit).await
            }

            /// One round trip where the backend has a statement for it
            /// (PostgreSQL); otherwise the lock, then the fold (see
            /// `Codec::lock_and_fold`).
            async fn lock_and_fold_aggregate_stream<F, E>(
                &self,
                conn: &mut $conn,
                aggregate: impl $crate::AsAggregateRef + Send,
                versions: std::ops::RangeFrom<i64>,
                visit: F,
            ) -> Result<u64, E>
            where
                F: FnMut($crate::StoredEvent<'_>) -> Result<(), E> + Send,
                E: From<$crate::Error> + Send,
            {
                let aggregate = aggregate.as_aggregate_ref();
                let $crate::AggregateRef {
                    bounded_context,
                    aggregate_type,
                    aggregate_id,
                } = aggregate;
                $crate::validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
                $crate::validate::versions(&versions)?;
                <$dialect as $crate::core::Codec>::lock_and_fold(
                    self, conn, aggregate, versions, visit,
                )
                .await
            }
        }

        impl $crate::EventReader for $crate::SqlStore<$dialect> {
            async fn read_events(
                &self,
                conn: &mut $conn,
                from_position: i64,
                limit: i64,
            ) -> $crate::Result<Vec<$crate::PersistedEvent>> {
                let page = self
                    .read_filtered(conn, from_position, limit, &$crate::EventFilter::all())
                    .await?;
                Ok(page.events)
            }

            fn committed_appends(&self) -> tokio::sync::watch::Receiver<u64> {
                self.inner.committed.subscribe()
            }

            async fn read_filtered(
                &self,
                conn: &mut $conn,
                from_position: i64,
                limit: i64,
                filter: &$crate::EventFilter,
            ) -> $crate::Result<$crate::EventPage> {
                $crate::validate::page(from_position, limit)?;
                filter.validate()?;
                // Nothing at or below `safe` can still commit: see the
                // backend's gap-safety notes.
                let safe = <$dialect as $crate::core::Codec>::safe_position(self, conn).await?;
                if safe <= from_position {
                    return Ok($crate::EventPage {
                        events: Vec::new(),
                        scanned_to: from_position,
                    });
                }
                let (count, index) = filter
                    .partition_of()
                    .map_or((1, 0), |p| (i64::from(p.count()), i64::from(p.index())));
                let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql().read_events.clone()))
                    .bind(from_position)
                    .bind(<$dialect as $crate::core::Codec>::name_list(
                        filter.bounded_contexts(),
                    )?)
                    .bind(<$dialect as $crate::core::Codec>::name_list(
                        filter.aggregate_types(),
                    )?)
                    .bind(count)
                    .bind(index)
                    .bind(safe)
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?;
                let events: Vec<$crate::PersistedEvent> =
                    rows.iter().map(decode_row).collect::<$crate::Result<_>>()?;
                let scanned_to = match events.last() {
                    Some(last) if events.len() as i64 == limit => last.global_position,
                    _ => safe,
                };
                Ok($crate::EventPage { events, scanned_to })
            }
        }
    };
}
pub(crate) use impl_reads;
