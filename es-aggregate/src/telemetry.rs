//! What the repository, units of work and projections record through the
//! [`metrics`] facade; the names and labels are listed in
//! [`es_store::telemetry`].

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use es_store::telemetry as names;

use crate::Aggregate;
use crate::repository::error::RepositoryError;
use crate::repository::outcome::Executed;
use es_store::DomainEvent;

/// `metadata`, with the current trace id when it names none (with the
/// `opentelemetry` feature: the trace of the current span, else of
/// OpenTelemetry's current context).
pub(crate) fn traced(metadata: &es_store::Metadata) -> Cow<'_, es_store::Metadata> {
    if metadata.trace_id.is_some() {
        return Cow::Borrowed(metadata);
    }
    match current_trace_id() {
        Some(trace_id) => Cow::Owned(metadata.clone().with_trace_id(trace_id)),
        None => Cow::Borrowed(metadata),
    }
}

/// The current OpenTelemetry trace id, as 32 hexadecimal digits: the
/// trace of the current `tracing` span (with a `tracing-opentelemetry`
/// layer), else of OpenTelemetry's current context; `None` outside a
/// trace. Commands and units of work whose metadata names no trace id
/// record this one on their events.
///
/// Without the `opentelemetry` feature there is no current trace:
///
/// ```
/// # #[cfg(not(feature = "opentelemetry"))]
/// assert_eq!(es_aggregate::current_trace_id(), None);
/// ```
#[cfg(feature = "opentelemetry")]
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let valid = |cx: opentelemetry::Context| {
        let span = cx.span();
        let context = span.span_context();
        context.is_valid().then(|| context.trace_id().to_string())
    };
    valid(tracing::Span::current().context()).or_else(|| valid(opentelemetry::Context::current()))
}

/// The current trace id: none without the `opentelemetry` feature (see
/// the feature's version of this function).
#[cfg(not(feature = "opentelemetry"))]
pub fn current_trace_id() -> Option<String> {
    None
}

/// The labels of an aggregate type's metrics.
fn aggregate_labels<A: Aggregate>() -> [(&'static str, &'static str); 2] {
    [
        ("bounded_context", A::Event::BOUNDED_CONTEXT),
        ("aggregate_type", A::Event::AGGREGATE_TYPE),
    ]
}

fn with<const N: usize>(
    labels: [(&'static str, &'static str); N],
    key: &'static str,
    value: &'static str,
) -> Vec<(&'static str, &'static str)> {
    let mut all = labels.to_vec();
    all.push((key, value));
    all
}

/// Records a command's outcome, its duration, the conflicts it met and
/// the attempts it ran again.
pub(crate) fn command<A: Aggregate>(
    started: Instant,
    outcome: &Result<Executed<A>, RepositoryError<A::Error>>,
) {
    let labels = aggregate_labels::<A>();
    let (label, conflicts, transient) = match outcome {
        Ok(executed) if executed.replayed => (
            "replayed",
            executed.attempts - 1,
            executed.transient_retries,
        ),
        Ok(executed) => (
            "executed",
            executed.attempts - 1,
            executed.transient_retries,
        ),
        Err(RepositoryError::Rejected(_)) => ("rejected", 0, 0),
        Err(RepositoryError::Conflict { attempts, .. }) => ("conflict", *attempts, 0),
        Err(RepositoryError::Unavailable { retries, .. }) => ("unavailable", 0, *retries),
        Err(RepositoryError::OutcomeUnknown { retries, .. }) => ("outcome_unknown", 0, *retries),
        Err(_) => ("failed", 0, 0),
    };
    metrics::counter!(names::COMMANDS, &with(labels, "outcome", label)).increment(1);
    metrics::histogram!(names::COMMAND_DURATION, &labels).record(started.elapsed());
    if conflicts > 0 {
        metrics::counter!(names::COMMAND_CONFLICTS, &labels).increment(u64::from(conflicts));
    }
    // A command that ran out of attempts ran all but its first again.
    let conflict_retries = match outcome {
        Err(RepositoryError::Conflict { attempts, .. }) => attempts.saturating_sub(1),
        _ => conflicts,
    };
    if conflict_retries > 0 {
        metrics::counter!(names::COMMAND_RETRIES, &with(labels, "reason", "conflict"))
            .increment(u64::from(conflict_retries));
    }
    if transient > 0 {
        metrics::counter!(names::COMMAND_RETRIES, &with(labels, "reason", "transient"))
            .increment(u64::from(transient));
    }
}

/// Records the duration of loading an aggregate.
pub(crate) fn load<A: Aggregate>(elapsed: Duration) {
    metrics::histogram!(names::LOAD_DURATION, &aggregate_labels::<A>()).record(elapsed);
}

/// Records a unit of work's outcome.
pub(crate) fn unit(outcome: Result<(), &crate::WorkError>) {
    use crate::WorkError;
    let label = match outcome {
        Ok(()) => "committed",
        Err(WorkError::Rejected(_)) => "rejected",
        Err(WorkError::Conflict { .. }) => "conflict",
        Err(WorkError::Unavailable { .. }) => "unavailable",
        Err(WorkError::OutcomeUnknown { .. }) => "outcome_unknown",
        Err(_) => "failed",
    };
    metrics::counter!(names::UNITS, "outcome" => label).increment(1);
}

/// Records a unit of work run again.
pub(crate) fn unit_rerun(reason: &'static str) {
    metrics::counter!(names::UNIT_RERUNS, "reason" => reason).increment(1);
}

/// A projection's metrics, registered once per processor.
#[derive(Debug)]
pub(crate) struct ProjectionMetrics {
    name: String,
    batches: metrics::Counter,
    events: metrics::Counter,
    duration: metrics::Histogram,
    store_failures: metrics::Counter,
    handler_failures: metrics::Counter,
    skipped: metrics::Counter,
    lag_events: metrics::Gauge,
    lag_seconds: metrics::Gauge,
    /// When the lag in events was last measured.
    lag_measured: std::sync::Mutex<Option<Instant>>,
    /// The checkpoint the last batch moved to (-1 before the first).
    last_position: AtomicI64,
}

impl ProjectionMetrics {
    pub(crate) fn new(projection: &str) -> Self {
        let name = projection.to_owned();
        let label = || [("projection", name.clone())];
        let failures = |kind: &'static str| metrics::counter!(names::PROJECTION_FAILURES, "projection" => name.clone(), "kind" => kind);
        Self {
            batches: metrics::counter!(names::PROJECTION_BATCHES, &label()),
            events: metrics::counter!(names::PROJECTION_EVENTS, &label()),
            duration: metrics::histogram!(names::PROJECTION_BATCH_DURATION, &label()),
            store_failures: failures("store"),
            handler_failures: failures("handler"),
            skipped: metrics::counter!(names::PROJECTION_SKIPPED, &label()),
            lag_events: metrics::gauge!(names::PROJECTION_LAG_EVENTS, &label()),
            lag_seconds: metrics::gauge!(names::PROJECTION_LAG_SECONDS, &label()),
            lag_measured: std::sync::Mutex::new(None),
            last_position: AtomicI64::new(-1),
            name,
        }
    }

    /// A batch of `events` committed up to `position` of `partition`; the
    /// last of them appended at `last_created`.
    pub(crate) fn batch(
        &self,
        partition: &str,
        position: i64,
        events: usize,
        last_created: Option<chrono::DateTime<chrono::Utc>>,
        started: Instant,
    ) {
        self.batches.increment(1);
        self.events.increment(events as u64);
        self.duration.record(started.elapsed());
        self.position(partition, position);
        if let Some(at) = last_created {
            let age = (chrono::Utc::now() - at).to_std().unwrap_or_default();
            self.lag_seconds.set(age.as_secs_f64());
        }
    }

    /// The checkpoint the last batch moved to.
    pub(crate) fn last_position(&self) -> Option<i64> {
        Some(self.last_position.load(Ordering::Relaxed)).filter(|p| *p >= 0)
    }

    /// A partition's checkpoint.
    pub(crate) fn position(&self, partition: &str, position: i64) {
        self.last_position.store(position, Ordering::Relaxed);
        metrics::gauge!(names::PROJECTION_POSITION, "projection" => self.name.clone(), "partition" => partition.to_owned())
            .set(position as f64);
    }

    /// Whether the lag in events is due to be measured again (at most once
    /// a second).
    pub(crate) fn lag_due(&self) -> bool {
        let mut measured = self.lag_measured.lock().unwrap_or_else(|e| e.into_inner());
        let due = measured.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if due {
            *measured = Some(Instant::now());
        }
        due
    }

    /// The lag in events, measured.
    pub(crate) fn lag(&self, events: i64) {
        self.lag_events.set(events.max(0) as f64);
    }

    /// Every partition found nothing more.
    pub(crate) fn caught_up(&self) {
        self.lag_events.set(0.0);
        self.lag_seconds.set(0.0);
    }

    pub(crate) fn store_failure(&self) {
        self.store_failures.increment(1);
    }

    pub(crate) fn handler_failure(&self) {
        self.handler_failures.increment(1);
    }

    pub(crate) fn skipped(&self, events: u64) {
        self.skipped.increment(events);
    }
}

/// A command's outcome.
type CommandResult<A> = crate::repository::Result<Executed<A>, A>;

/// Runs a command in its span, and records its outcome on the span and in
/// the metrics.
pub(crate) async fn observe_command<A: Aggregate>(
    id: &str,
    metadata: &es_store::Metadata,
    command: impl Future<Output = CommandResult<A>>,
) -> CommandResult<A> {
    let span = command_span::<A>(id, metadata);
    let started = std::time::Instant::now();
    let outcome = tracing::Instrument::instrument(command, span.clone()).await;
    self::command(started, &outcome);
    record_outcome(&span, &outcome);
    outcome
}

/// The span of one command: the aggregate, the command's and correlation
/// ids; the version reached and the attempts are recorded at the end.
pub(crate) fn command_span<A: Aggregate>(id: &str, metadata: &es_store::Metadata) -> tracing::Span {
    tracing::debug_span!(
        "execute",
        bounded_context = A::Event::BOUNDED_CONTEXT,
        aggregate_type = A::Event::AGGREGATE_TYPE,
        aggregate_id = id,
        command_id = metadata.command_id.map(tracing::field::display),
        correlation_id = metadata.correlation_id.map(tracing::field::display),
        causation_id = metadata.causation_id.map(tracing::field::display),
        trace_id = metadata.trace_id.as_deref(),
        version = tracing::field::Empty,
        attempts = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

/// Records a command's outcome on its span.
pub(crate) fn record_outcome<A: Aggregate>(span: &tracing::Span, outcome: &CommandResult<A>) {
    match outcome {
        Ok(executed) => {
            span.record("version", executed.version);
            span.record("attempts", executed.attempts);
            span.record(
                "outcome",
                if executed.replayed {
                    "replayed"
                } else {
                    "executed"
                },
            );
        }
        Err(error) => {
            span.record("outcome", tracing::field::display(error));
        }
    }
}
