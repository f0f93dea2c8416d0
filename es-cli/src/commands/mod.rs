//! The subcommands, written once over the backend.

mod failures;
mod feed;
mod projections;
mod status;

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use crate::args::{Args, Command, FailuresAction, ProjectionsAction};
use crate::backend::{Applied, CliStore, FoundStore, Listener};
use crate::config::Location;
use crate::embedded::{Registered, Registry};
use crate::error::store_error;
use crate::{Error, format};

/// What every command works with.
pub(crate) struct Ctx<S: CliStore> {
    pub(crate) store: S,
    pub(crate) pool: sqlx::Pool<S::Database>,
    pub(crate) location: Location,
    /// The projections the service registered for this backend.
    pub(crate) registered: Vec<Arc<dyn Registered<S>>>,
    /// Whether this binary embeds projections at all (else it is the
    /// plain `es`).
    pub(crate) embedded: bool,
}

impl<S: CliStore> Ctx<S> {
    /// The store, as messages name it: `PostgreSQL at URL, schema "x"`.
    pub(crate) fn describe(&self) -> String {
        let mut text = format!("{} at {}", S::NAME, self.location.shown());
        if let Some(schema) = &self.location.names.schema {
            text.push_str(&format!(", schema \"{schema}\""));
        }
        text
    }

    pub(crate) fn registered(&self, name: &str) -> Option<&Arc<dyn Registered<S>>> {
        self.registered.iter().find(|r| r.name() == name)
    }

    /// The migrations recorded as applied; `None` when the store has no
    /// migrations table (it was never migrated).
    pub(crate) async fn applied(&self) -> Result<Option<Vec<Applied>>, Error> {
        let mut conn = self.conn().await?;
        match self.store.applied_migrations(&mut conn).await {
            Ok(applied) => Ok(Some(applied)),
            Err(es_store::Error::Database(error)) if crate::error::is_missing_table(&error) => {
                Ok(None)
            }
            Err(error) => Err(store_error(error)),
        }
    }

    /// Fails with [`Error::NotMigrated`] when the store's tables are not
    /// there.
    pub(crate) async fn require_store(&self) -> Result<Vec<Applied>, Error> {
        match self.applied().await? {
            Some(applied) if !applied.is_empty() => Ok(applied),
            _ => Err(self.no_store().await),
        }
    }

    /// [`Error::NotMigrated`] for a store that is not where the names
    /// say: naming the stores the database holds elsewhere (another
    /// schema, another events table), where `es migrate` would create a
    /// second, empty store; suggesting `es migrate` only when there are
    /// none.
    async fn no_store(&self) -> Error {
        let names = &self.location.names;
        let listed = self.stores_elsewhere().await;
        if listed.is_empty() {
            return Error::NotMigrated(format!(
                "no event store in {}: its tables are missing (run `es migrate`)",
                self.describe()
            ));
        }
        let stores = if listed.len() == 1 {
            "a store"
        } else {
            "stores"
        };
        if names.schema.is_some() || names.events_table.is_some() {
            // Asked for this place: creating the store there may be meant.
            return Error::NotMigrated(format!(
                "no event store in {}: its tables are missing (run `es migrate` to create one \
                 there; the database holds {stores} elsewhere: {})",
                self.describe(),
                listed.join("; ")
            ));
        }
        Error::NotMigrated(format!(
            "no event store in {}: its tables are missing there, but the database holds \
             {stores} elsewhere: {}. Point es at it with the flags shown (or the config file's \
             keys); `es migrate` would create another, empty store here",
            self.describe(),
            listed.join("; ")
        ))
    }

    /// The stores the database holds elsewhere than where the names point
    /// (found by their migrations tables), as messages list them: where
    /// each is and the flags that reach it. A failure to look is no
    /// failure of the command: it finds none.
    async fn stores_elsewhere(&self) -> Vec<String> {
        const LISTED: usize = 20;
        let names = &self.location.names;
        let ours = match names.events() {
            "events" => "_es_migrations".to_owned(),
            events => format!("_es_migrations_{events}"),
        };
        let found: Vec<FoundStore> = match self.conn().await {
            Ok(mut conn) => self.store.find_stores(&mut conn).await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
        .into_iter()
        .filter(|store| {
            let here = match &names.schema {
                Some(schema) => *schema == store.schema,
                None => store.current,
            };
            !(here && store.table == ours)
        })
        .collect();
        let mut listed: Vec<String> = found
            .iter()
            .take(LISTED)
            .map(|store| {
                let mut flags = Vec::new();
                let mut place = Vec::new();
                if !store.schema.is_empty() {
                    let kind = if S::NAME == "MySQL" {
                        "database"
                    } else {
                        "schema"
                    };
                    place.push(format!("{kind} \"{}\"", store.schema));
                    flags.push(format!("--schema {}", store.schema));
                }
                if let Some(events) = store.events_table() {
                    place.push(format!("events table \"{events}\""));
                    flags.push(format!("--events-table {events}"));
                }
                format!("{} ({})", place.join(", "), flags.join(" "))
            })
            .collect();
        if found.len() > LISTED {
            listed.push(format!("and {} more", found.len() - LISTED));
        }
        listed
    }

    pub(crate) async fn conn(&self) -> Result<sqlx::pool::PoolConnection<S::Database>, Error> {
        es_store::acquire(&self.pool).await.map_err(store_error)
    }

    /// Every checkpoint row: (name, position), by name.
    pub(crate) async fn checkpoint_rows(&self) -> Result<Vec<(String, i64)>, Error> {
        let mut conn = self.conn().await?;
        let rows = self.store.checkpoint_rows(&mut conn).await;
        Ok(rows
            .map_err(store_error)?
            .into_iter()
            .map(|row| (row.name, row.position))
            .collect())
    }

    /// The projections with skipped events, and how many each.
    pub(crate) async fn failure_counts(&self) -> Result<Vec<(String, i64)>, Error> {
        let mut conn = self.conn().await?;
        let counts = self.store.failure_counts(&mut conn).await;
        Ok(counts
            .map_err(store_error)?
            .into_iter()
            .map(|count| (count.projection_name, count.count))
            .collect())
    }

    /// How many events the store holds.
    pub(crate) async fn count_events(&self) -> Result<i64, Error> {
        let mut conn = self.conn().await?;
        self.store
            .count_events(&mut conn)
            .await
            .map_err(store_error)
    }

    /// How many aggregates the store holds.
    pub(crate) async fn count_aggregates(&self) -> Result<i64, Error> {
        let mut conn = self.conn().await?;
        self.store
            .count_aggregates(&mut conn)
            .await
            .map_err(store_error)
    }

    /// The connections listening to the store's notifications, where the
    /// backend has them.
    pub(crate) async fn listeners(&self) -> Result<Option<Vec<Listener>>, Error> {
        let mut conn = self.conn().await?;
        self.store.listeners(&mut conn).await.map_err(store_error)
    }
}

/// Runs `args` on the backend `S`.
pub(crate) async fn run<S: CliStore>(
    location: Location,
    args: Args,
    registry: &Registry,
) -> Result<(), Error> {
    let store = S::build(&location.names)?;
    let timeout = Duration::from_secs(args.store.connect_timeout.max(1));
    let dry_run = matches!(args.command, Command::Migrate { dry_run: true });
    let create = matches!(args.command, Command::Migrate { dry_run: false });
    let pool = match S::connect(&location, create, timeout).await {
        Ok(pool) => pool,
        // Nothing there yet: every migration would run.
        Err(Error::NotMigrated(_)) if dry_run => return print_migrations(&store, &[], &location),
        Err(error) => return Err(error),
    };
    let registered = S::registered(registry)
        .iter()
        .map(|make| make(store.clone(), pool.clone()))
        .collect();
    let ctx = Ctx {
        store,
        pool: pool.clone(),
        location,
        registered,
        embedded: !registry.is_empty(),
    };
    let result = dispatch(&ctx, args.command).await;
    pool.close().await;
    result
}

async fn dispatch<S: CliStore>(ctx: &Ctx<S>, command: Command) -> Result<(), Error> {
    match command {
        Command::Migrate { dry_run } => migrate(ctx, dry_run).await,
        Command::Status { json } => status::status(ctx, json).await,
        Command::Stream {
            context,
            aggregate_type,
            id,
            from,
            to,
            json,
        } => feed::stream(ctx, (&context, &aggregate_type, &id), from, to, json).await,
        Command::Tail {
            from,
            last,
            follow,
            filter,
            limit,
            poll_interval,
            json,
        } => {
            let options = feed::TailOptions {
                from,
                last,
                follow,
                filter: feed::parse_filter(&filter)?,
                limit,
                poll_interval: Duration::from_millis(poll_interval.max(10)),
                json,
            };
            feed::tail(ctx, options).await
        }
        Command::Projections { action, json } => match action {
            None => projections::list(ctx, json).await,
            Some(ProjectionsAction::Reset { name, yes, force }) => {
                projections::reset(ctx, &name, yes, force).await
            }
            Some(ProjectionsAction::Rebuild {
                name,
                yes,
                force,
                timeout,
                worker_timeout,
            }) => {
                let options = projections::RebuildOptions {
                    yes,
                    force,
                    timeout: timeout.map(Duration::from_secs),
                    worker_timeout: Duration::from_secs(worker_timeout),
                };
                projections::rebuild(ctx, &name, options).await
            }
        },
        Command::Failures { action, name, json } => match action {
            None => failures::list(ctx, name.as_deref(), json).await,
            Some(FailuresAction::Discard {
                name,
                position,
                all: _,
            }) => failures::discard(ctx, &name, position).await,
            Some(FailuresAction::Retry {
                name,
                position,
                all: _,
            }) => failures::retry(ctx, &name, position).await,
        },
    }
}

/// `es migrate [--dry-run]`.
async fn migrate<S: CliStore>(ctx: &Ctx<S>, dry_run: bool) -> Result<(), Error> {
    let applied = ctx.applied().await?.unwrap_or_default();
    if dry_run {
        return print_migrations(&ctx.store, &applied, &ctx.location);
    }
    let before: Vec<i64> = applied.iter().map(|a| a.version).collect();
    if before.is_empty() {
        // A new store: say so where the database holds others (the one
        // meant may be one of them).
        let elsewhere = ctx.stores_elsewhere().await;
        if !elsewhere.is_empty() {
            eprintln!(
                "es: note: creating a new, empty store; the database holds others: {}",
                elsewhere.join("; ")
            );
        }
    }
    ctx.store
        .migrate_store(&ctx.pool)
        .await
        .map_err(Error::from)?;
    let migrator = ctx.store.sql().migrator();
    let ran: Vec<String> = migrator
        .iter()
        .filter(|m| !before.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    let mut out = std::io::stdout();
    if ran.is_empty() {
        writeln!(
            out,
            "{}: up to date ({} migrations applied)",
            ctx.describe(),
            migrator.iter().count()
        )?;
    } else {
        writeln!(
            out,
            "{}: applied {} migration(s): {}",
            ctx.describe(),
            ran.len(),
            ran.join(", ")
        )?;
    }
    Ok(())
}

/// The SQL of the migrations not in `applied`, as a script.
fn print_migrations<S: CliStore>(
    store: &S,
    applied: &[Applied],
    location: &Location,
) -> Result<(), Error> {
    let migrator = store.sql().migrator();
    let pending: Vec<_> = migrator
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .collect();
    let mut out = std::io::stdout();
    if pending.is_empty() {
        writeln!(
            out,
            "-- {} at {}: up to date, nothing to apply",
            S::NAME,
            location.shown()
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "-- {} migration(s) to apply to {} at {}, tracked in {}",
        pending.len(),
        S::NAME,
        location.shown(),
        migrator.table_name
    )?;
    for schema in migrator.create_schemas.iter() {
        writeln!(
            out,
            "-- (sqlx first creates the schema {schema} if it is missing)"
        )?;
    }
    for migration in pending {
        writeln!(
            out,
            "\n-- migration {}: {}\n{}",
            migration.version,
            migration.description,
            migration.sql.as_str().trim_end()
        )?;
    }
    Ok(())
}

/// Asks on the terminal; without one, `--yes` is needed.
pub(crate) fn confirm(yes: bool, question: &str, flag_hint: &str) -> Result<(), Error> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "refusing to {flag_hint} without confirmation: pass --yes"
        )));
    }
    let mut err = std::io::stderr();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Error::Failed("not confirmed: nothing changed".into())),
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Columns aligned on the widest cell, two spaces apart.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// "3m 2s ago", or "-".
pub(crate) fn ago(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    at.map_or_else(
        || "-".into(),
        |at| format!("{} ago", format::duration(format::age(at))),
    )
}
