//! What differs per backend: connecting and cleaning up, the plain side's
//! SQL, and the catch-up's read model. The workloads (`main.rs`) and the
//! plain side's logic (`plain.rs`) are written once over [`Target`].

pub(crate) mod mysql;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::future::Future;

use es::store::{
    AggregateStreamReader, Backend, EventStore, PersistedEvent, ProjectionStore, SnapshotStore,
};

/// The connection type of a target.
pub(crate) type Conn<T> = <<T as Target>::Db as sqlx::Database>::Connection;
/// The pool type of a target.
pub(crate) type Pool<T> = sqlx::Pool<<T as Target>::Db>;

/// An event as the plain side writes it: its type and its JSON text.
pub(crate) type NewEvent<'a> = (&'a str, String);

/// Which tables a plain side writes, and how it checks the expected
/// version. Each is a separate plain side of the write workloads; the
/// ratio is taken to the fastest of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    /// The store's own tables, with their indexes and constraints; the head
    /// is checked and moved by a conditional `UPDATE` (an `INSERT` for a
    /// new aggregate), then the events are inserted.
    StoreTables,
    /// Tables of its own with only what is needed (events with a unique
    /// (aggregate, version) key and a global position; heads); the head as
    /// in [`StoreTables`](Variant::StoreTables).
    HeadLock,
    /// The same minimal tables; the head checked and moved by one
    /// conditional upsert (`INSERT .. ON CONFLICT .. DO UPDATE .. WHERE`).
    Upsert,
    /// A minimal events table alone, no head: the events are inserted at
    /// the expected version + 1.., and the unique (aggregate, version) key
    /// turns a lost race into a conflict.
    NoHead,
}

impl Variant {
    /// The name in the table and the JSON lines.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::StoreTables => "store-tables",
            Variant::HeadLock => "head-lock",
            Variant::Upsert => "upsert",
            Variant::NoHead => "no-head",
        }
    }

    /// The head statement an append at `version` runs, if the variant
    /// keeps heads.
    pub(crate) fn head(self, version: i64) -> Option<Head> {
        match self {
            Variant::NoHead => None,
            Variant::Upsert => Some(Head::Upsert),
            Variant::StoreTables | Variant::HeadLock if version == 0 => Some(Head::Create),
            Variant::StoreTables | Variant::HeadLock => Some(Head::Bump),
        }
    }
}

/// A plain side's head statements: (bounded context, aggregate type,
/// aggregate id, number of events), then the expected version for all but
/// [`Head::Create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    /// Inserts a new head.
    Create,
    /// Moves an existing head from the expected version.
    Bump,
    /// Creates, or moves from the expected version, in one statement.
    Upsert,
}

/// The plain side lost an optimistic-concurrency check.
#[derive(Debug)]
pub(crate) struct Conflict;

/// A fresh place to write in, on one backend.
pub(crate) struct Opened<T: Target> {
    pub(crate) pool: Pool<T>,
    pub(crate) store: T::Store,
    /// The server and its version, for the header line.
    pub(crate) server: String,
    /// The schema, database or file the benchmark writes in; removed by
    /// [`Target::close`].
    pub(crate) place: String,
}

/// One backend, with one plain side's statements rendered for its tables
/// (the value of the type is those statements).
pub(crate) trait Target: Sized + Send + Sync + 'static {
    /// The sqlx database.
    type Db: sqlx::Database;
    /// The store on it.
    type Store: EventStore
        + AggregateStreamReader
        + SnapshotStore
        + ProjectionStore
        + Backend<Database = Self::Db>
        + Clone;

    /// The `--backend` name.
    const NAME: &'static str;
    /// Whether the store can notify on append (LISTEN/NOTIFY:
    /// `--no-notify`) and commit without waiting for the disk
    /// (`with_durable_commits(false)`): PostgreSQL only.
    const POSTGRES_FEATURES: bool = false;
    /// The plain sides the write workloads run (`append_c*`,
    /// `store_append_c*`, `batch_100`); the other workloads run the one on
    /// the store's tables alone.
    const VARIANTS: &'static [Variant] = &[Variant::StoreTables];

    /// Connects and makes a fresh schema, database or file, migrated.
    fn open(notify: bool) -> impl Future<Output = Result<Opened<Self>, String>> + Send;
    /// Removes what [`open`](Target::open) made.
    fn close(opened: &Opened<Self>) -> impl Future<Output = ()> + Send;

    /// Creates the tables `variant` writes, if they are not the store's.
    fn create_plain_tables(
        store: &Self::Store,
        pool: &Pool<Self>,
        variant: Variant,
    ) -> impl Future<Output = ()> + Send {
        let _ = (store, pool);
        assert_eq!(variant, Variant::StoreTables, "not on {}", Self::NAME);
        async {}
    }
    /// A plain side's statements. Its reads of the global feed
    /// ([`read_page`](Target::read_page), [`count_events`](Target::count_events))
    /// are on the store's tables whatever the variant: only the catch-up
    /// uses them.
    fn plain(store: &Self::Store, variant: Variant) -> Self;
    /// Begins the plain side's writing transaction.
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = sqlx::Transaction<'static, Self::Db>> + Send;
    /// Reads the aggregate `id`'s events and calls `visit` with each one's
    /// version, type and payload, in version order.
    fn fold_stream<F>(
        &self,
        conn: &mut Conn<Self>,
        id: &str,
        visit: F,
    ) -> impl Future<Output = ()> + Send
    where
        F: FnMut(i64, &str, &str) + Send;
    /// Checks and moves the head from `version`, then inserts the events;
    /// returns their global positions.
    fn append_in(
        &self,
        conn: &mut Conn<Self>,
        id: &str,
        version: i64,
        events: &[NewEvent<'_>],
    ) -> impl Future<Output = Result<Vec<i64>, Conflict>> + Send;
    /// Reads up to `limit` events after position `after`, decoding every
    /// column as a reader would; returns how many it read and the last
    /// position, or `None` at the end.
    fn read_page(
        &self,
        conn: &mut Conn<Self>,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Option<(u64, i64)>> + Send;
    /// Rows in the events table.
    fn count_events(&self, pool: &Pool<Self>) -> impl Future<Output = i64> + Send;

    /// Creates the catch-up's read model unless it exists, a table of (position, aggregate
    /// id, event type); returns its name.
    fn create_read_model(
        store: &Self::Store,
        pool: &Pool<Self>,
    ) -> impl Future<Output = String> + Send;
    /// Empties the read model, in the rebuild's transaction.
    fn clear_read_model(
        conn: &mut Conn<Self>,
        table: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Inserts a row per event into the read model, in one statement.
    fn copy_rows(
        conn: &mut Conn<Self>,
        table: &str,
        events: &[PersistedEvent],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}
