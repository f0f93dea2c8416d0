//! The metrics the framework records, through the [`metrics`] facade, and
//! the names of its tracing spans.
//!
//! Nothing is recorded until the application installs a recorder (an
//! exporter, such as `metrics-exporter-prometheus`); without one each
//! measurement is a check of a global and nothing more. Every name is a
//! constant here, so that dashboards and alerts can be built from this
//! list.
//!
//! | metric | kind | labels | what it counts |
//! |---|---|---|---|
//! | [`EVENTS_APPENDED`] | counter | `bounded_context`, `aggregate_type` | events in successful appends (a batch recognised as stored before, and returned as it was, counts again) |
//! | [`APPEND_DURATION`] | histogram (seconds) | `bounded_context`, `aggregate_type`, `outcome` | one [`EventStore::append`](crate::EventStore::append) call; `outcome` is `ok`, `conflict` or `error` |
//! | [`COMMANDS`] | counter | `bounded_context`, `aggregate_type`, `outcome` | commands run by a repository, by outcome: `executed`, `replayed` (an idempotent command seen before), `rejected`, `conflict` (its attempts used up; in a unit of work, which runs the unit again, each conflict), `unavailable`, `outcome_unknown`, `failed` |
//! | [`COMMAND_DURATION`] | histogram (seconds) | `bounded_context`, `aggregate_type` | one command, retries included |
//! | [`COMMAND_CONFLICTS`] | counter | `bounded_context`, `aggregate_type` | optimistic-concurrency conflicts met by commands (each one, retried or not) |
//! | [`COMMAND_RETRIES`] | counter | `bounded_context`, `aggregate_type`, `reason` | attempts run again: `reason` is `conflict` or `transient` |
//! | [`LOAD_DURATION`] | histogram (seconds) | `bounded_context`, `aggregate_type` | reading and folding an aggregate's events (after its snapshot, if any): once per command attempt, and per load |
//! | [`UNITS`] | counter | `outcome` | units of work, by outcome: `committed`, `replayed`, `rejected`, `conflict`, `unavailable`, `outcome_unknown`, `failed` |
//! | [`UNIT_RERUNS`] | counter | `reason` | units of work run again: `conflict`, `transient`, or `stored` (a concurrent copy of the unit committed its events first) |
//! | [`PROJECTION_BATCHES`] | counter | `projection` | batches handled and committed |
//! | [`PROJECTION_EVENTS`] | counter | `projection` | events handled |
//! | [`PROJECTION_BATCH_DURATION`] | histogram (seconds) | `projection` | one batch: claim, read, handle, commit |
//! | [`PROJECTION_FAILURES`] | counter | `projection`, `kind` | failed batches: `kind` is `store` (the store, or what a handler writes to, was unavailable: retried) or `handler` (the error policy decides) |
//! | [`PROJECTION_SKIPPED`] | counter | `projection` | events the error policy skipped (recorded as failures) |
//! | [`PROJECTION_LAG_EVENTS`] | gauge | `projection` | the feed's head minus the checkpoint of the partition it last moved, measured at most once a second while it works; 0 when it finds nothing more |
//! | [`PROJECTION_LAG_SECONDS`] | gauge | `projection` | the age of the last event handled (0 when it finds nothing more) |
//! | [`PROJECTION_POSITION`] | gauge | `projection`, `partition` | each partition's checkpoint |
//!
//! The spans ([`tracing`]): `execute` (a command: the aggregate, the
//! command and correlation ids, the version reached, the attempts), `load`
//! (the aggregate and the version loaded), `append` (the aggregate, the
//! expected version, the versions and first global position stored),
//! `unit_of_work`, `projection_batch` (the projection, its partition and
//! the positions) and, inside it, `projection_event` for each event (its
//! position, aggregate and version, and its correlation, causation and
//! trace ids).
//!
//! ```
//! // An alert on a projection that falls behind, in PromQL:
//! let rule = format!("{}{{projection=\"balances\"}} > 10000", es_store::telemetry::PROJECTION_LAG_EVENTS);
//! assert_eq!(rule, "es_projection_lag_events{projection=\"balances\"} > 10000");
//! ```

use std::time::Instant;

/// Counter: events stored by appends.
pub const EVENTS_APPENDED: &str = "es_events_appended_total";
/// Histogram: the duration of an append, in seconds.
pub const APPEND_DURATION: &str = "es_append_duration_seconds";
/// Counter: commands run by a repository, by outcome.
pub const COMMANDS: &str = "es_commands_total";
/// Histogram: the duration of a command, retries included, in seconds.
pub const COMMAND_DURATION: &str = "es_command_duration_seconds";
/// Counter: optimistic-concurrency conflicts met by commands.
pub const COMMAND_CONFLICTS: &str = "es_command_conflicts_total";
/// Counter: command attempts run again, by reason.
pub const COMMAND_RETRIES: &str = "es_command_retries_total";
/// Histogram: the duration of loading an aggregate, in seconds.
pub const LOAD_DURATION: &str = "es_load_duration_seconds";
/// Counter: units of work, by outcome.
pub const UNITS: &str = "es_units_total";
/// Counter: units of work run again, by reason.
pub const UNIT_RERUNS: &str = "es_unit_reruns_total";
/// Counter: projection batches committed.
pub const PROJECTION_BATCHES: &str = "es_projection_batches_total";
/// Counter: events handled by projections.
pub const PROJECTION_EVENTS: &str = "es_projection_events_total";
/// Histogram: the duration of a projection batch, in seconds.
pub const PROJECTION_BATCH_DURATION: &str = "es_projection_batch_duration_seconds";
/// Counter: failed projection batches, by kind.
pub const PROJECTION_FAILURES: &str = "es_projection_failures_total";
/// Counter: events skipped by a projection's error policy.
pub const PROJECTION_SKIPPED: &str = "es_projection_skipped_total";
/// Gauge: how many positions a projection is behind the feed's head.
pub const PROJECTION_LAG_EVENTS: &str = "es_projection_lag_events";
/// Gauge: the age of the last event a projection handled, in seconds.
pub const PROJECTION_LAG_SECONDS: &str = "es_projection_lag_seconds";
/// Gauge: a projection partition's checkpoint.
pub const PROJECTION_POSITION: &str = "es_projection_position";

/// Records one append of an aggregate of `bounded_context` and
/// `aggregate_type`: its duration and outcome, and the events stored.
pub(crate) fn record_append(
    bounded_context: String,
    aggregate_type: String,
    started: Instant,
    outcome: &crate::Result<crate::AppendResult>,
) {
    let (outcome_label, stored) = match outcome {
        Ok(appended) => ("ok", appended.events.len()),
        Err(crate::Error::OptimisticConcurrency { .. }) => ("conflict", 0),
        Err(_) => ("error", 0),
    };
    let labels = [
        metrics::Label::new("bounded_context", bounded_context),
        metrics::Label::new("aggregate_type", aggregate_type),
    ];
    let mut with_outcome = labels.to_vec();
    with_outcome.push(metrics::Label::new("outcome", outcome_label));
    metrics::histogram!(APPEND_DURATION, with_outcome).record(started.elapsed());
    if stored > 0 {
        metrics::counter!(EVENTS_APPENDED, Vec::from(labels)).increment(stored as u64);
    }
}

/// Describes every metric above to the installed recorder (its help text
/// and unit, which an exporter shows: `# HELP` lines in Prometheus). Call
/// it once after installing the recorder; the metrics are recorded with or
/// without it.
///
/// ```
/// es_store::telemetry::describe(); // no recorder installed: does nothing
/// ```
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(EVENTS_APPENDED, Unit::Count, "Events stored by appends.");
    describe_histogram!(
        APPEND_DURATION,
        Unit::Seconds,
        "The duration of an append, by outcome."
    );
    describe_counter!(
        COMMANDS,
        Unit::Count,
        "Commands run by a repository, by outcome."
    );
    describe_histogram!(
        COMMAND_DURATION,
        Unit::Seconds,
        "The duration of a command, retries included."
    );
    describe_counter!(
        COMMAND_CONFLICTS,
        Unit::Count,
        "Optimistic-concurrency conflicts met by commands."
    );
    describe_counter!(
        COMMAND_RETRIES,
        Unit::Count,
        "Command attempts run again, by reason."
    );
    describe_histogram!(
        LOAD_DURATION,
        Unit::Seconds,
        "Reading and folding an aggregate's events."
    );
    describe_counter!(UNITS, Unit::Count, "Units of work, by outcome.");
    describe_counter!(
        UNIT_RERUNS,
        Unit::Count,
        "Units of work run again, by reason."
    );
    describe_counter!(
        PROJECTION_BATCHES,
        Unit::Count,
        "Projection batches committed."
    );
    describe_counter!(
        PROJECTION_EVENTS,
        Unit::Count,
        "Events handled by projections."
    );
    describe_histogram!(
        PROJECTION_BATCH_DURATION,
        Unit::Seconds,
        "The duration of a projection batch."
    );
    describe_counter!(
        PROJECTION_FAILURES,
        Unit::Count,
        "Failed projection batches, by kind."
    );
    describe_counter!(
        PROJECTION_SKIPPED,
        Unit::Count,
        "Events a projection's error policy skipped."
    );
    describe_gauge!(
        PROJECTION_LAG_EVENTS,
        Unit::Count,
        "Positions a projection is behind the feed's head."
    );
    describe_gauge!(
        PROJECTION_LAG_SECONDS,
        Unit::Seconds,
        "The age of the last event a projection handled."
    );
    describe_gauge!(
        PROJECTION_POSITION,
        Unit::Count,
        "A projection partition's checkpoint."
    );
}
