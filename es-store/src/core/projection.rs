//! What read models need besides the feed: checkpoints, snapshots, claims
//! (the backend's `Codec::claim_checkpoint`), skipped-event records, the
//! head of the feed and commits without durability.

/// Stamps out [`CheckpointStore`](crate::CheckpointStore),
/// [`SnapshotStore`](crate::SnapshotStore) and
/// [`ProjectionStore`](crate::ProjectionStore) for one backend.
macro_rules! impl_projection {
    ($dialect:ty, $conn:ty, $row:ty) => {
        impl $crate::CheckpointStore for $crate::SqlStore<$dialect> {
            async fn get_checkpoint(
                &self,
                conn: &mut $conn,
                projection_name: &str,
            ) -> $crate::Result<i64> {
                $crate::validate::projection_name(projection_name)?;
                let position: Option<i64> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql().get_checkpoint.clone()))
                        .bind(projection_name)
                        .fetch_optional(&mut *conn)
                        .await?;
                Ok(position.unwrap_or(0))
            }

            async fn update_checkpoint(
                &self,
                conn: &mut $conn,
                projection_name: &str,
                position: i64,
            ) -> $crate::Result<()> {
                $crate::validate::projection_name(projection_name)?;
                $crate::validate::position(position)?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().update_checkpoint.clone()))
                    .bind(projection_name)
                    .bind(position)
                    .bind(<$dialect as $crate::core::Codec>::time($crate::event::now()))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
        }

        impl $crate::SnapshotStore for $crate::SqlStore<$dialect> {
            async fn load_snapshot(
                &self,
                conn: &mut $conn,
                aggregate: impl $crate::AsAggregateRef + Send,
                max_version: Option<i64>,
            ) -> $crate::Result<Option<$crate::Snapshot>> {
                use sqlx::Row as _;
                use std::ops::Bound;
                let $crate::AggregateRef {
                    bounded_context,
                    aggregate_type,
                    aggregate_id,
                } = aggregate.as_aggregate_ref();
                $crate::validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
                let up_to = max_version.map_or(Bound::Unbounded, Bound::Included);
                let (_, max) = $crate::validate::versions(&(Bound::Unbounded, up_to))?;
                let row = sqlx::query(sqlx::AssertSqlSafe(self.sql().load_snapshot.clone()))
                    .bind(bounded_context)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(max)
                    .fetch_optional(&mut *conn)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let mut snapshot = $crate::Snapshot::from_raw(
                    bounded_context,
                    aggregate_type,
                    aggregate_id,
                    row.try_get(0)?,
                    row.try_get(1)?,
                    <$dialect as $crate::core::Codec>::get_json(&row, 2)?,
                );
                snapshot.created_at = <$dialect as $crate::core::Codec>::get_time(&row, 3)?;
                Ok(Some(snapshot))
            }

            async fn save_snapshot(
                &self,
                conn: &mut $conn,
                snapshot: &$crate::Snapshot,
            ) -> $crate::Result<()> {
                $crate::validate::snapshot(snapshot, self.max_json_depth())?;
                <$dialect as $crate::core::Codec>::check_snapshot(self, conn, snapshot).await?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().save_snapshot.clone()))
                    .bind(&snapshot.bounded_context)
                    .bind(&snapshot.aggregate_type)
                    .bind(&snapshot.aggregate_id)
                    .bind(snapshot.version)
                    .bind(snapshot.schema_version)
                    .bind(<$dialect as $crate::core::Codec>::json(&snapshot.state))
                    .bind(<$dialect as $crate::core::Codec>::time(snapshot.created_at))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
        }

        impl $crate::ProjectionStore for $crate::SqlStore<$dialect> {
            async fn claim_checkpoint(
                &self,
                conn: &mut $conn,
                projection_name: &str,
            ) -> $crate::Result<Option<i64>> {
                $crate::validate::projection_name(projection_name)?;
                <$dialect as $crate::core::Codec>::claim_checkpoint(self, conn, projection_name)
                    .await
            }

            async fn record_failure(
                &self,
                conn: &mut $conn,
                projection_name: &str,
                event: &$crate::PersistedEvent,
                error: &str,
            ) -> $crate::Result<()> {
                $crate::validate::projection_name(projection_name)?;
                // A diagnostic, not data: a NUL (which PostgreSQL cannot
                // store) becomes U+FFFD rather than failing the batch.
                let error = if error.contains('\0') {
                    std::borrow::Cow::Owned(error.replace('\0', "\u{fffd}"))
                } else {
                    std::borrow::Cow::Borrowed(error)
                };
                sqlx::query(sqlx::AssertSqlSafe(self.sql().record_failure.clone()))
                    .bind(projection_name)
                    .bind(event.global_position)
                    .bind(<$dialect as $crate::core::Codec>::uuid(event.event_id))
                    .bind(&event.event_type)
                    .bind(error.as_ref())
                    .bind(<$dialect as $crate::core::Codec>::time($crate::event::now()))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn failures(
                &self,
                conn: &mut $conn,
                projection_name: &str,
            ) -> $crate::Result<Vec<$crate::ProjectionFailure>> {
                use sqlx::Row as _;
                $crate::validate::projection_name(projection_name)?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql().list_failures.clone()))
                    .bind(projection_name)
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::ProjectionFailure {
                            global_position: row.try_get(0)?,
                            event_id: <$dialect as $crate::core::Codec>::get_uuid(row, 1)?,
                            event_type: row.try_get(2)?,
                            error: row.try_get(3)?,
                            failed_at: <$dialect as $crate::core::Codec>::get_time(row, 4)?,
                        })
                    })
                    .collect()
            }

            async fn head_position(&self, conn: &mut $conn) -> $crate::Result<i64> {
                Ok(
                    sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql().head_position.clone()))
                        .fetch_one(&mut *conn)
                        .await?,
                )
            }

            async fn claim_leased(
                &self,
                conn: &mut $conn,
                projection_name: &str,
                lease: std::time::Duration,
            ) -> $crate::Result<Option<i64>> {
                $crate::validate::projection_name(projection_name)?;
                let claimed = <$dialect as $crate::core::Codec>::claim_leased(
                    self,
                    conn,
                    projection_name,
                    lease,
                );
                if let Some(position) = claimed.await? {
                    return Ok(Some(position));
                }
                $crate::ProjectionStore::lease_transaction(self, conn, lease).await?;
                $crate::ProjectionStore::claim_checkpoint(self, conn, projection_name).await
            }

            async fn checkpoint_holder(
                &self,
                conn: &mut $conn,
                projection_name: &str,
            ) -> $crate::Result<$crate::CheckpointHolder> {
                $crate::validate::projection_name(projection_name)?;
                let Some(probe) = <$dialect as $crate::core::Codec>::probe_claim_sql(self.own())
                else {
                    return Ok($crate::CheckpointHolder::Unknown);
                };
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let free: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(probe.clone()))
                    .bind(projection_name)
                    .fetch_optional(&mut *tx)
                    .await?;
                let exists = free.is_some()
                    || sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(
                        self.sql().checkpoint_exists.clone(),
                    ))
                    .bind(projection_name)
                    .fetch_one(&mut *tx)
                    .await?;
                let holder = if free.is_some() {
                    $crate::CheckpointHolder::Free
                } else if !exists {
                    // Not stored yet: perhaps being created by a first
                    // batch, whose row nobody else can see.
                    $crate::CheckpointHolder::Unknown
                } else {
                    let by = match <$dialect as $crate::core::Codec>::claim_holder_sql(self.own()) {
                        Some(sql) => {
                            let found: Option<(i32, Option<String>, Option<String>)> =
                                sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                                    .bind(projection_name)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                            found.map(|(pid, application, client)| {
                                let about: Vec<String> =
                                    application.into_iter().chain(client).collect();
                                if about.is_empty() {
                                    format!("pid {pid}")
                                } else {
                                    format!("pid {pid} ({})", about.join(", "))
                                }
                            })
                        }
                        None => None,
                    };
                    $crate::CheckpointHolder::Held { by }
                };
                tx.rollback().await?;
                Ok(holder)
            }

            async fn lease_transaction(
                &self,
                conn: &mut $conn,
                lease: std::time::Duration,
            ) -> $crate::Result<()> {
                if let Some(sql) = <$dialect as $crate::store::sealed::Dialect>::lease_sql(lease) {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            async fn projection_versions(
                &self,
                conn: &mut $conn,
                projection_name: &str,
            ) -> $crate::Result<Vec<$crate::ProjectionVersion>> {
                use sqlx::Row as _;
                $crate::validate::projection_name(projection_name)?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql().list_versions.clone()))
                    .bind(projection_name)
                    .fetch_all(&mut *conn)
                    .await?;
                let number = |value: i64, what: &str| {
                    u32::try_from(value).map_err(|_| {
                        sqlx::Error::Decode(
                            format!("projection {what} {value} out of range").into(),
                        )
                    })
                };
                rows.iter()
                    .map(|row| {
                        let state: String = row.try_get(2)?;
                        let state = state.parse().map_err(|e: $crate::UnknownVersionState| {
                            sqlx::Error::Decode(e.into())
                        })?;
                        Ok($crate::ProjectionVersion {
                            name: row.try_get(0)?,
                            version: number(row.try_get(1)?, "version")?,
                            state,
                            replay_until: row.try_get(3)?,
                            partitions: number(row.try_get(4)?, "partition count")?,
                            updated_at: <$dialect as $crate::core::Codec>::get_time(row, 5)?,
                            side_effects: row.try_get(6)?,
                            worker_seen_at: row.try_get(7)?,
                        })
                    })
                    .collect()
            }

            async fn insert_projection_version(
                &self,
                conn: &mut $conn,
                version: &$crate::ProjectionVersion,
            ) -> $crate::Result<()> {
                $crate::validate::projection_name(&version.name)?;
                $crate::validate::position(version.replay_until)?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().insert_version.clone()))
                    .bind(&version.name)
                    .bind(i64::from(version.version))
                    .bind(version.state.as_str())
                    .bind(version.replay_until)
                    .bind(i64::from(version.partitions))
                    .bind(<$dialect as $crate::core::Codec>::time(version.updated_at))
                    .bind(version.side_effects)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn record_projection_side_effects(
                &self,
                conn: &mut $conn,
                projection_name: &str,
                version: u32,
                side_effects: bool,
            ) -> $crate::Result<()> {
                $crate::validate::projection_name(projection_name)?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().record_side_effects.clone()))
                    .bind(side_effects)
                    .bind(projection_name)
                    .bind(i64::from(version))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn record_projection_worker(
                &self,
                conn: &mut $conn,
                projection_name: &str,
                version: u32,
            ) -> $crate::Result<()> {
                $crate::validate::projection_name(projection_name)?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().record_worker.clone()))
                    .bind(<$dialect as $crate::core::Codec>::time($crate::event::now()))
                    .bind(projection_name)
                    .bind(i64::from(version))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn update_projection_version(
                &self,
                conn: &mut $conn,
                version: &$crate::ProjectionVersion,
            ) -> $crate::Result<()> {
                $crate::validate::projection_name(&version.name)?;
                $crate::validate::position(version.replay_until)?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().update_version.clone()))
                    .bind(version.state.as_str())
                    .bind(version.replay_until)
                    .bind(i64::from(version.partitions))
                    .bind(<$dialect as $crate::core::Codec>::time($crate::event::now()))
                    .bind(&version.name)
                    .bind(i64::from(version.version))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn delete_projection_version(
                &self,
                conn: &mut $conn,
                projection_name: &str,
                version: u32,
            ) -> $crate::Result<()> {
                $crate::validate::projection_name(projection_name)?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().delete_version.clone()))
                    .bind(projection_name)
                    .bind(i64::from(version))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn wait_for_checkpoint(
                &self,
                conn: &mut $conn,
                projection_name: &str,
            ) -> $crate::Result<Option<i64>> {
                $crate::validate::projection_name(projection_name)?;
                let found =
                    <$dialect as $crate::core::Codec>::wait_checkpoint(self, conn, projection_name)
                        .await?;
                if found.is_some() {
                    return Ok(found);
                }
                // Missing (a claim creates it), or a backend whose claims wait.
                <$dialect as $crate::core::Codec>::claim_checkpoint(self, conn, projection_name)
                    .await
            }

            async fn lock_projection_versions(
                &self,
                conn: &mut $conn,
                projection_name: &str,
            ) -> $crate::Result<()> {
                $crate::validate::projection_name(projection_name)?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().lock_versions.clone()))
                    .bind(projection_name)
                    .bind(<$dialect as $crate::core::Codec>::time($crate::event::now()))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn delete_checkpoint(
                &self,
                conn: &mut $conn,
                projection_name: &str,
            ) -> $crate::Result<()> {
                $crate::validate::projection_name(projection_name)?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().delete_checkpoint.clone()))
                    .bind(projection_name)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn relax_commit_durability(&self, conn: &mut $conn) -> $crate::Result<()> {
                <$dialect as $crate::core::Codec>::relax_durability(self, conn).await
            }
        }
    };
}
pub(crate) use impl_projection;
