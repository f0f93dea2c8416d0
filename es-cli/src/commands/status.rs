//! `es status`.

use std::io::Write;

use serde::Serialize;

use super::{Ctx, table};
use crate::backend::CliStore;
use crate::error::store_error;
use crate::{Error, format};

#[derive(Serialize)]
struct Status {
    backend: &'static str,
    url: String,
    schema: Option<String>,
    events_table: String,
    events: i64,
    aggregates: i64,
    head_position: i64,
    migrations: Migrations,
    /// `None` where the backend has no listeners (only PostgreSQL does).
    listeners: Option<Vec<ListenerJson>>,
    projections: usize,
    projections_behind: usize,
    skipped_events: i64,
}

#[derive(Serialize)]
struct Migrations {
    applied: Vec<i64>,
    pending: Vec<i64>,
    /// Applied half-way (a failed run left them dirty).
    failed: Vec<i64>,
    /// Applied with another SQL than this version of es has.
    changed: Vec<i64>,
    /// Applied by a newer version of es.
    unknown: Vec<i64>,
}

#[derive(Serialize)]
struct ListenerJson {
    pid: i32,
    seen_secs_ago: f64,
    application: Option<String>,
    client: Option<String>,
    alive: bool,
}

/// `es status`.
pub(crate) async fn status<S: CliStore>(ctx: &Ctx<S>, json: bool) -> Result<(), Error> {
    let applied = ctx.require_store().await?;
    let migrator = ctx.store.sql().migrator();
    let known: Vec<_> = migrator.iter().collect();
    let migrations = Migrations {
        applied: applied
            .iter()
            .filter(|a| a.success)
            .map(|a| a.version)
            .collect(),
        pending: known
            .iter()
            .filter(|m| !applied.iter().any(|a| a.version == m.version))
            .map(|m| m.version)
            .collect(),
        failed: applied
            .iter()
            .filter(|a| !a.success)
            .map(|a| a.version)
            .collect(),
        changed: applied
            .iter()
            .filter(|a| {
                known
                    .iter()
                    .any(|m| m.version == a.version && *m.checksum != *a.checksum)
            })
            .map(|a| a.version)
            .collect(),
        unknown: applied
            .iter()
            .filter(|a| !known.iter().any(|m| m.version == a.version))
            .map(|a| a.version)
            .collect(),
    };
    let events = ctx.count_events().await?;
    let aggregates = ctx.count_aggregates().await?;
    let head = {
        let mut conn = ctx.conn().await?;
        ctx.store
            .head_position(&mut conn)
            .await
            .map_err(store_error)?
    };
    let listeners = ctx.listeners().await?;
    let (_, projections) = super::projections::gather(ctx, false).await?;
    let status = Status {
        backend: S::NAME,
        url: ctx.location.shown(),
        schema: ctx.location.names.schema.clone(),
        events_table: ctx.store.sql().events_table(),
        events,
        aggregates,
        head_position: head,
        migrations,
        listeners: listeners.map(|list| {
            list.into_iter()
                .map(|l| ListenerJson {
                    pid: l.pid,
                    seen_secs_ago: l.seen_secs_ago,
                    application: l.application,
                    client: l.client,
                    alive: l.alive,
                })
                .collect()
        }),
        projections: projections.len(),
        projections_behind: projections.iter().filter(|p| p.lag > 0).count(),
        skipped_events: projections.iter().map(|p| p.failures).sum(),
    };
    let mut out = std::io::stdout();
    if json {
        format::json_line(&mut out, &status)?;
        return Ok(());
    }
    let m = &status.migrations;
    let mut migrations = format!("{} applied, {} pending", m.applied.len(), m.pending.len());
    for (what, versions) in [
        ("failed half-way (run `es migrate` again)", &m.failed),
        ("changed since applied", &m.changed),
        ("unknown to this es (applied by a newer one)", &m.unknown),
    ] {
        if !versions.is_empty() {
            let list: Vec<String> = versions.iter().map(i64::to_string).collect();
            migrations.push_str(&format!("; {what}: {}", list.join(", ")));
        }
    }
    if !m.pending.is_empty() {
        migrations.push_str(" (run `es migrate`)");
    }
    let listeners = match &status.listeners {
        None => format!("- ({} has no notifications: followers poll)", S::NAME),
        Some(list) if list.is_empty() => {
            "none (appends send no notifications; processors poll)".to_owned()
        }
        Some(list) => {
            let each: Vec<String> = list
                .iter()
                .map(|l| {
                    let mut about = vec![format!("pid {}", l.pid)];
                    about.extend(l.application.clone());
                    about.extend(l.client.clone());
                    if !l.alive {
                        about.push("gone".into());
                    }
                    format!(
                        "{}, seen {} ago",
                        about.join(" "),
                        format::duration(std::time::Duration::from_secs_f64(
                            l.seen_secs_ago.max(0.0)
                        ))
                    )
                })
                .collect();
            format!("{} ({})", list.len(), each.join("; "))
        }
    };
    let mut store = format!("{} at {}", status.backend, status.url);
    if let Some(schema) = &status.schema {
        store.push_str(&format!(", schema \"{schema}\""));
    }
    let rows = vec![
        vec!["store".to_owned(), store],
        vec!["events table".to_owned(), status.events_table.clone()],
        vec!["events".to_owned(), status.events.to_string()],
        vec!["aggregates".to_owned(), status.aggregates.to_string()],
        vec!["head position".to_owned(), status.head_position.to_string()],
        vec!["migrations".to_owned(), migrations],
        vec!["listeners".to_owned(), listeners],
        vec![
            "projections".to_owned(),
            format!(
                "{} ({} behind; `es projections` for details)",
                status.projections, status.projections_behind
            ),
        ],
        vec![
            "skipped events".to_owned(),
            status.skipped_events.to_string(),
        ],
    ];
    out.write_all(table(&rows).as_bytes())?;
    Ok(())
}
