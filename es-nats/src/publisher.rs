//! The publisher: a projection that publishes the feed to JetStream.

use std::collections::{HashMap, VecDeque};
use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, context::PublishError as NatsPublishError};
use bytes::Bytes;
use es_aggregate::projection::{
    BatchFailure, HandlerError, Projection, ProjectionError, ProjectionProcessor, ProjectionStatus,
    Transient,
};
use es_store::{EventFilter, PersistedEvent, ProjectionStore};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::{SetupError, StreamSettings, Subjects, headers};

/// Unacknowledged publishes in flight at most, unless told.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;

/// The most unacknowledged publishes in flight a publisher allows
/// ([`PublisherBuilder::max_in_flight`]): each holds its message and its
/// acknowledgement's future.
pub const MAX_IN_FLIGHT: usize = 65_536;

/// The longest [`outage_timeout`](PublisherBuilder::outage_timeout) and
/// [`ack_timeout`](PublisherBuilder::ack_timeout): a batch's transaction
/// stays open while it waits, far past any sane lease.
pub const MAX_PUBLISH_WAIT: Duration = Duration::from_secs(3600);

/// The shortest [`ack_timeout`](PublisherBuilder::ack_timeout): shorter,
/// every publish would time out and be sent again at once.
pub const MIN_ACK_TIMEOUT: Duration = Duration::from_millis(1);

/// Publishes the store's feed to a JetStream stream: a [`Projection`],
/// run by a [`ProjectionProcessor`], so its checkpoints, partitions,
/// claims across processes, error policies and
/// [`status`](ProjectionProcessor::status) are the projections' own.
///
/// Each batch the processor hands it is published with up to
/// [`max_in_flight`](PublisherBuilder::max_in_flight) unacknowledged
/// publishes in flight (pipelined, not one round trip per event), and
/// [`handle_batch`](Projection::handle_batch) returns only when JetStream
/// has acknowledged every event of the batch: the checkpoint then commits
/// after the stream has them, so nothing is lost. Each message carries
/// `Nats-Msg-Id` = the event id, so what a publisher sends again after a
/// crash (the batch it had not committed) is dropped by the stream's
/// duplicate window; the payload is the stored JSON as it is and the
/// envelope is in [`headers`].
///
/// **Order**: per aggregate, events are stored in the stream in version
/// order. A partition holds whole aggregates and is published in global
/// order, one batch after the other; within a batch an event is sent only
/// once its aggregate's previous event is acknowledged, so a publish that
/// fails and is sent again (a lost connection, a server restart) can never
/// land after its successor. Events of different aggregates are in flight
/// together.
///
/// **Outages**: a publish that fails for want of the server (timeouts, a
/// lost connection, no stream answering while the server restarts) is
/// sent again after a backoff, within the batch, for up to
/// [`outage_timeout`](PublisherBuilder::outage_timeout); past it the
/// batch fails as a *transient store failure* would (the processor rolls
/// it back, never skips it nor counts it against its error policy, and
/// [`run`](ProjectionProcessor::run) tries again after its backoff, for
/// ever by default). A publish the stream refuses (a message over the
/// server's size limit, an invalid subject) fails the event, and the
/// processor's [`ErrorPolicy`](es_aggregate::ErrorPolicy) decides.
///
/// ```no_run
/// use es::aggregate::projection::ProjectionProcessor;
/// use es::nats::{Publisher, StreamSettings};
/// use es::store::PostgresStore;
///
/// # async fn demo(pool: sqlx::PgPool, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let publisher = Publisher::builder(client)
///     .stream(StreamSettings::new("EVENTS")) // subjects `events.>`
///     .build() // creates the stream, or checks it
///     .await?;
/// let processor = ProjectionProcessor::new(PostgresStore::new(), pool, publisher)
///     .with_partitions(4); // any number of processes share them
/// processor.run(shutdown).await?;
/// # Ok(()) }
/// ```
pub struct Publisher {
    name: String,
    jetstream: jetstream::Context,
    subjects: Subjects,
    stream: String,
    filter: EventFilter,
    max_in_flight: usize,
    outage_timeout: Duration,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("name", &self.name)
            .field("stream", &self.stream)
            .field("subjects", &self.subjects)
            .field("max_in_flight", &self.max_in_flight)
            .field("outage_timeout", &self.outage_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Publisher`]; see [`Publisher::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use es::nats::{Publisher, StreamSettings, Subjects};
/// use es::store::EventFilter;
///
/// # async fn demo(client: async_nats::Client) -> Result<(), es::nats::SetupError> {
/// let publisher = Publisher::builder(client)
///     .name("billing-to-nats") // its checkpoints' name
///     .stream(StreamSettings::new("BILLING").duplicate_window(Duration::from_secs(600)))
///     .subjects(Subjects::prefixed("billing"))
///     .filter(EventFilter::all().bounded_context("Billing"))
///     .max_in_flight(1024)
///     .ack_timeout(Duration::from_secs(2))
///     .outage_timeout(Duration::from_secs(15))
///     .build()
///     .await?;
/// assert_eq!(publisher.stream(), "BILLING");
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct PublisherBuilder {
    client: async_nats::Client,
    name: Option<String>,
    subjects: Subjects,
    stream: StreamSettings,
    filter: EventFilter,
    max_in_flight: usize,
    outage_timeout: Duration,
    ack_timeout: Duration,
}

impl Publisher {
    /// A publisher on `client`'s connection (which reconnects by itself),
    /// to the stream `EVENTS` on subjects `events.<context>.<type>.<id>`.
    pub fn builder(client: async_nats::Client) -> PublisherBuilder {
        PublisherBuilder {
            client,
            name: None,
            subjects: Subjects::default(),
            stream: StreamSettings::new("EVENTS"),
            filter: EventFilter::all(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            outage_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(5),
        }
    }

    /// The stream it publishes to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Its subjects.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The JetStream context it publishes through.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// What this publisher has done since it was built, and what is in
    /// flight now.
    ///
    /// ```no_run
    /// # fn demo(publisher: &es_nats::Publisher) {
    /// let stats = publisher.stats();
    /// println!("{} published, {} dropped as duplicates, {} in flight", stats.published, stats.duplicates, stats.in_flight);
    /// # }
    /// ```
    pub fn stats(&self) -> PublisherStats {
        let c = &self.counters;
        PublisherStats {
            published: c.published.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight,
            last_stream_sequence: c.last_sequence.load(Ordering::Relaxed),
        }
    }

    /// The status of a processor running this publisher: its checkpoints
    /// and lag in events and in time (the processor's
    /// [`status`](ProjectionProcessor::status): a publisher lists as a
    /// projection, named by [`PublisherBuilder::name`]), this process's
    /// counters and the connection's state.
    ///
    /// ```no_run
    /// # use es::aggregate::projection::ProjectionProcessor;
    /// # async fn demo(processor: ProjectionProcessor<es::store::PostgresStore, es::nats::Publisher>) -> Result<(), Box<dyn std::error::Error>> {
    /// let status = es::nats::Publisher::status(&processor).await?;
    /// println!("{}: {} events behind ({:?}), {:?}", status.projection.name, status.projection.lag, status.projection.lag_time, status.connection);
    /// if status.projection.is_stalled(std::time::Duration::from_secs(60)) { /* alert */ }
    /// # Ok(()) }
    /// ```
    pub async fn status<S>(
        processor: &ProjectionProcessor<S, Publisher>,
    ) -> Result<PublisherStatus, ProjectionError>
    where
        S: ProjectionStore + Clone,
        Publisher: Projection<S::Database>,
    {
        let projection = processor.status().await?;
        let publisher = processor.projection();
        Ok(PublisherStatus {
            projection,
            stats: publisher.stats(),
            connection: publisher.jetstream.client().connection_state(),
        })
    }
}

impl PublisherBuilder {
    /// The publisher's name: the key of its checkpoints, as a projection's
    /// (default `nats:<stream>`). Changing it publishes the feed again
    /// from the start.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The stream to publish to (default `EVENTS`), created or checked by
    /// [`build`](Self::build). Its subjects default to the filter of
    /// [`subjects`](Self::subjects).
    pub fn stream(mut self, stream: StreamSettings) -> Self {
        self.stream = stream;
        self
    }

    /// How subjects are made (default [`Subjects::default`]).
    pub fn subjects(mut self, subjects: Subjects) -> Self {
        self.subjects = subjects;
        self
    }

    /// Which events are published (default: all). The filter runs in the
    /// database.
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Unacknowledged publishes in flight at most (default
    /// [`DEFAULT_MAX_IN_FLIGHT`]; 1..=[`MAX_IN_FLIGHT`], 0 is taken as 1):
    /// the backpressure on the server and the memory a batch holds. A
    /// batch larger than this is sent as a sliding window. A larger value
    /// is refused by [`build`](Self::build) with
    /// [`SetupError::InvalidSetting`].
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// How long one event's publish may keep failing for want of the
    /// server before the batch fails (default 10 s), to be retried by the
    /// processor. Keep it below the processor's
    /// [lease](ProjectionProcessor::with_lease) (30 s by default): the
    /// batch's transaction is idle meanwhile. At most
    /// [`MAX_PUBLISH_WAIT`] (zero fails the batch at the first failed
    /// publish); a longer one is refused by [`build`](Self::build) with
    /// [`SetupError::InvalidSetting`].
    pub fn outage_timeout(mut self, timeout: Duration) -> Self {
        self.outage_timeout = timeout;
        self
    }

    /// How long to wait for one acknowledgement (default 5 s) before
    /// sending the event again: [`MIN_ACK_TIMEOUT`]..=[`MAX_PUBLISH_WAIT`],
    /// else refused by [`build`](Self::build) with
    /// [`SetupError::InvalidSetting`].
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Creates the stream or checks it ([`StreamSettings::ensure`]) and
    /// makes the publisher. Fails with [`SetupError::NoJetStream`] when the
    /// server has no JetStream, [`SetupError::StreamMismatch`] when the
    /// stream differs, and with [`SetupError::InvalidSetting`] (before
    /// anything is sent) when a setting is out of its range.
    ///
    /// ```no_run
    /// # async fn demo(client: async_nats::Client) {
    /// let refused = es_nats::Publisher::builder(client)
    ///     .max_in_flight(usize::MAX)
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(refused, es_nats::SetupError::InvalidSetting { setting: "max_in_flight", .. }));
    /// # }
    /// ```
    pub async fn build(self) -> Result<Publisher, SetupError> {
        self.check()?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(self.ack_timeout)
            // never the limit: the window below is
            .max_ack_inflight(self.max_in_flight + 64)
            .backpressure_on_inflight(true)
            .build(self.client);
        let stream = self.stream.default_subjects(self.subjects.filter());
        stream.ensure(&jetstream).await?;
        Ok(Publisher {
            name: self
                .name
                .unwrap_or_else(|| format!("nats:{}", stream.name())),
            jetstream,
            subjects: self.subjects,
            stream: stream.name().to_owned(),
            filter: self.filter,
            max_in_flight: self.max_in_flight,
            outage_timeout: self.outage_timeout,
            counters: Arc::default(),
        })
    }
}

impl PublisherBuilder {
    /// Refuses settings out of their range.
    fn check(&self) -> Result<(), SetupError> {
        let refuse = |setting, value: String, allowed: String| {
            Err(SetupError::InvalidSetting {
                setting,
                value,
                allowed,
            })
        };
        if self.max_in_flight > MAX_IN_FLIGHT {
            return refuse(
                "max_in_flight",
                self.max_in_flight.to_string(),
                format!("1..={MAX_IN_FLIGHT}"),
            );
        }
        if self.outage_timeout > MAX_PUBLISH_WAIT {
            return refuse(
                "outage_timeout",
                format!("{:?}", self.outage_timeout),
                format!("0s..={MAX_PUBLISH_WAIT:?}"),
            );
        }
        if !(MIN_ACK_TIMEOUT..=MAX_PUBLISH_WAIT).contains(&self.ack_timeout) {
            return refuse(
                "ack_timeout",
                format!("{:?}", self.ack_timeout),
                format!("{MIN_ACK_TIMEOUT:?}..={MAX_PUBLISH_WAIT:?}"),
            );
        }
        Ok(())
    }
}

/// A publisher's counters since it was built ([`Publisher::stats`]).
///
/// ```no_run
/// # fn demo(publisher: &es::nats::Publisher) {
/// let stats = publisher.stats();
/// assert!(stats.in_flight <= stats.max_in_flight);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherStats {
    /// Events the stream stored.
    pub published: u64,
    /// Events the stream dropped as duplicates (sent again after a
    /// restart or a failed batch, within the duplicate window).
    pub duplicates: u64,
    /// Publishes sent again after a failure.
    pub retries: u64,
    /// Batches fully acknowledged.
    pub batches: u64,
    /// Batches that failed.
    pub failed_batches: u64,
    /// Publishes waiting for their acknowledgement now.
    pub in_flight: usize,
    /// The bound on those.
    pub max_in_flight: usize,
    /// The stream sequence of the last acknowledgement.
    pub last_stream_sequence: u64,
}

/// A running publisher's status ([`Publisher::status`]).
///
/// ```no_run
/// # async fn demo(processor: es::aggregate::projection::ProjectionProcessor<es::store::PostgresStore, es::nats::Publisher>) -> Result<(), Box<dyn std::error::Error>> {
/// let status = es::nats::Publisher::status(&processor).await?;
/// let healthy = status.connection == async_nats::connection::State::Connected
///     && !status.projection.is_stalled(std::time::Duration::from_secs(30));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublisherStatus {
    /// Its checkpoints and lag, as a projection's.
    pub projection: ProjectionStatus,
    /// This process's counters.
    pub stats: PublisherStats,
    /// The NATS connection's state.
    pub connection: async_nats::connection::State,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    batches: AtomicU64,
    failed_batches: AtomicU64,
    in_flight: AtomicUsize,
    last_sequence: AtomicU64,
    /// The same, through the `metrics` facade: registered at the first
    /// batch, after the application installed its recorder.
    meters: std::sync::OnceLock<Meters>,
}

/// Counter: events the JetStream stream stored, by `publisher` and `stream`.
pub const PUBLISHED: &str = "es_nats_published_total";
/// Counter: events the stream dropped as duplicates (sent again after a
/// restart or a failed batch, within the duplicate window).
pub const DUPLICATES: &str = "es_nats_duplicates_total";
/// Counter: publishes sent again after a failure.
pub const PUBLISH_RETRIES: &str = "es_nats_publish_retries_total";
/// Gauge: publishes waiting for their acknowledgement.
pub const IN_FLIGHT: &str = "es_nats_in_flight";

/// A publisher's metrics. (Its batches, lag and failures are a
/// projection's: see `es_store::telemetry`.)
#[derive(Debug)]
struct Meters {
    published: metrics::Counter,
    duplicates: metrics::Counter,
    retries: metrics::Counter,
    in_flight: metrics::Gauge,
}

/// Why an event could not be published: the source of the processor's
/// error (a [`ProjectionError::Handler`] for `Refused`, a
/// [`ProjectionError::Unavailable`] for `Unavailable`).
///
/// ```no_run
/// # use es::aggregate::projection::ProjectionProcessor;
/// # async fn demo(processor: ProjectionProcessor<es::store::PostgresStore, es::nats::Publisher>) {
/// use es::aggregate::ProjectionError;
/// use es::nats::PublishError;
///
/// if let Err(ProjectionError::Handler { source, .. }) = processor.catch_up().await {
///     if let Some(PublishError::Refused { event_id, subject, .. }) = source.downcast_ref::<PublishError>() {
///         eprintln!("event {event_id} cannot go to {subject}");
///     }
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The server did not take the event for the whole outage timeout (it
    /// is down or restarting, or no stream captures the subject). The
    /// processor sees it as a transient failure and tries the batch again.
    #[error(
        "JetStream stream `{stream}` did not acknowledge event {event_id} on `{subject}` for {waited:?} ({attempts} attempt(s)): {source}"
    )]
    Unavailable {
        /// The stream.
        stream: String,
        /// The event.
        event_id: uuid::Uuid,
        /// Its subject.
        subject: String,
        /// How long it was tried.
        waited: Duration,
        /// How many times it was sent.
        attempts: u32,
        /// The last failure.
        #[source]
        source: NatsPublishError,
    },
    /// The stream (or the client) refused the event: it is too large for
    /// the server, its subject is invalid, or the stream refused it. The
    /// processor's error policy decides.
    #[error("JetStream stream `{stream}` refused event {event_id} on `{subject}`: {source}")]
    Refused {
        /// The stream.
        stream: String,
        /// The event.
        event_id: uuid::Uuid,
        /// Its subject.
        subject: String,
        /// The refusal.
        #[source]
        source: NatsPublishError,
    },
}

/// One event's retries within a batch.
struct Trouble {
    attempts: u32,
    since: Instant,
    error: NatsPublishError,
}

/// Whether a failed publish is worth sending again: the server was not
/// there, or did not answer in time. (Send-time failures other than those
/// are the message's own: too large, an invalid subject.)
fn transient(error: &NatsPublishError, at_send: bool) -> bool {
    match error.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => true,
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => false,
        _ => !at_send,
    }
}

impl Publisher {
    fn meters(&self) -> &Meters {
        self.counters.meters.get_or_init(|| {
            let labels = [
                ("publisher", self.name.clone()),
                ("stream", self.stream.clone()),
            ];
            Meters {
                published: metrics::counter!(PUBLISHED, &labels),
                duplicates: metrics::counter!(DUPLICATES, &labels),
                retries: metrics::counter!(PUBLISH_RETRIES, &labels),
                in_flight: metrics::gauge!(IN_FLIGHT, &labels),
            }
        })
    }

    /// Publishes `events` and waits for every acknowledgement.
    async fn publish_all(&self, events: &[PersistedEvent]) -> Result<(), BatchFailure> {
        let result = self.publish_window(events).await;
        self.counters.in_flight.store(0, Ordering::Relaxed);
        self.meters().in_flight.set(0.0);
        match &result {
            Ok(()) => self.counters.batches.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.failed_batches.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    async fn publish_window(&self, events: &[PersistedEvent]) -> Result<(), BatchFailure> {
        let n = events.len();
        // Each event's aggregate, as a slot: an aggregate has at most one
        // publish in flight, the others of it wait in its queue.
        let mut slot_of = Vec::with_capacity(n);
        {
            let mut slots: HashMap<(&str, &str, &str), usize> = HashMap::new();
            for event in events {
                let next = slots.len();
                slot_of.push(
                    *slots
                        .entry((
                            &event.bounded_context,
                            &event.aggregate_type,
                            &event.aggregate_id,
                        ))
                        .or_insert(next),
                );
            }
        }
        let slot_count = slot_of.iter().max().map_or(0, |m| m + 1);
        let mut busy = vec![false; slot_count];
        let mut parked: HashMap<usize, VecDeque<usize>> = HashMap::new();
        // Events whose turn has come (a predecessor acknowledged, or a
        // retry due), sent before new ones.
        let mut ready: VecDeque<usize> = VecDeque::new();
        let mut delayed: Vec<(Instant, usize)> = Vec::new();
        let mut trouble: HashMap<usize, Trouble> = HashMap::new();
        let mut next = 0;
        let mut in_flight = FuturesUnordered::new();

        loop {
            while in_flight.len() < self.max_in_flight {
                let i = if let Some(i) = ready.pop_front() {
                    i
                } else if next < n {
                    let i = next;
                    next += 1;
                    let slot = slot_of[i];
                    if busy[slot] {
                        parked.entry(slot).or_default().push_back(i);
                        continue;
                    }
                    busy[slot] = true;
                    i
                } else {
                    break;
                };
                let event = &events[i];
                let subject = self.subjects.subject(event);
                let mut headers = headers::encode(event);
                headers.insert(
                    async_nats::header::NATS_EXPECTED_STREAM,
                    self.stream.as_str(),
                );
                let message = PublishMessage::build()
                    .payload(Bytes::copy_from_slice(event.payload.get().as_bytes()))
                    .headers(headers);
                match self.jetstream.send_publish(subject, message).await {
                    Ok(ack) => {
                        let ack = ack.into_future();
                        in_flight.push(async move { (i, ack.await) });
                        self.counters
                            .in_flight
                            .store(in_flight.len(), Ordering::Relaxed);
                    }
                    Err(error) => {
                        let at_send = true;
                        self.failed(i, event, error, at_send, &mut trouble, &mut delayed)?;
                    }
                }
            }
            if in_flight.is_empty() && delayed.is_empty() {
                debug_assert!(ready.is_empty() && next >= n);
                return Ok(());
            }
            let due = delayed.iter().map(|(at, _)| *at).min();
            tokio::select! {
                Some((i, acked)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.counters.in_flight.store(in_flight.len(), Ordering::Relaxed);
                    let meters = self.meters();
                    meters.in_flight.set(in_flight.len() as f64);
                    match acked {
                        Ok(ack) => {
                            trouble.remove(&i);
                            let (counter, meter) = if ack.duplicate {
                                (&self.counters.duplicates, &meters.duplicates)
                            } else {
                                (&self.counters.published, &meters.published)
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            meter.increment(1);
                            self.counters.last_sequence.store(ack.sequence, Ordering::Relaxed);
                            let slot = slot_of[i];
                            match parked.get_mut(&slot).and_then(VecDeque::pop_front) {
                                Some(successor) => ready.push_back(successor),
                                None => busy[slot] = false,
                            }
                        }
                        Err(error) => {
                            self.failed(i, &events[i], error, false, &mut trouble, &mut delayed)?;
                        }
                    }
                }
                () = sleep_until(due), if due.is_some() => {
                    let now = Instant::now();
                    delayed.retain(|&(at, i)| {
                        if at <= now {
                            ready.push_back(i);
                            false
                        } else {
                            true
                        }
                    });
                }
            }
        }
    }

    /// Schedules a failed publish to be sent again, or fails the batch.
    fn failed(
        &self,
        i: usize,
        event: &PersistedEvent,
        error: NatsPublishError,
        at_send: bool,
        trouble: &mut HashMap<usize, Trouble>,
        delayed: &mut Vec<(Instant, usize)>,
    ) -> Result<(), BatchFailure> {
        if !transient(&error, at_send) {
            return Err(BatchFailure::at(
                i,
                PublishError::Refused {
                    stream: self.stream.clone(),
                    event_id: event.event_id,
                    subject: self.subjects.subject(event),
                    source: error,
                },
            ));
        }
        let now = Instant::now();
        let entry = trouble.entry(i).or_insert(Trouble {
            attempts: 0,
            since: now,
            error,
        });
        entry.attempts += 1;
        if now.duration_since(entry.since) >= self.outage_timeout {
            let Trouble {
                attempts,
                since,
                error,
            } = trouble.remove(&i).expect("just inserted");
            let error = PublishError::Unavailable {
                stream: self.stream.clone(),
                event_id: event.event_id,
                subject: self.subjects.subject(event),
                waited: now.duration_since(since),
                attempts,
                source: error,
            };
            tracing::warn!(publisher = self.name, %error, "JetStream unavailable, the batch is tried again");
            // The processor retries a transient failure without skipping
            // the batch or counting it against its error policy.
            return Err(BatchFailure::whole_batch(Transient::new(error)));
        }
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        self.meters().retries.increment(1);
        let backoff = Duration::from_millis(50)
            .saturating_mul(1 << entry.attempts.min(6))
            .min(Duration::from_secs(2));
        tracing::debug!(publisher = self.name, event_id = %event.event_id, attempts = entry.attempts, "publish failed, sending again");
        delayed.push((now + backoff, i));
        Ok(())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<DB: sqlx::Database> Projection<DB> for Publisher {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        self.filter.clone()
    }

    /// Publishing is a side effect: a rewind publishes every replayed
    /// event again (the `es` command line refuses it without `--force`).
    fn has_side_effects(&self) -> bool {
        true
    }

    async fn handle(
        &self,
        _tx: &mut DB::Connection,
        event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        self.publish_all(std::slice::from_ref(event))
            .await
            .map_err(|failure| failure.error)
    }

    async fn handle_batch(
        &self,
        _tx: &mut DB::Connection,
        events: &[PersistedEvent],
    ) -> Result<(), BatchFailure> {
        self.publish_all(events).await
    }
}
