//! Read models written once for every backend: typed JSON documents by
//! id, in the store's documents table ([`DocumentStore`]).
//!
//! A projection that keeps its read model in a [`Collection`] uses no SQL
//! of its own, so one implementation, generic over the store, runs on
//! PostgreSQL, SQLite and MySQL alike; readers use the same collection
//! (or, on PostgreSQL, query the `jsonb` bodies directly).
//!
//! ```no_run
//! use es_store::Store;
//! use es_store::documents::Collection;
//!
//! #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
//! struct Balance { owner: String, balance: i64 }
//!
//! // Written once: works on every backend.
//! async fn deposit<S: Store>(
//!     balances: &Collection<S, Balance>,
//!     tx: &mut es_store::Connection<S>,
//!     account: &str,
//!     amount: i64,
//! ) -> es_store::Result<()> {
//!     balances
//!         .update(tx, account, |balance| {
//!             let mut balance = balance.unwrap_or_default();
//!             balance.balance += amount;
//!             Some(balance)
//!         })
//!         .await?;
//!     Ok(())
//! }
//! ```

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::{Connection, DocumentStore, Error, Result};

/// The documents of one collection, as values of `T` (serialized as JSON):
/// put, get, update under a lock, delete, clear, list and count, the same
/// on every backend.
///
/// Updates from concurrent transactions never lose one another:
/// [`update`](Self::update) locks the document (even one that does not
/// exist yet) until the transaction ends. A projection's batch runs in one
/// transaction with its checkpoint, so what it writes here is exactly once.
///
/// ```no_run
/// use es_store::PostgresStore;
/// use es_store::documents::Collection;
///
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// let counts = Collection::<_, u64>::new(PostgresStore::new(), "deposit_counts")?;
/// let mut tx = pool.begin().await?;
/// counts.update(&mut *tx, "acc-1", |n| Some(n.unwrap_or(0) + 1)).await?;
/// tx.commit().await?;
/// let mut conn = pool.acquire().await?;
/// assert_eq!(counts.get(&mut *conn, "acc-1").await?, Some(1));
/// # Ok(()) }
/// ```
pub struct Collection<S, T> {
    store: S,
    name: String,
    value: PhantomData<fn() -> T>,
}

impl<S: Clone, T> Clone for Collection<S, T> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            name: self.name.clone(),
            value: PhantomData,
        }
    }
}

impl<S, T> std::fmt::Debug for Collection<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .field("value", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<S, T> Collection<S, T>
where
    S: DocumentStore,
    T: Serialize + DeserializeOwned + Send,
{
    /// The collection `name` of `store`'s documents table. A name that is
    /// empty, longer than
    /// [`MAX_COLLECTION_BYTES`](crate::limits::MAX_COLLECTION_BYTES) or
    /// holding NUL is refused.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// use es_store::documents::Collection;
    /// use es_store::{Error, NameField, SqliteStore};
    ///
    /// let balances = Collection::<_, i64>::new(SqliteStore::new(), "balances").unwrap();
    /// assert_eq!(balances.name(), "balances");
    /// assert!(matches!(
    ///     Collection::<_, i64>::new(SqliteStore::new(), ""),
    ///     Err(Error::EmptyName { field: NameField::Collection, .. })
    /// ));
    /// # }
    /// ```
    pub fn new(store: S, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        crate::validate::collection(&name)?;
        Ok(Self {
            store,
            name,
            value: PhantomData,
        })
    }

    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Stores `value` as the document `id`, replacing what was there.
    pub async fn put(&self, conn: &mut Connection<S>, id: &str, value: &T) -> Result<()> {
        let body = encode(value)?;
        self.store.put_document(conn, &self.name, id, &body).await
    }

    /// The document `id`, if there is one.
    pub async fn get(&self, conn: &mut Connection<S>, id: &str) -> Result<Option<T>> {
        match self.store.get_document(conn, &self.name, id).await? {
            Some(body) => decode(&body).map(Some),
            None => Ok(None),
        }
    }

    /// Changes the document `id` under a lock held until the transaction
    /// ends: `change` gets the current value (`None` when there is none)
    /// and returns the new one (`None` removes it). Returns what was
    /// stored. Call it in a transaction (a projection's batch is one).
    pub async fn update<F>(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        change: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce(Option<T>) -> Option<T> + Send,
    {
        let current = match self.store.lock_document(conn, &self.name, id).await? {
            Some(body) => Some(decode(&body)?),
            None => None,
        };
        let changed = change(current);
        match &changed {
            Some(value) => self.put(conn, id, value).await?,
            // Also removes the placeholder the lock left.
            None => self.store.delete_document(conn, &self.name, id).await?,
        }
        Ok(changed)
    }

    /// Removes the document `id` (nothing if there is none).
    pub async fn delete(&self, conn: &mut Connection<S>, id: &str) -> Result<()> {
        self.store.delete_document(conn, &self.name, id).await
    }

    /// Removes every document of the collection: what a projection's
    /// `reset` does before a rebuild. Returns how many went.
    pub async fn clear(&self, conn: &mut Connection<S>) -> Result<u64> {
        self.store.clear_documents(conn, &self.name).await
    }

    /// Up to `limit` documents with ids after `after` (from the first when
    /// `None`), by id (bytewise): pass the last id of a page to get the
    /// next one.
    pub async fn list(
        &self,
        conn: &mut Connection<S>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, T)>> {
        self.store
            .list_documents(conn, &self.name, after, limit)
            .await?
            .into_iter()
            .map(|(id, body)| Ok((id, decode(&body)?)))
            .collect()
    }

    /// How many documents the collection holds.
    pub async fn count(&self, conn: &mut Connection<S>) -> Result<u64> {
        self.store.count_documents(conn, &self.name).await
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(Error::Serialization)
}

fn decode<T: DeserializeOwned>(body: &RawValue) -> Result<T> {
    serde_json::from_str(body.get()).map_err(Error::Serialization)
}
