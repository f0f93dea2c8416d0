//! Wakeups: what tells a running processor that there is more to read.

use super::*;

/// A signal that new events may be there. Cheap to clone; see [`Notifier`].
#[derive(Debug, Clone)]
pub struct Wakeup(watch::Receiver<u64>);

impl Wakeup {
    /// A wakeup that never fires (the processor relies on polling), with its
    /// sender, to fire it from your own code (for example after appends in
    /// the same process).
    ///
    /// ```
    /// let (wake, wakeup) = es_aggregate::projection::Wakeup::manual();
    /// wake.send_modify(|n| *n += 1);
    /// # drop(wakeup);
    /// ```
    pub fn manual() -> (watch::Sender<u64>, Wakeup) {
        let (tx, rx) = watch::channel(0);
        (tx, Wakeup(rx))
    }

    /// Waits for the next signal; returns at once if one came since the
    /// last wait. Never returns if the sender is gone.
    pub(crate) async fn wait(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(feature = "postgres")]
/// Listens to the store's append notifications on one PostgreSQL
/// connection and wakes every subscribed processor. It registers itself
/// with the store, which notifies only while someone listens, and refreshes
/// that registration every 10 seconds. The connection is re-established
/// when it is lost (processors are woken then too, since notifications may
/// have been missed).
///
/// ```no_run
/// use es_aggregate::projection::Notifier;
/// # async fn demo(pool: sqlx::PgPool, store: es_store::PostgresStore) -> Result<(), es_store::Error> {
/// let notifier = Notifier::listen(&pool, &store).await?;
/// let wakeup = notifier.subscribe();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Notifier {
    wakeups: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "postgres")]
impl Notifier {
    /// Starts listening to `store`'s appends, on a connection of its own
    /// made with `pool`'s connect options (so it never holds one of the
    /// pool's connections). The pool's `after_connect` hook does not run on
    /// it: a store without a schema must then find its tables through the
    /// connect options' search path (`PgConnectOptions::options`), or be
    /// given a schema.
    pub async fn listen(
        pool: &sqlx::PgPool,
        store: &es_store::PostgresStore,
    ) -> Result<Self, es_store::Error> {
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*pool.connect_options()).clone());
        // The store's one listener: LISTEN, registration, reconnection.
        let mut listener = es_store::listener::AppendListener::connect(store, &own).await?;
        let (tx, wakeups) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            loop {
                // A short wait bounds the pause after a failed connection.
                match listener.wait(Duration::from_millis(500)).await {
                    es_store::listener::Wakeup::Timeout => {}
                    // Notified, or reconnecting (appends may have come
                    // meanwhile): wake once.
                    _ => tx.send_modify(|n| *n = n.wrapping_add(1)),
                }
            }
        });
        Ok(Self { wakeups, task })
    }

    /// A wakeup for one processor.
    pub fn subscribe(&self) -> Wakeup {
        let mut rx = self.wakeups.clone();
        rx.mark_unchanged();
        Wakeup(rx)
    }
}

#[cfg(feature = "postgres")]
impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}
