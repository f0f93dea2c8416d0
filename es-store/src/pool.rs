//! Taking a connection from a pool, with the reason when none comes.

use std::time::Duration;

use sqlx::{ConnectOptions, Connection};

use crate::{Error, Result};

/// How long the connection attempt that explains a pool timeout may take.
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes a connection from `pool`, as [`sqlx::Pool::acquire`] does, but a
/// timeout says why: once the pool gives up, one connection is opened with
/// the pool's options, and what it meets (for example PostgreSQL's
/// `53300`, too many connections) is the `cause` of
/// [`Error::PoolTimedOut`]. `cause` is `None` when that connection opens
/// (it is closed again): the pool's connections were all in use.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// match es_store::acquire(&pool).await {
///     Ok(conn) => drop(conn),
///     Err(es_store::Error::PoolTimedOut { cause: Some(cause) }) => eprintln!("cannot connect: {cause}"),
///     Err(error) => return Err(error),
/// }
/// # Ok(()) }
/// ```
pub async fn acquire<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::pool::PoolConnection<DB>> {
    match pool.acquire().await {
        Ok(conn) => Ok(conn),
        Err(sqlx::Error::PoolTimedOut) => Err(timed_out(pool).await),
        Err(error) => Err(error.into()),
    }
}

/// What opening one connection with the pool's options meets, if it fails.
/// The error of a pool that timed out, with why no connection came.
pub(crate) async fn timed_out<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Error {
    Error::PoolTimedOut {
        cause: why_no_connection(pool).await,
    }
}

async fn why_no_connection<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Option<Box<sqlx::Error>> {
    let options = pool.connect_options();
    match tokio::time::timeout(DIAGNOSIS_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => {
            if let Err(error) = conn.close().await {
                tracing::debug!(%error, "could not close a diagnostic connection");
            }
            None
        }
        Ok(Err(error)) => Some(Box::new(error)),
        Err(_) => Some(Box::new(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "opening a connection timed out",
        )))),
    }
}
