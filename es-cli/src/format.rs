//! How events, times and durations are printed.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use es_store::PersistedEvent;
use serde::Serialize;
use serde_json::value::RawValue;

/// `1h 5m`, `3m 2s`, `4.2s`, `850ms`: two units at most.
pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..=9 => format!("{:.1}s", d.as_secs_f64()),
        10..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// How long ago `at` was (0 for a time in the future: clocks differ).
pub(crate) fn age(at: DateTime<Utc>) -> Duration {
    (Utc::now() - at).to_std().unwrap_or_default()
}

/// RFC 3339 with microseconds, as stored.
pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn id(id: Option<uuid::Uuid>) -> String {
    id.map_or_else(|| "-".to_owned(), |id| id.to_string())
}

/// An event as `--json` prints it: every stored column, the payload and
/// metadata as the JSON they are.
#[derive(Serialize)]
pub(crate) struct EventJson<'a> {
    global_position: i64,
    bounded_context: &'a str,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    aggregate_version: i64,
    event_id: uuid::Uuid,
    event_type: &'a str,
    event_version: i32,
    created_at: String,
    payload: &'a RawValue,
    metadata: &'a RawValue,
    correlation_id: Option<uuid::Uuid>,
    causation_id: Option<uuid::Uuid>,
    trace_id: Option<&'a str>,
}

impl<'a> EventJson<'a> {
    pub(crate) fn of(event: &'a PersistedEvent) -> Self {
        Self {
            global_position: event.global_position,
            bounded_context: &event.bounded_context,
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            aggregate_version: event.aggregate_version,
            event_id: event.event_id,
            event_type: &event.event_type,
            event_version: event.event_version,
            created_at: time(event.created_at),
            payload: &event.payload,
            metadata: &event.metadata,
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            trace_id: event.trace_id.as_deref(),
        }
    }
}

/// Writes `value` as one line of JSON.
pub(crate) fn json_line(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// One event of a stream, as `es stream` prints it:
///
/// ```text
/// version 2  position 7  2025-06-01T12:00:00.123456Z  Deposited (schema 1)
///     payload   {"amount":100}
///     ids       event 0197...  correlation -  causation -  trace -
/// ```
pub(crate) fn stream_event(out: &mut impl Write, event: &PersistedEvent) -> std::io::Result<()> {
    writeln!(
        out,
        "version {}  position {}  {}  {} (schema {})",
        event.aggregate_version,
        event.global_position,
        time(event.created_at),
        event.event_type,
        event.event_version
    )?;
    writeln!(out, "    payload   {}", event.payload.get())?;
    if event.metadata.get() != "{}" {
        writeln!(out, "    metadata  {}", event.metadata.get())?;
    }
    writeln!(
        out,
        "    ids       event {}  correlation {}  causation {}  trace {}",
        event.event_id,
        id(event.correlation_id),
        id(event.causation_id),
        event.trace_id.as_deref().unwrap_or("-")
    )
}

/// One event of the feed, as `es tail` prints it, on one line:
///
/// ```text
/// #7  2025-06-01T12:00:00.123456Z  Billing/Account/alice v2  Deposited (schema 1)  {"amount":100}
/// ```
pub(crate) fn feed_event(out: &mut impl Write, event: &PersistedEvent) -> std::io::Result<()> {
    writeln!(
        out,
        "#{}  {}  {}/{}/{} v{}  {} (schema {})  {}",
        event.global_position,
        time(event.created_at),
        event.bounded_context,
        event.aggregate_type,
        event.aggregate_id,
        event.aggregate_version,
        event.event_type,
        event.event_version,
        event.payload.get()
    )
}

/// Text on one line: newlines shown as `\n`.
pub(crate) fn one_line(text: &str) -> String {
    text.replace('\r', "\\r").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(duration(Duration::from_secs(182)), "3m 2s");
        assert_eq!(duration(Duration::from_secs(3900)), "1h 5m");
        assert_eq!(duration(Duration::from_secs(2 * 86_400 + 7200)), "2d 2h");
    }
}
