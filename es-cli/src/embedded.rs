//! The projections a service registers when it embeds the CLI in its own
//! binary, so that `rebuild` and `failures retry` run their code.

use std::sync::Arc;

use es_aggregate::projection::{CatchUp, HandlerError, Projection, ProjectionStatus};
use es_aggregate::{ProjectionError, ProjectionProcessor};
use es_store::{Connection, EventFilter, PersistedEvent};

use crate::backend::{BoxFuture, CliStore};

/// Makes a registered projection's processor once the CLI is connected.
pub(crate) type Factory<S> = Box<
    dyn Fn(S, sqlx::Pool<<S as es_store::Backend>::Database>) -> Arc<dyn Registered<S>>
        + Send
        + Sync,
>;

/// The registered projections, per backend.
#[derive(Default)]
pub(crate) struct Registry {
    #[cfg(feature = "postgres")]
    pub(crate) postgres: Vec<Factory<es_store::PostgresStore>>,
    #[cfg(feature = "sqlite")]
    pub(crate) sqlite: Vec<Factory<es_store::SqliteStore>>,
    #[cfg(feature = "mysql")]
    pub(crate) mysql: Vec<Factory<es_store::MySqlStore>>,
}

impl Registry {
    /// Every name registered, on any backend.
    pub(crate) fn is_empty(&self) -> bool {
        let mut empty = true;
        #[cfg(feature = "postgres")]
        {
            empty &= self.postgres.is_empty();
        }
        #[cfg(feature = "sqlite")]
        {
            empty &= self.sqlite.is_empty();
        }
        #[cfg(feature = "mysql")]
        {
            empty &= self.mysql.is_empty();
        }
        empty
    }
}

/// A registered projection, with its processor, as the commands use it.
pub(crate) trait Registered<S: CliStore>: Send + Sync {
    /// The projection's name.
    fn name(&self) -> &str;
    /// Which events it reads.
    fn filter(&self) -> EventFilter;
    /// Whether its code declares side effects.
    fn has_side_effects(&self) -> bool;
    /// Its checkpoints and lag.
    fn status(&self) -> BoxFuture<'_, Result<ProjectionStatus, ProjectionError>>;
    /// `ProjectionProcessor::rebuild`.
    fn rebuild(&self) -> BoxFuture<'_, Result<CatchUp, ProjectionError>>;
    /// `Projection::reset`, in the caller's transaction.
    fn reset_read_model<'a>(
        &'a self,
        conn: &'a mut Connection<S>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
    /// `Projection::handle`, in the caller's transaction.
    fn handle<'a>(
        &'a self,
        conn: &'a mut Connection<S>,
        event: &'a PersistedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

impl<S, P> Registered<S> for ProjectionProcessor<S, P>
where
    S: CliStore,
    P: Projection<S::Database>,
{
    fn name(&self) -> &str {
        self.projection().name()
    }

    fn filter(&self) -> EventFilter {
        self.projection().filter()
    }

    fn has_side_effects(&self) -> bool {
        self.projection().has_side_effects()
    }

    fn status(&self) -> BoxFuture<'_, Result<ProjectionStatus, ProjectionError>> {
        Box::pin(ProjectionProcessor::status(self))
    }

    fn rebuild(&self) -> BoxFuture<'_, Result<CatchUp, ProjectionError>> {
        Box::pin(ProjectionProcessor::rebuild(self))
    }

    fn reset_read_model<'a>(
        &'a self,
        conn: &'a mut Connection<S>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(self.projection().reset(conn))
    }

    fn handle<'a>(
        &'a self,
        conn: &'a mut Connection<S>,
        event: &'a PersistedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let projection = self.projection();
            let replay = es_aggregate::projection::Replay::none(projection.version());
            let mut ctx = es_aggregate::projection::Context::new(conn, replay);
            projection
                .handle_page(&mut ctx, std::slice::from_ref(event))
                .await
                .map_err(|failure| failure.error)
        })
    }
}
