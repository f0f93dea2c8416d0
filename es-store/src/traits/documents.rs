//! Read-model documents.

use std::future::Future;

use super::{Backend, Connection};
use crate::Result;

/// Read-model documents: JSON values by collection and id, in the
/// store's documents table (`read_models`), with the same operations and
/// the same semantics on every backend, so that a projection written
/// against them runs on any. [`Collection`](crate::documents::Collection)
/// is the typed way to use them.
///
/// Ids compare exactly (bytes: `acc-1`, `ACC-1` and `acc-1 ` are three
/// documents) and sort bytewise. Collections and ids are names (not empty,
/// up to [`limits::MAX_COLLECTION_BYTES`](crate::limits::MAX_COLLECTION_BYTES)
/// and [`limits::MAX_DOCUMENT_ID_BYTES`](crate::limits::MAX_DOCUMENT_ID_BYTES)
/// bytes, no NUL); a body is any JSON value, JSON `null` reading as absent.
///
/// ```no_run
/// use es_store::{DocumentStore, PostgresStore};
/// use serde_json::value::RawValue;
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::new();
/// let mut tx = pool.begin().await?;
/// store.put_document(&mut *tx, "balances", "acc-1", &RawValue::from_string(r#"{"balance":5}"#.into())?).await?;
/// tx.commit().await?;
/// let mut conn = pool.acquire().await?;
/// assert_eq!(store.get_document(&mut *conn, "balances", "acc-1").await?.unwrap().get(), r#"{"balance": 5}"#);
/// # Ok(()) }
/// ```
pub trait DocumentStore: Backend {
    /// Stores `body` as the document `id` of `collection`, replacing it.
    fn put_document(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
        id: &str,
        body: &serde_json::value::RawValue,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The document, if there is one.
    fn get_document(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Box<serde_json::value::RawValue>>>> + Send;

    /// The document, locked until the caller's transaction ends, so that
    /// what the transaction writes from it cannot be lost to a concurrent
    /// writer; a missing document is locked too (as a row holding JSON
    /// `null`, which reads as absent: put or delete it before the
    /// transaction ends). Call it in a transaction.
    fn lock_document(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Box<serde_json::value::RawValue>>>> + Send;

    /// Removes the document (nothing if there is none).
    fn delete_document(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes every document of `collection`; returns how many rows went.
    fn clear_documents(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Up to `limit` documents of `collection` with ids after `after`
    /// (from the first when `None`), by id.
    fn list_documents(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(String, Box<serde_json::value::RawValue>)>>> + Send;

    /// How many documents `collection` holds.
    fn count_documents(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
    ) -> impl Future<Output = Result<u64>> + Send;
}
