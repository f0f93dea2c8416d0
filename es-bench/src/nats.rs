//! `publish_nats`: the store's feed published to NATS JetStream by the
//! framework's publisher (a projection catching up: reading the feed,
//! publishing each batch with a bounded window of unacknowledged
//! publishes, awaiting every ack, committing the checkpoint), against
//! plain async-nats publishing the same messages (the same subjects,
//! headers and payloads, already in memory) with the same window and
//! awaiting every acknowledgement: the fastest plain way to publish with
//! acks. Each side publishes into a fresh stream of its own per round, in
//! alternating rounds.

use std::future::IntoFuture;
use std::time::Instant;

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use es::aggregate::projection::ProjectionProcessor;
use es::nats::{Publisher, StreamSettings, Subjects};
use es::store::{Event, EventFilter, EventReader, EventStore, ExpectedVersion, PersistedEvent};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::backend::Target;
use crate::stats::Stats;
use crate::{Bench, Comparison, conn};

/// Unacknowledged publishes in flight, on both sides.
const WINDOW: usize = 1024;
/// Events per batch of the publisher: a batch's publishes can only be in
/// flight together for distinct aggregates (an aggregate's next event
/// waits for its previous one's ack, which keeps each aggregate's order
/// through re-sends), and the feed here holds runs of 10 events per
/// aggregate, so a batch must span about `WINDOW` aggregates to fill the
/// window: 20,000 events. (`ES_BENCH_NATS_BATCH` sets another.)
const BATCH: u32 = 20_000;
const AGGREGATE_TYPE: &str = "PublishBench";
const ROUNDS: usize = 2;

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The plain side's message for one event: what the publisher sends,
/// written out with async-nats alone.
fn plain_message(event: &PersistedEvent, stream: &str) -> (String, PublishMessage) {
    let mut headers = HeaderMap::new();
    let id = event.event_id.to_string();
    let mut put = |name: &'static str, value: String| {
        headers.insert(HeaderName::from_static(name), value);
    };
    put("Nats-Msg-Id", id.clone());
    put("Es-Event-Id", id);
    put("Es-Event-Type", event.event_type.clone());
    put("Es-Event-Version", event.event_version.to_string());
    put("Es-Bounded-Context", event.bounded_context.clone());
    put("Es-Aggregate-Type", event.aggregate_type.clone());
    put("Es-Aggregate-Id", event.aggregate_id.clone());
    put("Es-Aggregate-Version", event.aggregate_version.to_string());
    put("Es-Global-Position", event.global_position.to_string());
    put(
        "Es-Created-At",
        event
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    put("Content-Type", "application/json".to_owned());
    put("Nats-Expected-Stream", stream.to_owned());
    let subject = format!(
        "{}.{}.{}.{}",
        stream.to_lowercase(),
        event.bounded_context,
        event.aggregate_type,
        event.aggregate_id
    );
    let message = PublishMessage::build()
        .payload(Bytes::copy_from_slice(event.payload.get().as_bytes()))
        .headers(headers);
    (subject, message)
}

impl<T: Target> Bench<T> {
    pub(crate) async fn publish_nats(&self, events: u64) -> Vec<Comparison> {
        let client = match async_nats::connect(url()).await {
            Ok(client) => client,
            Err(error) => {
                eprintln!(
                    "  publish_nats skipped: no NATS server at {} ({error}); start nats-server -js, or set NATS_URL",
                    url()
                );
                return Vec::new();
            }
        };
        // The events: 1,000 aggregates, appended 10 at a time, interleaved.
        let started = Instant::now();
        let mut c = conn::<T>(&self.pool).await;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let aggregates = 1000u64;
        let per_append = 10u64;
        let rounds = events.div_ceil(aggregates * per_append);
        for _ in 0..rounds {
            for a in 0..aggregates {
                let id = format!("pub-{run}-{a}");
                let batch: Vec<Event> = (0..per_append)
                    .map(|n| {
                        Event::new(
                            "Billing",
                            AGGREGATE_TYPE,
                            &id,
                            "Deposited",
                            &serde_json::json!({"amount": n}),
                        )
                        .expect("json")
                    })
                    .collect();
                self.store
                    .append(&mut c, ExpectedVersion::Any, batch)
                    .await
                    .expect("populate");
            }
        }
        let filter = EventFilter::all().aggregate_type(AGGREGATE_TYPE);
        let mut feed = Vec::new();
        let mut from = 0;
        loop {
            let page = self
                .store
                .read_filtered(&mut c, from, 10_000, &filter)
                .await
                .expect("read");
            if page.events.is_empty() && page.scanned_to == from {
                break;
            }
            from = page.scanned_to;
            feed.extend(page.events);
        }
        drop(c);
        let total = feed.len() as u64;
        let batch = std::env::var("ES_BENCH_NATS_BATCH")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(BATCH);
        eprintln!(
            "  stored {total} events in {:.1} s; window {WINDOW}, publisher batches of {batch}",
            started.elapsed().as_secs_f64()
        );
        let jetstream = jetstream::new(client.clone());
        let mut framework = Stats {
            units_per_op: 1,
            ..Stats::default()
        };
        let mut plain = framework.clone();
        for round in 0..ROUNDS {
            // plain
            let name = format!("BENCH_PLAIN_{run}_{round}").to_uppercase();
            let settings =
                StreamSettings::new(&name).subjects([format!("{}.>", name.to_lowercase())]);
            settings.ensure(&jetstream).await.expect("stream");
            let context = jetstream::ContextBuilder::new()
                .max_ack_inflight(WINDOW + 64)
                .build(client.clone());
            let started = Instant::now();
            let mut in_flight: FuturesUnordered<
                <jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture,
            > = FuturesUnordered::new();
            for event in &feed {
                if in_flight.len() >= WINDOW {
                    in_flight.next().await.expect("an ack").expect("acked");
                }
                let (subject, message) = plain_message(event, &name);
                let ack = context
                    .send_publish(subject, message)
                    .await
                    .expect("publish");
                in_flight.push(ack.into_future());
            }
            while let Some(ack) = in_flight.next().await {
                ack.expect("acked");
            }
            plain.merge(Stats {
                ops: total,
                elapsed: started.elapsed(),
                units_per_op: 1,
                ..Stats::default()
            });
            check_and_delete(&jetstream, &name, total).await;

            // framework
            let name = format!("BENCH_FW_{run}_{round}").to_uppercase();
            let publisher = Publisher::builder(client.clone())
                .name(format!("bench_nats_{run}_{round}"))
                .stream(StreamSettings::new(&name))
                .subjects(Subjects::prefixed(name.to_lowercase()))
                .filter(filter.clone())
                .max_in_flight(WINDOW)
                .build()
                .await
                .expect("publisher");
            let processor =
                ProjectionProcessor::new(self.store.clone(), self.pool.clone(), publisher)
                    .with_batch_size(batch);
            let started = Instant::now();
            let done = processor.catch_up().await.expect("publish");
            framework.merge(Stats {
                ops: done.events,
                elapsed: started.elapsed(),
                units_per_op: 1,
                ..Stats::default()
            });
            assert_eq!(done.events, total);
            check_and_delete(&jetstream, &name, total).await;
        }
        vec![Comparison {
            workload: "publish_nats".to_owned(),
            framework,
            plain: vec![("async-nats", plain)],
            unit: "events",
            note: format!(
                "{total} events to JetStream (file storage), {ROUNDS} rounds each; the framework reads the feed and commits checkpoints, plain publishes the same messages from memory, with no per-aggregate order through failures; both with {WINDOW} acks in flight, the publisher in batches of {batch}"
            ),
        }]
    }
}

/// Checks the stream holds one message per event, and removes it.
async fn check_and_delete(jetstream: &jetstream::Context, name: &str, total: u64) {
    let mut handle: stream::Stream = jetstream.get_stream(name).await.expect("stream");
    let stored = handle.info().await.expect("info").state.messages;
    assert_eq!(stored, total, "stream {name}");
    jetstream.delete_stream(name).await.expect("delete");
}
