//! `es stream` (one aggregate's events) and `es tail` (the global feed).

use std::ops::Bound;
use std::time::Duration;

use es_store::{EventFilter, Partition};

use super::{Ctx, shutdown};
use crate::backend::CliStore;
use crate::error::store_error;
use crate::{Error, format};

/// `es stream CONTEXT TYPE ID`.
pub(crate) async fn stream<S: CliStore>(
    ctx: &Ctx<S>,
    aggregate: (&str, &str, &str),
    from: Option<i64>,
    to: Option<i64>,
    json: bool,
) -> Result<(), Error> {
    ctx.require_store().await?;
    let versions = (
        from.map_or(Bound::Unbounded, Bound::Included),
        to.map_or(Bound::Unbounded, Bound::Included),
    );
    let mut conn = ctx.conn().await?;
    let stream = ctx
        .store
        .read_aggregate_stream(&mut conn, aggregate, versions)
        .await
        .map_err(|e| match e {
            // Bad input the store refuses (an inverted range, an empty
            // name) is the caller's.
            es_store::Error::Database(_) | es_store::Error::PoolTimedOut { .. } => store_error(e),
            other => Error::Usage(other.to_string()),
        })?;
    let (context, kind, id) = aggregate;
    if stream.events.is_empty() {
        let version = ctx
            .store
            .read_aggregate_stream(&mut conn, aggregate, ..)
            .await
            .map_err(store_error)?
            .version();
        if version == 0 {
            return Err(Error::NotFound(format!(
                "no events for {context}/{kind}/{id} in {}",
                ctx.describe()
            )));
        }
    }
    drop(conn);
    let mut out = std::io::stdout();
    if json {
        for event in &stream.events {
            format::json_line(&mut out, &format::EventJson::of(event))?;
        }
        return Ok(());
    }
    let mut text = Vec::new();
    {
        use std::io::Write;
        match (stream.events.first(), stream.events.last()) {
            (Some(first), Some(last)) => writeln!(
                text,
                "{context}/{kind}/{id}: {} event(s), versions {} to {}",
                stream.events.len(),
                first.aggregate_version,
                last.aggregate_version
            )?,
            _ => writeln!(text, "{context}/{kind}/{id}: no events in that range")?,
        }
        for event in &stream.events {
            format::stream_event(&mut text, event)?;
        }
    }
    std::io::Write::write_all(&mut out, &text)?;
    Ok(())
}

/// Parses `--filter context=A,type=B,partition=0/4` (repeatable) into a
/// filter.
pub(crate) fn parse_filter(terms: &[String]) -> Result<EventFilter, Error> {
    let mut filter = EventFilter::all();
    for term in terms.iter().flat_map(|t| t.split(',')) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let bad = |why: &str| Error::Usage(format!("bad --filter `{term}`: {why}"));
        let (key, value) = term
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE with KEY context, type or partition"))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(bad("the value is empty"));
        }
        filter = match key.trim() {
            "context" | "bounded_context" => filter.bounded_context(value),
            "type" | "aggregate_type" => filter.aggregate_type(value),
            "partition" => {
                let (index, count) = value
                    .split_once('/')
                    .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))
                    .ok_or_else(|| bad("a partition is INDEX/COUNT, e.g. 0/4"))?;
                let partition = Partition::new(index, count).map_err(|e| bad(&e.to_string()))?;
                filter.partition(partition)
            }
            _ => return Err(bad("KEY is context, type or partition")),
        };
    }
    Ok(filter)
}

/// What `es tail` was asked for.
pub(crate) struct TailOptions {
    pub(crate) from: Option<i64>,
    pub(crate) last: Option<i64>,
    pub(crate) follow: bool,
    pub(crate) filter: EventFilter,
    pub(crate) limit: Option<u64>,
    pub(crate) poll_interval: Duration,
    pub(crate) json: bool,
}

/// Events per read.
const PAGE: i64 = 500;

/// `es tail`: reads the feed as a projection does (gap-safe, filtered in
/// the database), printing each event; with `--follow`, waits for more.
pub(crate) async fn tail<S: CliStore>(ctx: &Ctx<S>, options: TailOptions) -> Result<(), Error> {
    ctx.require_store().await?;
    let mut from = match options.from {
        Some(from) => from,
        None => {
            let mut conn = ctx.conn().await?;
            let head = ctx
                .store
                .head_position(&mut conn)
                .await
                .map_err(store_error)?;
            (head - options.last.unwrap_or(10)).max(0)
        }
    };
    let mut follower = if options.follow {
        Some(ctx.store.follower(&ctx.pool, &ctx.location.names).await?)
    } else {
        None
    };
    let result = read_on(ctx, &options, &mut from, follower.as_mut()).await;
    if let Some(follower) = follower {
        follower.close().await;
    }
    result
}

async fn read_on<S: CliStore>(
    ctx: &Ctx<S>,
    options: &TailOptions,
    from: &mut i64,
    mut follower: Option<&mut crate::backend::Follower>,
) -> Result<(), Error> {
    let mut out = std::io::stdout();
    let mut printed = 0u64;
    if options.limit == Some(0) {
        return Ok(());
    }
    let mut failures = 0u32;
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        let read = async {
            let mut conn = ctx.conn().await?;
            ctx.store
                .read_filtered(&mut conn, *from, PAGE, &options.filter)
                .await
                .map_err(store_error)
        };
        let page = tokio::select! {
            page = read => page,
            () = &mut stop => return Ok(()),
        };
        let page = match page {
            Ok(page) => {
                failures = 0;
                page
            }
            // Following is long-lived: ride out a restart or a lost
            // connection, saying so.
            Err(Error::Store(error)) if options.follow && error.is_transient() && failures < 30 => {
                failures += 1;
                eprintln!("es: {error}; reading again in 1s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut stop => return Ok(()),
                }
            }
            Err(error) => return Err(error),
        };
        for event in &page.events {
            if options.json {
                format::json_line(&mut out, &format::EventJson::of(event))?;
            } else {
                format::feed_event(&mut out, event)?;
            }
            printed += 1;
            if options.limit.is_some_and(|limit| printed >= limit) {
                return Ok(());
            }
        }
        let moved = page.scanned_to > *from;
        *from = page.scanned_to.max(*from);
        if page.events.len() as i64 == PAGE || moved {
            continue;
        }
        // Caught up: nothing returned and the scan did not move.
        let Some(follower) = follower.as_deref_mut() else {
            return Ok(());
        };
        tokio::select! {
            () = follower.wait(options.poll_interval) => {}
            () = &mut stop => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        let filter =
            parse_filter(&["context=Billing,type=Account".into(), "type=Invoice".into()]).unwrap();
        assert_eq!(filter.bounded_contexts(), ["Billing"]);
        assert_eq!(filter.aggregate_types(), ["Account", "Invoice"]);
        let filter = parse_filter(&["partition=1/4".into()]).unwrap();
        assert_eq!(filter.partition_of(), Some(Partition::new(1, 4).unwrap()));
        for bad in ["Billing", "colour=red", "partition=4/4", "type="] {
            assert!(
                matches!(parse_filter(&[bad.into()]), Err(Error::Usage(_))),
                "{bad}"
            );
        }
    }
}
