//! Traces: the spans of a command (`execute`, `load`, `append`) carry the
//! aggregate and its versions; events record the trace id of the current
//! OpenTelemetry trace (with the `opentelemetry` feature); correlation and
//! causation ids flow from a command's metadata into its events, into the
//! spans of the projection that handles them, and on into the commands
//! they cause (`Metadata::caused_by`).

mod support;

#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod domain;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use domain::{Account, AccountCommand, AccountEvent};
use es::aggregate::projection::{Envelope, HandlerError, ProjectionProcessor, TypedProjection};
use es::aggregate::testing::TestDatabase;
use es::store::{Metadata, PersistedEvent, Store};
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One span as it ended up: its name and fields.
#[derive(Debug, Clone)]
struct SpanRecord {
    id: u64,
    name: &'static str,
    fields: HashMap<String, String>,
}

/// Keeps every span's name and fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<SpanRecord>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(SpanRecord {
            id: id.into_u64(),
            name: attrs.metadata().name(),
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        // Span ids are reused once a span closes: the last one is this one.
        if let Some(span) = spans.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

impl Spans {
    /// The spans named `name` with `field` equal to `value`.
    fn named(&self, name: &str, field: &str, value: &str) -> Vec<SpanRecord> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == name && s.fields.get(field).is_some_and(|v| v == value))
            .cloned()
            .collect()
    }
}

/// A projection that only looks (its spans are what the test checks).
struct Watcher;

impl<DB: sqlx::Database> TypedProjection<DB> for Watcher {
    type Events = AccountEvent;

    fn name(&self) -> &str {
        "watcher"
    }

    async fn handle(
        &self,
        _tx: &mut DB::Connection,
        _event: Envelope<'_, AccountEvent>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The trace an incoming request carried (a W3C `traceparent`).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A span for a request whose trace came from outside.
fn request_span() -> tracing::Span {
    let span = tracing::info_span!("request");
    #[cfg(feature = "opentelemetry")]
    {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let remote = SpanContext::new(
            TraceId::from_hex(TRACE_ID).unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
            .unwrap();
    }
    span
}

async fn stream<S: Store>(db: &TestDatabase<S>, id: &str) -> Vec<PersistedEvent> {
    let mut conn = db.pool().acquire().await.unwrap();
    db.store()
        .read_aggregate_stream(&mut conn, ("Billing", "Account", id), 1..)
        .await
        .unwrap()
        .events
}

async fn ids_flow_through_spans_events_and_projections<S: Store>(
    db: TestDatabase<S>,
    spans: &Spans,
) {
    let accounts = db.repository::<Account>();
    let id = format!("acc-{}", uuid::Uuid::new_v4().simple());
    let correlation = uuid::Uuid::now_v7();
    let metadata = Metadata::new().with_correlation_id(correlation);
    accounts
        .execute_with(
            &id,
            &AccountCommand::Open {
                owner: "Ada".into(),
            },
            &metadata,
        )
        .instrument(request_span())
        .await
        .unwrap();
    let opened = stream(&db, &id).await;
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].correlation_id, Some(correlation));
    let expected_trace = cfg!(feature = "opentelemetry").then(|| TRACE_ID.to_owned());
    assert_eq!(
        opened[0].trace_id, expected_trace,
        "the request's trace id is on the event"
    );

    // The command's spans: the aggregate and the versions.
    let execute = spans.named("execute", "aggregate_id", &id);
    assert_eq!(execute.len(), 1, "{execute:?}");
    let fields = &execute[0].fields;
    assert_eq!(fields["aggregate_type"], "Account");
    assert_eq!(fields["version"], "1");
    assert_eq!(fields["attempts"], "1");
    assert_eq!(fields["outcome"], "executed");
    assert_eq!(fields["correlation_id"], correlation.to_string());
    if let Some(trace) = &expected_trace {
        assert_eq!(&fields["trace_id"], trace);
    }
    let load = spans.named("load", "aggregate_id", &id);
    assert_eq!(load.len(), 1, "{load:?}");
    assert_eq!(load[0].fields["version"], "0");
    let append = spans.named("append", "aggregate_id", &id);
    assert_eq!(append.len(), 1, "{append:?}");
    assert_eq!(append[0].fields["expected"], "no stream");
    assert_eq!(append[0].fields["from_version"], "1");
    assert_eq!(append[0].fields["to_version"], "1");
    assert_eq!(
        append[0].fields["first_position"],
        opened[0].global_position.to_string()
    );

    // A reaction to the event: the command it causes carries the chain on.
    accounts
        .execute_with(
            &id,
            &AccountCommand::Deposit { amount: 5 },
            &Metadata::caused_by(&opened[0]),
        )
        .await
        .unwrap();
    let events = stream(&db, &id).await;
    let deposited = &events[1];
    assert_eq!(deposited.correlation_id, Some(correlation));
    assert_eq!(deposited.causation_id, Some(opened[0].event_id));
    assert_eq!(deposited.trace_id, expected_trace);

    // The projection's spans: each event with its ids.
    ProjectionProcessor::typed(db.store().clone(), db.pool().clone(), Watcher)
        .catch_up()
        .await
        .unwrap();
    let handled = spans.named("projection_event", "aggregate_id", &id);
    assert_eq!(handled.len(), 2, "{handled:?}");
    for (span, event) in handled.iter().zip(&events) {
        assert_eq!(span.fields["position"], event.global_position.to_string());
        assert_eq!(span.fields["version"], event.aggregate_version.to_string());
        assert_eq!(span.fields["event_id"], event.event_id.to_string());
        assert_eq!(span.fields["correlation_id"], correlation.to_string());
        if let Some(trace) = &expected_trace {
            assert_eq!(&span.fields["trace_id"], trace);
        }
    }
    assert!(!handled[0].fields.contains_key("causation_id"));
    assert_eq!(
        handled[1].fields["causation_id"],
        opened[0].event_id.to_string()
    );
    let batch = spans.named("projection_batch", "projection", "watcher");
    assert!(!batch.is_empty());
    db.remove().await;
}

#[tokio::test]
async fn correlation_causation_and_trace_ids_flow_from_commands_to_projections() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    #[cfg(feature = "opentelemetry")]
    let subscriber = subscriber.with(tracing_opentelemetry::layer());
    // This test's thread only; the runtime is single-threaded.
    let _guard = tracing::subscriber::set_default(subscriber);

    ids_flow_through_spans_events_and_projections(TestDatabase::sqlite().await.unwrap(), &spans)
        .await;
    let url = support::database_url();
    ids_flow_through_spans_events_and_projections(
        TestDatabase::postgres(&url).await.unwrap(),
        &spans,
    )
    .await;
    #[cfg(feature = "mysql")]
    ids_flow_through_spans_events_and_projections(
        TestDatabase::mysql(&support::mysql_url()).await.unwrap(),
        &spans,
    )
    .await;
}
