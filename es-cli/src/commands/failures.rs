//! `es failures`: the events projections skipped, retried or discarded.

use std::io::Write;

use es_store::ProjectionFailure;
use serde::Serialize;

use super::projections::split_key;
use super::{Ctx, table};
use crate::backend::CliStore;
use crate::error::{db_error, store_error};
use crate::{Error, format};

#[derive(Serialize)]
struct FailureJson<'a> {
    projection: &'a str,
    global_position: i64,
    event_id: uuid::Uuid,
    event_type: &'a str,
    error: &'a str,
    failed_at: String,
}

/// The names of the projections known to the store: with a checkpoint,
/// with failures, or registered here.
async fn known<S: CliStore>(ctx: &Ctx<S>) -> Result<Vec<String>, Error> {
    let mut names: Vec<String> = ctx
        .checkpoint_rows()
        .await?
        .into_iter()
        .map(|(key, _)| split_key(&key).0.to_owned())
        .collect();
    names.extend(
        ctx.failure_counts()
            .await?
            .into_iter()
            .map(|(name, _)| name),
    );
    names.extend(ctx.registered.iter().map(|r| r.name().to_owned()));
    names.sort();
    names.dedup();
    Ok(names)
}

async fn require_projection<S: CliStore>(ctx: &Ctx<S>, name: &str) -> Result<(), Error> {
    let known = known(ctx).await?;
    if known.iter().any(|n| n == name) {
        return Ok(());
    }
    Err(Error::NotFound(format!(
        "no projection `{name}` in {}{}",
        ctx.describe(),
        if known.is_empty() {
            String::new()
        } else {
            format!(" (known: {})", known.join(", "))
        }
    )))
}

async fn failures_of<S: CliStore>(
    ctx: &Ctx<S>,
    name: &str,
) -> Result<Vec<ProjectionFailure>, Error> {
    let mut conn = ctx.conn().await?;
    ctx.store
        .failures(&mut conn, name)
        .await
        .map_err(|e| match e {
            es_store::Error::Database(_) | es_store::Error::PoolTimedOut { .. } => store_error(e),
            other => Error::Usage(other.to_string()),
        })
}

/// `es failures [NAME]`.
pub(crate) async fn list<S: CliStore>(
    ctx: &Ctx<S>,
    name: Option<&str>,
    json: bool,
) -> Result<(), Error> {
    ctx.require_store().await?;
    let names = match name {
        Some(name) => {
            require_projection(ctx, name).await?;
            vec![name.to_owned()]
        }
        None => ctx
            .failure_counts()
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
    };
    let mut rows = vec![
        [
            "PROJECTION",
            "POSITION",
            "EVENT TYPE",
            "EVENT ID",
            "FAILED AT",
            "ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut out = std::io::stdout();
    for name in &names {
        for failure in failures_of(ctx, name).await? {
            if json {
                format::json_line(
                    &mut out,
                    &FailureJson {
                        projection: name,
                        global_position: failure.global_position,
                        event_id: failure.event_id,
                        event_type: &failure.event_type,
                        error: &failure.error,
                        failed_at: format::time(failure.failed_at),
                    },
                )?;
            } else {
                rows.push(vec![
                    name.clone(),
                    failure.global_position.to_string(),
                    failure.event_type.clone(),
                    failure.event_id.to_string(),
                    format::time(failure.failed_at),
                    format::one_line(&failure.error),
                ]);
            }
        }
    }
    if json {
        return Ok(());
    }
    if rows.len() == 1 {
        match name {
            Some(name) => writeln!(out, "no skipped events for `{name}`")?,
            None => writeln!(out, "no skipped events")?,
        }
        return Ok(());
    }
    out.write_all(table(&rows).as_bytes())?;
    Ok(())
}

/// `es failures discard NAME POSITION|--all`.
pub(crate) async fn discard<S: CliStore>(
    ctx: &Ctx<S>,
    name: &str,
    position: Option<i64>,
) -> Result<(), Error> {
    ctx.require_store().await?;
    require_projection(ctx, name).await?;
    let mut conn = ctx.conn().await?;
    let removed = ctx
        .store
        .delete_failures(&mut conn, name, position)
        .await
        .map_err(store_error)?;
    let mut out = std::io::stdout();
    match position {
        Some(position) if removed == 0 => Err(Error::NotFound(format!(
            "`{name}` has no skipped event at position {position}"
        ))),
        Some(position) => {
            writeln!(
                out,
                "discarded the skipped event of `{name}` at position {position}"
            )?;
            Ok(())
        }
        None => {
            writeln!(out, "discarded {removed} skipped event(s) of `{name}`")?;
            Ok(())
        }
    }
}

/// `es failures retry NAME POSITION|--all`: handles each skipped event
/// again and, when the handler succeeds, removes its record in the same
/// transaction. Needs the projection's code: the embedded CLI.
pub(crate) async fn retry<S: CliStore>(
    ctx: &Ctx<S>,
    name: &str,
    position: Option<i64>,
) -> Result<(), Error> {
    ctx.require_store().await?;
    if !ctx.embedded {
        return Err(Error::NeedsEmbedded(format!(
            "retrying needs the handler of `{name}`, which this es binary does not have: run \
             `failures retry` from the service's own binary, which embeds es_cli with its \
             projections registered (Cli::projection), or forget the events with \
             `es failures discard {name} ...`"
        )));
    }
    let Some(registered) = ctx.registered(name).cloned() else {
        let names: Vec<&str> = ctx.registered.iter().map(|r| r.name()).collect();
        return Err(Error::NotFound(format!(
            "`{name}` is not registered in this CLI for {} (registered: {})",
            S::NAME,
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    let failures: Vec<ProjectionFailure> = failures_of(ctx, name)
        .await?
        .into_iter()
        .filter(|f| position.is_none_or(|p| p == f.global_position))
        .collect();
    let mut out = std::io::stdout();
    if failures.is_empty() {
        return match position {
            Some(position) => Err(Error::NotFound(format!(
                "`{name}` has no skipped event at position {position}"
            ))),
            None => {
                writeln!(out, "no skipped events for `{name}`")?;
                Ok(())
            }
        };
    }
    let mut failed_again = 0;
    for failure in &failures {
        let at = failure.global_position;
        let event = {
            let mut conn = ctx.conn().await?;
            ctx.store
                .events_by_id(&mut conn, &[failure.event_id])
                .await
                .map_err(store_error)?
                .pop()
        };
        let Some(event) = event else {
            writeln!(
                out,
                "position {at}: the event {} is not in the store",
                failure.event_id
            )?;
            failed_again += 1;
            continue;
        };
        let mut tx = ctx
            .store
            .begin_write(&ctx.pool)
            .await
            .map_err(store_error)?;
        match registered.handle(&mut tx, &event).await {
            Ok(()) => {
                ctx.store
                    .delete_failures(&mut tx, name, Some(at))
                    .await
                    .map_err(store_error)?;
                tx.commit().await.map_err(db_error)?;
                writeln!(out, "position {at}: handled, its failure record removed")?;
            }
            Err(error) => {
                tx.rollback().await.map_err(db_error)?;
                let text = error.to_string();
                let mut tx = ctx
                    .store
                    .begin_write(&ctx.pool)
                    .await
                    .map_err(store_error)?;
                ctx.store
                    .record_failure(&mut tx, name, &event, &text)
                    .await
                    .map_err(store_error)?;
                tx.commit().await.map_err(db_error)?;
                writeln!(
                    out,
                    "position {at}: failed again: {}",
                    format::one_line(&text)
                )?;
                failed_again += 1;
            }
        }
    }
    if failed_again > 0 {
        return Err(Error::Failed(format!(
            "{failed_again} of {} skipped event(s) of `{name}` failed again; they stay recorded",
            failures.len()
        )));
    }
    Ok(())
}
