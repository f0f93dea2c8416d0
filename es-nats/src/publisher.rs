//! The publisher: a projection that publishes the feed to JetStream.

use std::collections::{HashMap, VecDeque};
use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::{LastRawMessageError, LastRawMessageErrorKind};
use async_nats::jetstream::{self, context::PublishError as NatsPublishError};
use bytes::Bytes;
use es_aggregate::projection::{
    BatchFailure, Context, Projection, ProjectionError, ProjectionProcessor, ProjectionStatus,
    Transient,
};
use es_store::{EventFilter, PersistedEvent, ProjectionStore};
use futures_util::StreamExt;
use futures_util::future::Either;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;
use uuid::Uuid;

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
/// after the stream has them, so nothing is lost. The payload is the
/// stored JSON as it is and the envelope is in [`headers`].
///
/// **Each event stored once, however late the re-send.** A publisher
/// sends again what it had not committed: the batch a killed process
/// had published, a batch that failed after its acknowledgements, a
/// batch a frozen process wakes up with after its lease went to another.
/// Within the stream's duplicate window `Nats-Msg-Id` (the event id)
/// drops such a re-send; past it, the stream itself says what it holds.
/// With subjects that are one per aggregate ([`Subjects::default`],
/// [`Subjects::prefixed`], or [`Subjects::per_aggregate`]):
///
/// - Each publish carries `Nats-Expected-Last-Subject-Sequence`: the
///   stream sequence of the last message on its subject as this
///   publisher knows it (from its own last acknowledgement there, or 0 for
///   an aggregate's first event). JetStream stores it only if that is
///   still the subject's last message, and refuses it otherwise, as one
///   step.
/// - When it does not know the last message (an aggregate past version 1
///   it has not met since it started), or the stream refused a publish,
///   the publisher reads the subject's last message, whose headers carry
///   its aggregate version, global position and event id. An event whose
///   version is not above that one is in the stream already and is not
///   sent ([`PublisherStats::already_stored`]); a later one is sent after
///   it.
/// - So per subject the stream holds an aggregate's events in version
///   order, each once: a message lands only right after the one its
///   sender found last, and is sent only when that one is an earlier
///   version. No time window is involved.
/// - **Partitions**: the check is per aggregate, and each aggregate lives
///   in one partition. The stream's last message overall (another
///   partition's, maybe far ahead) bounds nothing and is never used; each
///   aggregate's own last message is.
/// - **Racing publishers** (a frozen one waking after its lease went to
///   another, or two publishers of the same feed under two names): on one
///   aggregate, whichever stores a version first wins; the other's publish
///   names a message that is no longer the last, is refused, and its
///   sender finds the event stored. Each event once, in order, whatever
///   the interleaving.
///
/// Its limits: the stream must keep each subject's last message (limits
/// retention, the default; a message removed by `max_age`, a purge,
/// interest or work-queue retention can be published again past the
/// window), and an aggregate's subject is fed by publishers of the same
/// events (a publisher with another filter on the same subjects would
/// take another's later version for its own earlier one). A last message
/// that does not fit the store's history (another aggregate's, another
/// event at the same version, versions and positions out of step: a
/// stream fed by another store) fails the event with
/// [`PublishError::Diverged`]. A publisher with restricted NATS
/// permissions needs `$JS.API.STREAM.MSG.GET.<stream>` to read the last
/// message on a subject. Since the stream decides, rebuilding a
/// publisher (or renaming it) publishes nothing the stream holds: to
/// publish the feed again, publish it to a new stream.
///
/// What it costs: no extra round trip in the steady state (each
/// acknowledgement gives the sequence the aggregate's next publish
/// follows; the publisher remembers it for up to 65,536 subjects), one
/// read of the last message per aggregate met past version 1 after a
/// start and per refusal, and the server's check of each publish against
/// its subject's last message (about a fifth of the publishing rate,
/// measured on nats-server 2.9). For a custom scheme not marked per
/// aggregate, none of this: re-sends are dropped within the duplicate
/// window only.
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
    /// The stream, to read the last message on a subject.
    lookup: jetstream::stream::Stream<()>,
    /// The last message this process knows on each subject.
    tips: std::sync::Mutex<HashMap<String, Tip>>,
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
            already_stored: c.already_stored.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            lookups: c.lookups.load(Ordering::Relaxed),
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
        let lookup = jetstream
            .get_stream_no_info(stream.name())
            .await
            .map_err(|e| crate::stream::nats_error(&jetstream, "look the stream up", e))?;
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
            lookup,
            tips: std::sync::Mutex::default(),
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
    /// Events sent again (after a restart or a failed batch) that the
    /// stream dropped as duplicates, within its duplicate window.
    pub duplicates: u64,
    /// Events not sent again because the stream already held them (found
    /// from the last message on their subject, however long ago they were
    /// published): with [`duplicates`](Self::duplicates), every re-send
    /// this publisher avoided or had dropped.
    pub already_stored: u64,
    /// Publishes the stream refused because their subject's last message
    /// was not the one they followed (another publisher, or this one
    /// before a restart, had published there since); each is looked up
    /// and decided again.
    pub conflicts: u64,
    /// Reads of the last message on a subject (at the first event of an
    /// aggregate this process meets past version 1, and after a
    /// conflict).
    pub lookups: u64,
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
    already_stored: AtomicU64,
    conflicts: AtomicU64,
    lookups: AtomicU64,
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
/// Counter: events sent again (after a restart or a failed batch) that the
/// stream dropped as duplicates, within its duplicate window.
pub const DUPLICATES: &str = "es_nats_duplicates_total";
/// Counter: events not sent again because the stream already held them
/// (found from the last message on their subject, past the duplicate
/// window as within it).
pub const ALREADY_STORED: &str = "es_nats_already_stored_total";
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
    already_stored: metrics::Counter,
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
    /// The stream's last message on the event's subject does not fit the
    /// store's history of its aggregate: it is another aggregate's (a
    /// custom [`Subjects`] scheme said to be
    /// [`per_aggregate`](Subjects::per_aggregate) is not), it was not
    /// published by es-nats, or it disagrees with the store (another
    /// event at that version, or versions and positions out of step: the
    /// stream was fed by another store, or by another publisher with
    /// another filter). Nothing was published; the processor's error
    /// policy decides.
    #[error(
        "JetStream stream `{stream}` cannot take event {event_id} (version {version}) on `{subject}`: its last message there (sequence {found_sequence}) {reason}"
    )]
    Diverged {
        /// The stream.
        stream: String,
        /// The event.
        event_id: uuid::Uuid,
        /// Its subject.
        subject: String,
        /// Its version in its aggregate.
        version: i64,
        /// The stream sequence of the last message on the subject.
        found_sequence: u64,
        /// What does not fit.
        reason: String,
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

/// Times one event may find its subject's last message moved by another
/// publisher before the batch fails (as a transient failure, tried again
/// by the processor): two publishers racing on one aggregate settle in a
/// few.
const MAX_CONFLICTS: u32 = 64;

/// Subjects whose last message a publisher remembers at most; past it, it
/// forgets them all and asks the stream again for those it meets.
const TIPS_CAPACITY: usize = 65_536;

/// The last message the stream holds on a subject: what the next publish
/// there must follow (its `Nats-Expected-Last-Subject-Sequence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tip {
    /// Its stream sequence; 0 when the subject holds nothing.
    sequence: u64,
    /// Its aggregate version (0 when there is nothing).
    version: i64,
    /// Its global position in the store's feed.
    position: i64,
    /// Its event id.
    event_id: Uuid,
}

impl Tip {
    const EMPTY: Tip = Tip {
        sequence: 0,
        version: 0,
        position: 0,
        event_id: Uuid::nil(),
    };

    fn of(event: &PersistedEvent, sequence: u64) -> Tip {
        Tip {
            sequence,
            version: event.aggregate_version,
            position: event.global_position,
            event_id: event.event_id,
        }
    }
}

/// What to do with an event, given the last message on its subject.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Publish it, after the message at this stream sequence.
    Publish { expected: u64 },
    /// The stream holds it already: a re-send, not made.
    Stored,
    /// The stream holds a history of the aggregate that is not the
    /// store's.
    Diverged(String),
}

/// The stream holds each subject's events in version order (a publish
/// there names the sequence it follows), so the last one tells whether
/// `event` is there: a later or equal version means it is.
fn verdict(tip: &Tip, event: &PersistedEvent) -> Verdict {
    let (version, position) = (event.aggregate_version, event.global_position);
    if tip.sequence == 0 {
        return Verdict::Publish { expected: 0 };
    }
    let found = |what: &str| {
        Verdict::Diverged(format!(
            "is version {} (event {}, global position {}), {what}: the stream holds another history of this aggregate (another store's, or another publisher's)",
            tip.version, tip.event_id, tip.position
        ))
    };
    match version.cmp(&tip.version) {
        std::cmp::Ordering::Greater if tip.position < position => Verdict::Publish {
            expected: tip.sequence,
        },
        std::cmp::Ordering::Greater => found("later in the feed than this event"),
        std::cmp::Ordering::Equal if tip.event_id == event.event_id => Verdict::Stored,
        std::cmp::Ordering::Equal => found("another event at this version"),
        std::cmp::Ordering::Less if tip.position > position => Verdict::Stored,
        std::cmp::Ordering::Less => found("earlier in the feed than this event"),
    }
}

/// A publish or a look-up in flight, done.
enum Done {
    Acked(
        usize,
        String,
        Result<jetstream::publish::PublishAck, NatsPublishError>,
    ),
    Found(usize, String, Result<StreamMessage, LastRawMessageError>),
}

async fn acked(i: usize, subject: String, ack: PublishAckFuture) -> Done {
    let ack = ack.into_future();
    Done::Acked(i, subject, ack.await)
}

async fn found(stream: &jetstream::stream::Stream<()>, i: usize, subject: String) -> Done {
    let message = stream.get_last_raw_message_by_subject(&subject).await;
    Done::Found(i, subject, message)
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
                already_stored: metrics::counter!(ALREADY_STORED, &labels),
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

    /// The last message this process knows on `subject`.
    fn remembered(&self, subject: &str) -> Option<Tip> {
        let tips = self.tips.lock().unwrap_or_else(|p| p.into_inner());
        tips.get(subject).copied()
    }

    fn remember(&self, subject: &str, tip: Tip) {
        let mut tips = self.tips.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = tips.get_mut(subject) {
            *known = tip;
            return;
        }
        if tips.len() >= TIPS_CAPACITY {
            tips.clear();
        }
        tips.insert(subject.to_owned(), tip);
    }

    async fn publish_window(&self, events: &[PersistedEvent]) -> Result<(), BatchFailure> {
        let n = events.len();
        // Whether each subject holds one aggregate: then each publish names
        // the last message it follows on its subject, and what the stream
        // holds already is not sent again.
        let chained = self.subjects.is_per_aggregate();
        // Each event's aggregate, as a slot: an aggregate has at most one
        // publish (or look-up) in flight, the others of it wait in its
        // queue.
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
        // Events whose turn has come (a predecessor acknowledged, a retry
        // due, the last message on its subject found), sent before new
        // ones.
        let mut ready: VecDeque<usize> = VecDeque::new();
        let mut delayed: Vec<(Instant, usize)> = Vec::new();
        let mut trouble: HashMap<usize, Trouble> = HashMap::new();
        let mut conflicts: HashMap<usize, (u32, Instant)> = HashMap::new();
        // What this batch knows of the last message on each subject.
        let mut tips: HashMap<String, Tip> = HashMap::new();
        let mut next = 0;
        let mut in_flight = FuturesUnordered::new();
        let meters = self.meters();

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
                // The sequence of the message it must follow on its
                // subject, when subjects are per aggregate.
                let mut follows = None;
                if chained {
                    let tip = match tips.get(&subject) {
                        Some(tip) => Some(*tip),
                        None => self.remembered(&subject),
                    };
                    let verdict = match tip {
                        Some(tip) => verdict(&tip, event),
                        // An aggregate's first event: its subject must be
                        // empty (if it is not, the stream says so).
                        None if event.aggregate_version == 1 => Verdict::Publish { expected: 0 },
                        None => {
                            self.counters.lookups.fetch_add(1, Ordering::Relaxed);
                            in_flight.push(Either::Right(found(&self.lookup, i, subject)));
                            continue;
                        }
                    };
                    match verdict {
                        Verdict::Publish { expected } => follows = Some(expected),
                        Verdict::Stored => {
                            // Published before (by this publisher before a
                            // restart, or another): not sent again.
                            trouble.remove(&i);
                            self.counters.already_stored.fetch_add(1, Ordering::Relaxed);
                            meters.already_stored.increment(1);
                            let slot = slot_of[i];
                            match parked.get_mut(&slot).and_then(VecDeque::pop_front) {
                                Some(successor) => ready.push_back(successor),
                                None => busy[slot] = false,
                            }
                            continue;
                        }
                        Verdict::Diverged(reason) => {
                            let found_sequence = tip.map_or(0, |t| t.sequence);
                            return Err(self.diverged(i, event, subject, found_sequence, reason));
                        }
                    }
                }
                let mut headers = headers::encode(event);
                headers.insert(
                    async_nats::header::NATS_EXPECTED_STREAM,
                    self.stream.as_str(),
                );
                if let Some(expected) = follows {
                    headers.insert(
                        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                        expected.to_string(),
                    );
                }
                let message = PublishMessage::build()
                    .payload(Bytes::copy_from_slice(event.payload.get().as_bytes()))
                    .headers(headers);
                // (The subject is kept for the acknowledgement only when
                // it is a chain's.)
                let (send_to, kept) = if chained {
                    (subject.clone(), subject)
                } else {
                    (subject, String::new())
                };
                match self.jetstream.send_publish(send_to, message).await {
                    Ok(ack) => {
                        in_flight.push(Either::Left(acked(i, kept, ack)));
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
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    self.counters.in_flight.store(in_flight.len(), Ordering::Relaxed);
                    meters.in_flight.set(in_flight.len() as f64);
                    match done {
                        Done::Acked(i, subject, Ok(ack)) => {
                            trouble.remove(&i);
                            let (counter, meter) = if ack.duplicate {
                                (&self.counters.duplicates, &meters.duplicates)
                            } else {
                                (&self.counters.published, &meters.published)
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            meter.increment(1);
                            self.counters.last_sequence.store(ack.sequence, Ordering::Relaxed);
                            if chained {
                                // (A duplicate's sequence is its first
                                // copy's: a later message there makes the
                                // next publish find it.)
                                let tip = Tip::of(&events[i], ack.sequence);
                                self.remember(&subject, tip);
                                tips.insert(subject, tip);
                            }
                            let slot = slot_of[i];
                            match parked.get_mut(&slot).and_then(VecDeque::pop_front) {
                                Some(successor) => ready.push_back(successor),
                                None => busy[slot] = false,
                            }
                        }
                        Done::Acked(i, subject, Err(error))
                            if chained && error.kind() == PublishErrorKind::WrongLastSequence =>
                        {
                            // Another publisher wrote on the subject since
                            // (or this one, before a restart): see what is
                            // there now.
                            self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                            let (count, since) = conflicts.entry(i).or_insert((0, Instant::now()));
                            *count += 1;
                            if *count > MAX_CONFLICTS {
                                let error = PublishError::Unavailable {
                                    stream: self.stream.clone(),
                                    event_id: events[i].event_id,
                                    subject,
                                    waited: since.elapsed(),
                                    attempts: *count,
                                    source: error,
                                };
                                tracing::warn!(publisher = self.name, %error, "the subject keeps moving, the batch is tried again");
                                return Err(BatchFailure::whole_batch(Transient::new(error)));
                            }
                            tips.remove(&subject);
                            self.counters.lookups.fetch_add(1, Ordering::Relaxed);
                            in_flight.push(Either::Right(found(&self.lookup, i, subject)));
                        }
                        Done::Acked(i, _, Err(error)) => {
                            self.failed(i, &events[i], error, false, &mut trouble, &mut delayed)?;
                        }
                        Done::Found(i, subject, Ok(message)) => {
                            let event = &events[i];
                            match headers::link(&message.headers) {
                                Ok(link) if link.same_aggregate(event) => {
                                    let tip = Tip {
                                        sequence: message.sequence,
                                        version: link.aggregate_version,
                                        position: link.global_position,
                                        event_id: link.event_id,
                                    };
                                    self.remember(&subject, tip);
                                    tips.insert(subject, tip);
                                }
                                Ok(link) => {
                                    let reason = format!(
                                        "is an event of another aggregate ({}/{}/{}): the subjects are not one per aggregate",
                                        link.bounded_context, link.aggregate_type, link.aggregate_id
                                    );
                                    return Err(self.diverged(i, event, subject, message.sequence, reason));
                                }
                                Err(error) => {
                                    let reason = format!("is not an es-nats event: {error}");
                                    return Err(self.diverged(i, event, subject, message.sequence, reason));
                                }
                            }
                            trouble.remove(&i);
                            ready.push_front(i);
                        }
                        Done::Found(i, subject, Err(error))
                            if error.kind() == LastRawMessageErrorKind::NoMessageFound =>
                        {
                            trouble.remove(&i);
                            tips.insert(subject, Tip::EMPTY);
                            ready.push_front(i);
                        }
                        Done::Found(i, subject, Err(error)) => {
                            let invalid = error.kind() == LastRawMessageErrorKind::InvalidSubject;
                            let error = NatsPublishError::with_source(PublishErrorKind::Other, error);
                            if invalid {
                                return Err(BatchFailure::at(
                                    i,
                                    PublishError::Refused {
                                        stream: self.stream.clone(),
                                        event_id: events[i].event_id,
                                        subject,
                                        source: error,
                                    },
                                ));
                            }
                            // The server is not there: looked up again
                            // when due, as a publish is sent again.
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

    fn diverged(
        &self,
        i: usize,
        event: &PersistedEvent,
        subject: String,
        found_sequence: u64,
        reason: String,
    ) -> BatchFailure {
        let error = PublishError::Diverged {
            stream: self.stream.clone(),
            event_id: event.event_id,
            subject,
            version: event.aggregate_version,
            found_sequence,
            reason,
        };
        tracing::error!(publisher = self.name, %error, "the stream holds another history");
        BatchFailure::at(i, error)
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

    async fn handle_page(
        &self,
        _ctx: &mut Context<'_, DB>,
        events: &[PersistedEvent],
    ) -> Result<(), BatchFailure> {
        self.publish_all(events).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_store::Event;

    fn event(version: i64, position: i64) -> PersistedEvent {
        let event = Event::new("B", "T", "a", "E", &serde_json::json!({})).unwrap();
        PersistedEvent::new(event, version, position)
    }

    #[test]
    fn the_last_message_on_a_subject_decides_what_is_sent() {
        let third = event(3, 30);
        let tip = Tip::of(&third, 7);
        // nothing there: the subject must stay empty until it is stored
        assert_eq!(
            verdict(&Tip::EMPTY, &event(1, 10)),
            Verdict::Publish { expected: 0 }
        );
        // the next version follows the last message
        assert_eq!(
            verdict(&tip, &event(4, 40)),
            Verdict::Publish { expected: 7 }
        );
        // the same event, or an earlier version: there already
        assert_eq!(verdict(&tip, &third), Verdict::Stored);
        assert_eq!(verdict(&tip, &event(2, 20)), Verdict::Stored);
        // what does not fit the store's history
        for (version, position) in [(3, 30), (2, 35), (4, 25)] {
            let found = verdict(&tip, &event(version, position));
            assert!(matches!(found, Verdict::Diverged(_)), "{found:?}");
        }
    }
}
