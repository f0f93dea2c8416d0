//! `es projections`: the list, `reset` and `rebuild`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use es_store::{CheckpointHolder, EventFilter, Partition, ProjectionVersion};
use serde::Serialize;

use super::{Ctx, ago, confirm, shutdown, table};
use crate::backend::CliStore;
use crate::error::{db_error, projection_error, store_error};
use crate::progress::Progress;
use crate::{Error, format};

/// One checkpoint of a projection.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartitionInfo {
    /// The checkpoint's name: the projection's, or `name#i/n`.
    pub(crate) key: String,
    /// `i/n` for a partitioned projection.
    pub(crate) partition: Option<String>,
    pub(crate) checkpoint: i64,
    /// Head position minus checkpoint.
    pub(crate) lag: i64,
    /// When the oldest event after the checkpoint was appended.
    pub(crate) oldest_unhandled_at: Option<DateTime<Utc>>,
    /// Its age, in seconds.
    pub(crate) oldest_unhandled_age_secs: Option<f64>,
    /// `free`, `claimed` or `unknown`.
    pub(crate) claim: &'static str,
    /// Who holds the claim, where the backend tells.
    pub(crate) holder: Option<String>,
}

/// A projection, as the list shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProjectionInfo {
    pub(crate) name: String,
    /// Whether this binary has its code (the embedded CLI).
    pub(crate) registered: bool,
    pub(crate) head: i64,
    /// The largest lag of its partitions.
    pub(crate) lag: i64,
    pub(crate) partitions: Vec<PartitionInfo>,
    /// Skipped events recorded.
    pub(crate) failures: i64,
    /// Its version (`name@vN` for versions above 1).
    pub(crate) version: u32,
    /// The version's state, when it is recorded: `active`, `catching_up`
    /// (built beside the active one) or `superseded` (waiting to be
    /// retired).
    pub(crate) state: Option<String>,
    /// Whether it declares side effects (as its processor recorded it, or
    /// its code says in the embedded CLI): `reset` and `rebuild` refuse it
    /// without `--force`.
    pub(crate) side_effects: bool,
    /// When a running worker of the version last recorded itself.
    pub(crate) worker_seen_at: Option<DateTime<Utc>>,
}

/// A projection's name and version from its checkpoints' name: `name@vN`
/// is version N of `name` (the names `Projection::version` gives),
/// anything else version 1.
pub(crate) fn split_version(name: &str) -> (&str, u32) {
    if let Some((base, version)) = name.rsplit_once("@v")
        && let Ok(version) = version.parse::<u32>()
        && version > 1
    {
        return (base, version);
    }
    (name, 1)
}

/// A checkpoint name split into the projection and its partition
/// (`name#i/n`, the names `ProjectionProcessor::with_partitions` gives).
pub(crate) fn split_key(key: &str) -> (&str, Option<(u32, u32)>) {
    if let Some((name, rest)) = key.rsplit_once('#')
        && let Some((index, count)) = rest.split_once('/')
        && let (Ok(index), Ok(count)) = (index.parse::<u32>(), count.parse::<u32>())
        && index < count
    {
        return (name, Some((index, count)));
    }
    (key, None)
}

/// The checkpoint names of a projection with `count` partitions.
fn keys_for(name: &str, count: usize) -> Vec<String> {
    if count <= 1 {
        return vec![name.to_owned()];
    }
    (0..count).map(|i| format!("{name}#{i}/{count}")).collect()
}

/// The checkpoints of every projection: those in the checkpoints table,
/// and those registered in this binary (with their own partition count).
async fn checkpoints<S: CliStore>(
    ctx: &Ctx<S>,
) -> Result<BTreeMap<String, (bool, Vec<(String, i64)>)>, Error> {
    let rows = ctx.checkpoint_rows().await?;
    let mut projections: BTreeMap<String, (bool, Vec<(String, i64)>)> = BTreeMap::new();
    for (key, position) in rows {
        let (name, _) = split_key(&key);
        projections
            .entry(name.to_owned())
            .or_default()
            .1
            .push((key.clone(), position));
    }
    for registered in &ctx.registered {
        let status = registered.status().await.map_err(projection_error)?;
        let keys = keys_for(registered.name(), status.partitions.len());
        projections.insert(
            registered.name().to_owned(),
            (true, keys.into_iter().zip(status.partitions).collect()),
        );
    }
    Ok(projections)
}

/// Every projection with its checkpoints, lag and (when `claims`) who
/// holds each checkpoint.
pub(crate) async fn gather<S: CliStore>(
    ctx: &Ctx<S>,
    claims: bool,
) -> Result<(i64, Vec<ProjectionInfo>), Error> {
    let mut projections = checkpoints(ctx).await?;
    let failures = ctx.failure_counts().await?;
    for (name, _) in &failures {
        projections.entry(name.clone()).or_default();
    }
    let mut conn = ctx.conn().await?;
    let head = ctx
        .store
        .head_position(&mut conn)
        .await
        .map_err(store_error)?;
    let mut list = Vec::new();
    let mut versions: BTreeMap<String, Vec<es_store::ProjectionVersion>> = BTreeMap::new();
    for (name, (registered, keys)) in projections {
        let (base, version) = split_version(&name);
        if !versions.contains_key(base) {
            let recorded = ctx
                .store
                .projection_versions(&mut conn, base)
                .await
                .map_err(store_error)?;
            versions.insert(base.to_owned(), recorded);
        }
        let record = versions[base].iter().find(|v| v.version == version);
        let state = record.map(|v| v.state.as_str().to_owned());
        let side_effects = record.is_some_and(|v| v.side_effects)
            || ctx.registered(&name).is_some_and(|r| r.has_side_effects());
        let worker_seen_at = record.and_then(|v| v.worker_seen_at);
        let filter = ctx
            .registered(&name)
            .map_or_else(EventFilter::all, |r| r.filter());
        let mut partitions = Vec::new();
        for (key, checkpoint) in keys {
            let (_, partition) = split_key(&key);
            let lag = (head - checkpoint).max(0);
            let oldest = if lag > 0 {
                let mut filter = filter.clone();
                if let Some((index, count)) = partition {
                    filter = filter.partition(Partition::new(index, count).map_err(Error::from)?);
                }
                let page = ctx
                    .store
                    .read_filtered(&mut conn, checkpoint, 1, &filter)
                    .await
                    .map_err(store_error)?;
                page.events.first().map(|e| e.created_at)
            } else {
                None
            };
            let claim = if claims {
                ctx.store
                    .checkpoint_holder(&mut conn, &key)
                    .await
                    .map_err(store_error)?
            } else {
                CheckpointHolder::Unknown
            };
            let (claim, holder) = match claim {
                CheckpointHolder::Free => ("free", None),
                CheckpointHolder::Held { by } => ("claimed", by),
                _ => ("unknown", None),
            };
            partitions.push(PartitionInfo {
                key,
                partition: partition.map(|(i, n)| format!("{i}/{n}")),
                checkpoint,
                lag,
                oldest_unhandled_at: oldest,
                oldest_unhandled_age_secs: oldest.map(|at| format::age(at).as_secs_f64()),
                claim,
                holder,
            });
        }
        let failures = failures
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, count)| *count);
        list.push(ProjectionInfo {
            lag: partitions.iter().map(|p| p.lag).max().unwrap_or(0),
            name,
            registered,
            head,
            partitions,
            failures,
            version,
            state,
            side_effects,
            worker_seen_at,
        });
    }
    Ok((head, list))
}

/// `es projections`.
pub(crate) async fn list<S: CliStore>(ctx: &Ctx<S>, json: bool) -> Result<(), Error> {
    ctx.require_store().await?;
    let (head, projections) = gather(ctx, true).await?;
    let mut out = std::io::stdout();
    if json {
        for projection in &projections {
            format::json_line(&mut out, projection)?;
        }
        return Ok(());
    }
    if projections.is_empty() {
        writeln!(
            out,
            "no projections: the checkpoints table is empty (head position {head})"
        )?;
        return Ok(());
    }
    let mut rows = vec![
        [
            "PROJECTION",
            "PARTITION",
            "CHECKPOINT",
            "LAG",
            "OLDEST UNHANDLED",
            "CLAIM",
            "FAILURES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for projection in &projections {
        let mut name = if projection.registered || !ctx.embedded {
            projection.name.clone()
        } else {
            format!("{} (not registered here)", projection.name)
        };
        if let Some(state) = &projection.state {
            name.push_str(&format!(
                " (v{}, {})",
                projection.version,
                state.replace('_', " ")
            ));
        }
        if projection.side_effects {
            name.push_str(" [side effects]");
        }
        if projection.partitions.is_empty() {
            rows.push(vec![
                name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                projection.failures.to_string(),
            ]);
        }
        for (i, partition) in projection.partitions.iter().enumerate() {
            let claim = match (&partition.holder, partition.claim) {
                (Some(holder), _) => format!("claimed by {holder}"),
                (None, "unknown") => "-".to_owned(),
                (None, claim) => claim.to_owned(),
            };
            rows.push(vec![
                if i == 0 { name.clone() } else { String::new() },
                partition.partition.clone().unwrap_or_else(|| "-".into()),
                partition.checkpoint.to_string(),
                partition.lag.to_string(),
                ago(partition.oldest_unhandled_at),
                claim,
                if i == 0 {
                    projection.failures.to_string()
                } else {
                    String::new()
                },
            ]);
        }
    }
    let mut text = format!("head position {head}\n\n");
    text.push_str(&table(&rows));
    if projections
        .iter()
        .any(|p| p.partitions.iter().any(|c| c.claim == "unknown"))
    {
        text.push_str(
            "\n(a claim lasts one batch; SQLite's is the database's write lock, which cannot be \
             probed without waiting)\n",
        );
    }
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// The checkpoint names of projection `name`, or [`Error::NotFound`].
async fn keys_of<S: CliStore>(ctx: &Ctx<S>, name: &str) -> Result<Vec<(String, i64)>, Error> {
    let mut projections = checkpoints(ctx).await?;
    match projections.remove(name) {
        Some((_, keys)) if !keys.is_empty() => Ok(keys),
        _ => {
            let known: Vec<String> = projections.into_keys().collect();
            Err(Error::NotFound(format!(
                "no projection `{name}` in {}{}",
                ctx.describe(),
                if known.is_empty() {
                    String::from(": no projection has a checkpoint yet")
                } else {
                    format!(" (known: {})", known.join(", "))
                }
            )))
        }
    }
}

/// Rewinds every checkpoint of `name` to 0, claiming each first so that no
/// processor is midway through a batch; in the embedded CLI, also clears
/// the read model (`Projection::reset`) in the same transaction.
async fn rewind<S: CliStore>(
    ctx: &Ctx<S>,
    name: &str,
    keys: &[(String, i64)],
) -> Result<(), Error> {
    let mut tx = ctx
        .store
        .begin_write(&ctx.pool)
        .await
        .map_err(store_error)?;
    for (key, _) in keys {
        let started = Instant::now();
        let mut told = false;
        loop {
            let claimed = tokio::select! {
                claimed = ctx.store.claim_checkpoint(&mut tx, key) => claimed.map_err(store_error)?,
                () = shutdown() => return Err(Error::Interrupted(": nothing was reset".into())),
            };
            if claimed.is_some() {
                break;
            }
            if !told && started.elapsed() > Duration::from_secs(2) {
                eprintln!("waiting for the processor holding `{key}` to finish its batch");
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ctx.store
            .update_checkpoint(&mut tx, key, 0)
            .await
            .map_err(store_error)?;
    }
    // As `ProjectionProcessor::rebuild` does: the events up to the head are
    // replayed (`Replay`), so that handlers that hold back side effects for
    // replayed events do so. (The claims held keep a switch of versions
    // out meanwhile.)
    let (base, version) = split_version(name);
    let recorded = ctx
        .store
        .projection_versions(&mut tx, base)
        .await
        .map_err(store_error)?
        .into_iter()
        .find(|v| v.version == version);
    if let Some(mut record) = recorded {
        record.replay_until = ctx
            .store
            .head_position(&mut tx)
            .await
            .map_err(store_error)?;
        ctx.store
            .update_projection_version(&mut tx, &record)
            .await
            .map_err(store_error)?;
    }
    if let Some(registered) = ctx.registered(name) {
        registered.reset_read_model(&mut tx).await.map_err(|e| {
            Error::Failed(format!("could not reset the read model of `{name}`: {e}"))
        })?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(())
}

fn positions(keys: &[(String, i64)]) -> String {
    keys.iter()
        .map(|(_, p)| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

const NOT_CLEARED: &str = "its read model is not cleared (this es binary does not have the \
    projection's code): the handler sees every event again, so it must tolerate that, or clear \
    the read model yourself first; a service's embedded CLI runs Projection::reset";

/// The recorded version of the projection listed as `name` (`name@vN`
/// for version N).
async fn version_record<S: CliStore>(
    ctx: &Ctx<S>,
    name: &str,
) -> Result<Option<ProjectionVersion>, Error> {
    let (base, version) = split_version(name);
    let mut conn = ctx.conn().await?;
    Ok(ctx
        .store
        .projection_versions(&mut conn, base)
        .await
        .map_err(store_error)?
        .into_iter()
        .find(|v| v.version == version))
}

/// Refuses, before anything is changed, to `action` (reset or rebuild) a
/// projection that declares side effects (its code, in the embedded CLI,
/// or what its processor recorded with its version), unless forced; when
/// forced, says what is skipped.
async fn check_side_effects<S: CliStore>(
    ctx: &Ctx<S>,
    name: &str,
    action: &'static str,
    force: bool,
) -> Result<(), Error> {
    let declared = ctx.registered(name).is_some_and(|r| r.has_side_effects())
        || version_record(ctx, name)
            .await?
            .is_some_and(|record| record.side_effects);
    if !declared {
        return Ok(());
    }
    if !force {
        return Err(Error::SideEffects {
            projection: name.to_owned(),
            action,
        });
    }
    eprintln!(
        "es: --force: `{name}` declares side effects; the {action} goes on, and they are done \
         again for every event it replays"
    );
    Ok(())
}

/// `es projections reset NAME`.
pub(crate) async fn reset<S: CliStore>(
    ctx: &Ctx<S>,
    name: &str,
    yes: bool,
    force: bool,
) -> Result<(), Error> {
    ctx.require_store().await?;
    let keys = keys_of(ctx, name).await?;
    check_side_effects(ctx, name, "reset", force).await?;
    let registered = ctx.registered(name).is_some();
    let question = if registered {
        format!(
            "Clear the read model of `{name}` and rewind its {} checkpoint(s) to 0?",
            keys.len()
        )
    } else {
        format!(
            "Rewind the {} checkpoint(s) of `{name}` to 0? Note: {NOT_CLEARED}.",
            keys.len()
        )
    };
    confirm(yes, &question, &format!("reset `{name}`"))?;
    rewind(ctx, name, &keys).await?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "reset `{name}`: {} checkpoint(s) rewound to 0 (they were at {}){}",
        keys.len(),
        positions(&keys),
        if registered {
            ", read model cleared"
        } else {
            ""
        }
    )?;
    if !registered {
        eprintln!("note: {NOT_CLEARED}; its workers replay the feed from the start");
    }
    Ok(())
}

/// How far a rebuild is: the checkpoints' mean progress towards `target`.
fn done(checkpoints: &[i64], target: i64) -> u64 {
    if checkpoints.is_empty() {
        return 0;
    }
    let sum: i64 = checkpoints.iter().map(|c| (*c).clamp(0, target)).sum();
    (sum / checkpoints.len() as i64) as u64
}

/// What `es projections rebuild` was asked for.
pub(crate) struct RebuildOptions {
    /// Confirmed already.
    pub(crate) yes: bool,
    /// Rebuild a projection that declares side effects.
    pub(crate) force: bool,
    /// How long the whole rebuild may take.
    pub(crate) timeout: Option<Duration>,
    /// How long to wait for a worker (plain `es`): before the rewind, for
    /// one to run; after it, for its progress.
    pub(crate) worker_timeout: Duration,
}

/// How recently a worker must have recorded itself to count as running:
/// a few of its heartbeats.
fn worker_window() -> Duration {
    ProjectionVersion::WORKER_HEARTBEAT * 3
}

/// Whether a worker recorded itself at `seen` recently (a time ahead of
/// this clock counts: clocks differ).
fn is_recent(seen: Option<DateTime<Utc>>) -> bool {
    seen.is_some_and(|at| format::age(at) <= worker_window())
}

/// Waits, up to `bound`, for a running worker of `name` (one that recorded
/// itself recently, or does so while this waits). Changes nothing.
async fn wait_for_worker<S: CliStore>(
    ctx: &Ctx<S>,
    name: &str,
    bound: Duration,
) -> Result<(), Error> {
    let started = Instant::now();
    let first = version_record(ctx, name)
        .await?
        .and_then(|r| r.worker_seen_at);
    let mut seen = first;
    let mut told = false;
    loop {
        if is_recent(seen) || seen != first {
            return Ok(());
        }
        let left = bound.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(Error::NoWorker {
                projection: name.to_owned(),
                waited: bound,
            });
        }
        if !told {
            eprintln!(
                "waiting up to {} for a worker of `{name}` to run; nothing is changed until one \
                 does",
                format::duration(bound)
            );
            told = true;
        }
        tokio::select! {
            () = tokio::time::sleep(left.min(Duration::from_millis(200))) => {}
            () = shutdown() => return Err(Error::Interrupted(": nothing was changed".into())),
        }
        seen = version_record(ctx, name)
            .await?
            .and_then(|r| r.worker_seen_at);
    }
}

/// `es projections rebuild NAME`.
pub(crate) async fn rebuild<S: CliStore>(
    ctx: &Ctx<S>,
    name: &str,
    options: RebuildOptions,
) -> Result<(), Error> {
    let started = Instant::now();
    let RebuildOptions {
        yes,
        force,
        timeout,
        worker_timeout,
    } = options;
    ctx.require_store().await?;
    let keys = keys_of(ctx, name).await?;
    check_side_effects(ctx, name, "rebuild", force).await?;
    match ctx.registered(name).cloned() {
        Some(registered) => {
            confirm(
                yes,
                &format!("Clear the read model of `{name}` and replay every event into it?"),
                &format!("rebuild `{name}`"),
            )?;
            let head = {
                let mut conn = ctx.conn().await?;
                ctx.store
                    .head_position(&mut conn)
                    .await
                    .map_err(store_error)?
            };
            let mut progress = Progress::new(format!("rebuild {name}"), head as u64);
            let task = {
                let registered = registered.clone();
                tokio::spawn(async move { registered.rebuild().await })
            };
            tokio::pin!(task);
            let deadline = timeout.and_then(|t| started.checked_add(t));
            let caught = loop {
                tokio::select! {
                    joined = &mut task => break joined,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    () = shutdown() => {
                        task.abort();
                        return Err(Error::Interrupted(format!(
                            ": `{name}` was cleared and is partly rebuilt; its workers (or another \
                             rebuild) carry on from its checkpoints"
                        )));
                    }
                }
                if deadline.is_some_and(|d| Instant::now() > d) {
                    task.abort();
                    return Err(Error::Failed(format!(
                        "`{name}` was not rebuilt within the timeout; it is partly rebuilt, and \
                         its workers carry on from its checkpoints"
                    )));
                }
                if let Ok(status) = registered.status().await {
                    progress.set(done(&status.partitions, head));
                }
            };
            let caught = caught
                .map_err(|e| Error::Failed(format!("the rebuild of `{name}` stopped: {e}")))?
                .map_err(projection_error)?;
            progress.set(head as u64);
            let secs = progress.elapsed().as_secs_f64().max(0.001);
            let elapsed = format::duration(progress.elapsed());
            progress.finish(&format!(
                "rebuilt `{name}`: {} events handled in {elapsed} ({:.0} events/s){}",
                caught.events,
                caught.events as f64 / secs,
                if caught.skipped > 0 {
                    format!(", {} skipped (see `es failures {name}`)", caught.skipped)
                } else {
                    String::new()
                }
            ));
            Ok(())
        }
        None => {
            confirm(
                yes,
                &format!(
                    "Rewind `{name}` to 0 and follow its workers as they replay the feed? Note: \
                     {NOT_CLEARED}."
                ),
                &format!("rebuild `{name}`"),
            )?;
            // Only the projection's workers replay it: with none running,
            // rewinding it would leave it rewound, and nothing would follow.
            let bound = timeout.map_or(worker_timeout, |t| t.min(worker_timeout));
            wait_for_worker(ctx, name, bound).await?;
            rewind(ctx, name, &keys).await?;
            eprintln!(
                "rewound the {} checkpoint(s) of `{name}` to 0; {NOT_CLEARED}",
                keys.len()
            );
            follow_rebuild(ctx, name, &keys, started, timeout, worker_timeout).await
        }
    }
}

/// Follows the checkpoints of `name` until they reach the head position
/// of when the rebuild began: the projection's own workers do the work.
async fn follow_rebuild<S: CliStore>(
    ctx: &Ctx<S>,
    name: &str,
    keys: &[(String, i64)],
    started: Instant,
    timeout: Option<Duration>,
    worker_timeout: Duration,
) -> Result<(), Error> {
    let target = {
        let mut conn = ctx.conn().await?;
        ctx.store
            .head_position(&mut conn)
            .await
            .map_err(store_error)?
    };
    let mut progress = Progress::new(format!("rebuild {name}"), target as u64);
    let (mut last, mut moved_at) = (0u64, Instant::now());
    loop {
        let rows = ctx.checkpoint_rows().await?;
        let checkpoints: Vec<i64> = keys
            .iter()
            .map(|(key, _)| {
                rows.iter()
                    .find(|(k, _)| k == key)
                    .map_or(0, |(_, position)| *position)
            })
            .collect();
        let now_done = done(&checkpoints, target);
        progress.set(now_done);
        if checkpoints.iter().all(|c| *c >= target) {
            progress.finish(&format!(
                "rebuilt `{name}`: its workers caught up with position {target} in {}",
                format::duration(started.elapsed())
            ));
            return Ok(());
        }
        if now_done != last {
            (last, moved_at) = (now_done, Instant::now());
            progress.note(None);
        } else if moved_at.elapsed() > Duration::from_secs(5) {
            progress.note(Some(format!(
                "no progress for {}: are the projection's workers running?",
                format::duration(moved_at.elapsed())
            )));
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            return Err(Error::Failed(format!(
                "`{name}` did not catch up within {} (at {now_done} of {target}): are its workers \
                 running? It stays rewound: its workers go on replaying the feed",
                format::duration(started.elapsed())
            )));
        }
        if moved_at.elapsed() > worker_timeout {
            return Err(Error::Failed(format!(
                "`{name}` made no progress for {} (at {now_done} of {target}): have its workers \
                 stopped, or is one stuck on an event? It stays rewound: its workers replay the \
                 feed from there when they run",
                format::duration(moved_at.elapsed())
            )));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = shutdown() => return Err(Error::Interrupted(format!(
                ": `{name}` stays rewound, and its workers carry on replaying"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_split_into_projection_and_partition() {
        assert_eq!(split_key("balances"), ("balances", None));
        assert_eq!(split_key("audit#3/8"), ("audit", Some((3, 8))));
        assert_eq!(split_key("odd#name"), ("odd#name", None));
        assert_eq!(split_key("x#9/8"), ("x#9/8", None));
        assert_eq!(keys_for("audit", 2), ["audit#0/2", "audit#1/2"]);
    }

    #[test]
    fn progress_is_the_mean_of_the_partitions() {
        assert_eq!(done(&[100, 50], 100), 75);
        assert_eq!(done(&[200], 100), 100);
        assert_eq!(done(&[], 100), 0);
    }
}
