//! Read-model documents: the same operations on every backend, each one
//! statement (a lock is two: the row made to exist, then read locked).

/// Stamps out [`DocumentStore`](crate::DocumentStore) for one backend.
macro_rules! impl_documents {
    ($dialect:ty, $conn:ty, $row:ty) => {
        impl $crate::DocumentStore for $crate::SqlStore<$dialect> {
            async fn put_document(
                &self,
                conn: &mut $conn,
                collection: &str,
                id: &str,
                body: &serde_json::value::RawValue,
            ) -> $crate::Result<()> {
                $crate::validate::document_key(collection, id)?;
                $crate::validate::document(body, self.max_json_depth())?;
                <$dialect as $crate::core::Codec>::check_document(self, conn, collection, id, body)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().documents.put.clone()))
                    .bind(collection)
                    .bind(id)
                    .bind(<$dialect as $crate::core::Codec>::json(body))
                    .bind(<$dialect as $crate::core::Codec>::time($crate::event::now()))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn get_document(
                &self,
                conn: &mut $conn,
                collection: &str,
                id: &str,
            ) -> $crate::Result<Option<Box<serde_json::value::RawValue>>> {
                $crate::validate::document_key(collection, id)?;
                let row = sqlx::query(sqlx::AssertSqlSafe(self.sql().documents.get.clone()))
                    .bind(collection)
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
                row.map(|row| <$dialect as $crate::core::Codec>::get_json(&row, 0))
                    .transpose()
                    .map(|body| body.filter(|b| b.get() != "null"))
            }

            async fn lock_document(
                &self,
                conn: &mut $conn,
                collection: &str,
                id: &str,
            ) -> $crate::Result<Option<Box<serde_json::value::RawValue>>> {
                $crate::validate::document_key(collection, id)?;
                let sql = &self.sql().documents;
                loop {
                    sqlx::query(sqlx::AssertSqlSafe(sql.ensure.clone()))
                        .bind(collection)
                        .bind(id)
                        .bind(<$dialect as $crate::core::Codec>::time($crate::event::now()))
                        .execute(&mut *conn)
                        .await?;
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql.get_locked.clone()))
                        .bind(collection)
                        .bind(id)
                        .fetch_optional(&mut *conn)
                        .await?;
                    // None: deleted by another transaction between the two
                    // statements; make it exist again.
                    if let Some(row) = row {
                        let body = <$dialect as $crate::core::Codec>::get_json(&row, 0)?;
                        return Ok(Some(body).filter(|b| b.get() != "null"));
                    }
                }
            }

            async fn delete_document(
                &self,
                conn: &mut $conn,
                collection: &str,
                id: &str,
            ) -> $crate::Result<()> {
                $crate::validate::document_key(collection, id)?;
                sqlx::query(sqlx::AssertSqlSafe(self.sql().documents.delete.clone()))
                    .bind(collection)
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn clear_documents(
                &self,
                conn: &mut $conn,
                collection: &str,
            ) -> $crate::Result<u64> {
                $crate::validate::collection(collection)?;
                let done = sqlx::query(sqlx::AssertSqlSafe(self.sql().documents.clear.clone()))
                    .bind(collection)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn list_documents(
                &self,
                conn: &mut $conn,
                collection: &str,
                after: Option<&str>,
                limit: u32,
            ) -> $crate::Result<Vec<(String, Box<serde_json::value::RawValue>)>> {
                use sqlx::Row as _;
                $crate::validate::collection(collection)?;
                // Every id sorts after the empty string.
                let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql().documents.list.clone()))
                    .bind(collection)
                    .bind(after.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            row.try_get::<String, _>(0)?,
                            <$dialect as $crate::core::Codec>::get_json(row, 1)?,
                        ))
                    })
                    .collect()
            }

            async fn count_documents(
                &self,
                conn: &mut $conn,
                collection: &str,
            ) -> $crate::Result<u64> {
                $crate::validate::collection(collection)?;
                let count: i64 =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql().documents.count.clone()))
                        .bind(collection)
                        .fetch_one(&mut *conn)
                        .await?;
                Ok(count.max(0) as u64)
            }
        }
    };
}
pub(crate) use impl_documents;
