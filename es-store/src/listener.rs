//! One PostgreSQL listener for new events: `LISTEN` on the store's
//! notification channel, with the registration in the store's listeners
//! table that makes appends notify (refreshed before it lapses, removed
//! on close). `es tail --follow` waits on it; a projection processor can
//! too.

use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPool};

use crate::{PostgresStore, Result};

/// How often the registration is refreshed (it lapses after
/// `LISTENER_TTL_SECONDS`, 30 s).
const REFRESH: Duration = Duration::from_secs(10);

/// The shortest wait, so that a refresh due now does not spin.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// Hears of new events in a PostgreSQL store: a dedicated connection that
/// `LISTEN`s on [`PostgresStore::notification_channel`] and keeps itself
/// registered with [`PostgresStore::register_listener`], so that appends
/// notify while it lives.
///
/// [`wait`](Self::wait) returns on a notification, after its timeout, or
/// when the connection was lost (events may have come meanwhile: read
/// after every return, not only on [`Wakeup::Notified`]).
///
/// ```no_run
/// use std::time::Duration;
/// use es_store::{PostgresStore, listener::AppendListener};
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// let store = PostgresStore::new();
/// let mut listener = AppendListener::connect(&store, &pool).await?;
/// loop {
///     let _ = listener.wait(Duration::from_secs(5)).await;
///     // ... read the feed from where the last read stopped ...
/// #   break;
/// }
/// listener.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AppendListener {
    listener: PgListener,
    store: PostgresStore,
    refreshed: Option<Instant>,
}

/// Why [`AppendListener::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wakeup {
    /// An append notified (further notifications already buffered were
    /// consumed with it).
    Notified,
    /// The timeout passed, or the registration was due for a refresh.
    Timeout,
    /// The connection was lost; the next wait reconnects and registers
    /// again. Events may have been appended meanwhile.
    Reconnecting,
}

impl AppendListener {
    /// Opens a connection from `pool`'s options, `LISTEN`s on the store's
    /// channel and registers it.
    pub async fn connect(store: &PostgresStore, pool: &PgPool) -> Result<Self> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(&store.notification_channel()).await?;
        let mut this = Self {
            listener,
            store: store.clone(),
            refreshed: None,
        };
        this.refresh().await?;
        Ok(this)
    }

    /// Registers the connection again, for another
    /// `LISTENER_TTL_SECONDS`.
    async fn refresh(&mut self) -> Result<()> {
        let conn = sqlx::Acquire::acquire(&mut self.listener).await?;
        self.store.register_listener(conn).await?;
        self.refreshed = Some(Instant::now());
        Ok(())
    }

    /// Waits for a notification, at most `timeout` (less when the
    /// registration is due for a refresh, which it does first when due).
    pub async fn wait(&mut self, timeout: Duration) -> Wakeup {
        let since = self.refreshed.map(|at| at.elapsed());
        if since.is_none_or(|since| since >= REFRESH) {
            // A failure here is a lost connection: the next receive
            // reconnects, and the next wait registers again.
            if self.refresh().await.is_err() {
                self.refreshed = None;
            }
        }
        let until_refresh =
            REFRESH.saturating_sub(self.refreshed.map_or(REFRESH, |at| at.elapsed()));
        let wait = timeout.min(until_refresh.max(MIN_WAIT));
        match tokio::time::timeout(wait, self.listener.try_recv()).await {
            Ok(Ok(Some(_))) => {
                while self.listener.next_buffered().is_some() {}
                Wakeup::Notified
            }
            Ok(Ok(None)) => {
                self.refreshed = None;
                Wakeup::Reconnecting
            }
            Ok(Err(_)) => {
                self.refreshed = None;
                tokio::time::sleep(wait).await;
                Wakeup::Reconnecting
            }
            Err(_) => Wakeup::Timeout,
        }
    }

    /// Removes the registration (best effort: it lapses anyway) and closes
    /// the connection.
    pub async fn close(mut self) {
        if let Ok(conn) = sqlx::Acquire::acquire(&mut self.listener).await {
            let _ = self.store.unregister_listener(conn).await;
        }
    }
}
