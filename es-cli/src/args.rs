//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Names;

const AFTER_HELP: &str = "\
The database is --url, else the config file's `url`, else $DATABASE_URL:
  postgres://user@host:5432/db   sqlite:events.db   mysql://user@host:3306/db

Exit codes: 0 ok, 1 runtime error (database, connection, handler, no worker to
rebuild), 2 bad usage (arguments, URL, config, confirmation, side effects without
--force), 3 not found (projection, stream, failure), 4 no store there (run
`es migrate`, or point es at the store the message names), 5 needs the
service's embedded CLI (the projection's code), 130 interrupted.";

/// Operate an event store: migrations, streams, the global feed, projections
/// and the events they skipped.
#[derive(Debug, Parser)]
#[command(name = "es", version, after_help = AFTER_HELP)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the store is.
#[derive(clap::Args)]
#[command(next_help_heading = "Store")]
pub(crate) struct StoreArgs {
    /// The database URL (default: the config file's `url`, then $DATABASE_URL)
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// A TOML file with `url`, `schema` and the table names (`events_table`, ...)
    #[arg(long, global = true, env = "ES_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The store's schema (PostgreSQL) or database (MySQL)
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) schema: Option<String>,
    /// The events table [default: events]
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) events_table: Option<String>,
    /// The aggregate heads table [default: aggregate_heads]
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) heads_table: Option<String>,
    /// The checkpoints table [default: checkpoints]
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) checkpoints_table: Option<String>,
    /// The snapshots table [default: snapshots]
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) snapshots_table: Option<String>,
    /// The table of skipped events [default: projection_failures]
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) failures_table: Option<String>,
    /// How long to wait for the database to answer
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10,
          allow_negative_numbers = true, value_parser = whole_u64)]
    pub(crate) connect_timeout: u64,
}

impl std::fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreArgs")
            .field("url", &self.url.as_deref().map(crate::redact::url))
            .field(
                "config",
                &self.config.as_deref().map(crate::config::shown_path),
            )
            .field("names", &self.names())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl StoreArgs {
    pub(crate) fn names(&self) -> Names {
        Names {
            schema: self.schema.clone(),
            events_table: self.events_table.clone(),
            heads_table: self.heads_table.clone(),
            checkpoints_table: self.checkpoints_table.clone(),
            snapshots_table: self.snapshots_table.clone(),
            failures_table: self.failures_table.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Apply the store's migrations (creating its schema and tables)
    Migrate {
        /// Print the SQL of the migrations not applied yet, and apply nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Events, aggregates, head position, migrations, listeners, projections
    Status {
        /// One JSON object
        #[arg(long)]
        json: bool,
    },
    /// One aggregate's events, in version order
    Stream {
        /// The bounded context, e.g. Billing
        context: String,
        /// The aggregate type, e.g. Account
        #[arg(value_name = "TYPE")]
        aggregate_type: String,
        /// The aggregate id
        id: String,
        /// The first version to show
        #[arg(long, value_name = "VERSION", allow_negative_numbers = true, value_parser = whole)]
        from: Option<i64>,
        /// The last version to show
        #[arg(long, value_name = "VERSION", allow_negative_numbers = true, value_parser = whole)]
        to: Option<i64>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// The global feed in position order, read gap-safe as projections read it
    Tail {
        /// Start after this position (0: the whole feed)
        #[arg(long, value_name = "POSITION", conflicts_with = "last",
              allow_negative_numbers = true, value_parser = whole)]
        from: Option<i64>,
        /// Start this many positions before the head [default: 10]
        #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = whole)]
        last: Option<i64>,
        /// Keep reading new events until Ctrl-C
        #[arg(long, short)]
        follow: bool,
        /// Only these events: context=NAME, type=NAME, partition=I/N, comma-separated or repeated
        #[arg(long, value_name = "KEY=VALUE,...")]
        filter: Vec<String>,
        /// Stop after this many events
        #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = whole_u64)]
        limit: Option<u64>,
        /// How often to look for new events with --follow (PostgreSQL is also woken by notifications)
        #[arg(long, value_name = "MILLISECONDS", default_value_t = 500,
              allow_negative_numbers = true, value_parser = whole_u64)]
        poll_interval: u64,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Projections: checkpoints, lag, partitions and claims; reset, rebuild
    Projections {
        #[command(subcommand)]
        action: Option<ProjectionsAction>,
        /// One JSON object per projection, one per line
        #[arg(long)]
        json: bool,
    },
    /// The events projections skipped (all, or NAME's); retry or discard them
    #[command(args_conflicts_with_subcommands = true)]
    Failures {
        #[command(subcommand)]
        action: Option<FailuresAction>,
        /// The projection
        name: Option<String>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionsAction {
    /// Rewind a projection's checkpoints to 0 so that its workers replay the feed
    Reset {
        /// The projection
        name: String,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
        /// Reset it even though it declares side effects (they are done again for every replayed event)
        #[arg(long)]
        force: bool,
    },
    /// Replay a projection from the start, showing its progress
    Rebuild {
        /// The projection
        name: String,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
        /// Rebuild it even though it declares side effects (they are done again for every replayed event)
        #[arg(long)]
        force: bool,
        /// Give up (exit 1) if it has not caught up after this long
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = whole_u64)]
        timeout: Option<u64>,
        /// How long to wait for a running worker of the projection before rewinding it (nothing
        /// is changed if none runs), and for its progress after
        #[arg(long, value_name = "SECONDS", default_value_t = 60,
              allow_negative_numbers = true, value_parser = whole_u64)]
        worker_timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum FailuresAction {
    /// Handle skipped events again (needs the service's embedded CLI)
    Retry {
        /// The projection
        name: String,
        /// The skipped event's position
        #[arg(required_unless_present = "all", allow_negative_numbers = true, value_parser = whole)]
        position: Option<i64>,
        /// Every event the projection skipped
        #[arg(long, conflicts_with = "position")]
        all: bool,
    },
    /// Forget skipped events (the events stay in the store)
    Discard {
        /// The projection
        name: String,
        /// The skipped event's position
        #[arg(required_unless_present = "all", allow_negative_numbers = true, value_parser = whole)]
        position: Option<i64>,
        /// Every event the projection skipped
        #[arg(long, conflicts_with = "position")]
        all: bool,
    },
}

/// A count, position, version or duration: a whole number, 0 or more.
/// Every numeric argument takes this (or [`whole_u64`]), so a negative one
/// is refused alike, before anything is read or changed.
fn whole(text: &str) -> Result<i64, String> {
    refuse_negative(text)?;
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number (0 or more)"))
}

/// [`whole`], for arguments kept unsigned.
fn whole_u64(text: &str) -> Result<u64, String> {
    refuse_negative(text)?;
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number (0 or more)"))
}

/// The same refusal for every negative number, however large.
fn refuse_negative(text: &str) -> Result<(), String> {
    match text.trim().strip_prefix('-') {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("must not be negative (got {})", text.trim()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn negative_numbers_are_refused_alike() {
        for args in [
            &["es", "tail", "--last=-5"][..],
            &["es", "tail", "--last", "-5"],
            &["es", "tail", "--from=-1"],
            &["es", "tail", "--limit", "-1"],
            &["es", "tail", "--poll-interval=-1"],
            &["es", "stream", "B", "A", "x", "--from", "-2"],
            &["es", "stream", "B", "A", "x", "--to=-2"],
            &["es", "projections", "rebuild", "p", "--timeout", "-1"],
            &["es", "projections", "rebuild", "p", "--worker-timeout=-1"],
            &["es", "failures", "discard", "p", "-3"],
            &["es", "failures", "retry", "p", "-3"],
            &["es", "--connect-timeout=-1", "status"],
            &["es", "status", "--connect-timeout", "-99999999999999999999"],
        ] {
            let error = Args::try_parse_from(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}");
            assert!(
                error.to_string().contains("must not be negative"),
                "{args:?}: {error}"
            );
        }
        assert!(Args::try_parse_from(["es", "tail", "--last", "0", "--limit", "0"]).is_ok());
        let error = Args::try_parse_from(["es", "tail", "--last", "x"]).unwrap_err();
        assert!(error.to_string().contains("not a whole number"), "{error}");
    }

    #[test]
    fn failures_takes_a_name_or_an_action() {
        let args = Args::try_parse_from(["es", "failures", "balances"]).unwrap();
        assert!(
            matches!(args.command, Command::Failures { name: Some(n), action: None, .. } if n == "balances")
        );
        let args =
            Args::try_parse_from(["es", "failures", "discard", "balances", "--all"]).unwrap();
        assert!(matches!(
            args.command,
            Command::Failures {
                action: Some(FailuresAction::Discard { all: true, .. }),
                ..
            }
        ));
        assert!(Args::try_parse_from(["es", "failures", "retry", "balances"]).is_err());
    }
}
