//! The other side: a durable JetStream consumer that hands out decoded,
//! upcast events with their envelope.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use es_aggregate::RetryPolicy;
use es_aggregate::projection::{EventSet, HandlerError};
use es_store::{DecodeError, PersistedEvent};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::headers::{self, EnvelopeError};
use crate::stream::nats_error;
use crate::{SetupError, Subjects};

/// One event as the consumer hands it to the handler: decoded (and
/// upcast) into `E`, with its envelope.
///
/// ```
/// # use es::DomainEvent;
/// # #[derive(Debug, DomainEvent)]
/// # #[event(bounded_context = "Billing", aggregate_type = "Account")]
/// # enum AccountEvent { Deposited { amount: i64 } }
/// fn describe(delivery: &es::nats::Delivery<AccountEvent>) -> String {
///     format!(
///         "{} v{} at {} (stream {}, delivery {}): {:?}",
///         delivery.aggregate_id(),
///         delivery.version(),
///         delivery.position(),
///         delivery.stream_sequence,
///         delivery.delivered,
///         delivery.event
///     )
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Delivery<E> {
    /// The event, decoded from the payload at the schema version the
    /// headers name (and upcast to the current one).
    pub event: E,
    /// What the store knew about it: ids, aggregate, version, global
    /// position, correlation, causation and trace ids, metadata,
    /// created_at, and the payload as stored.
    pub envelope: PersistedEvent,
    /// Where it is in the stream.
    pub stream_sequence: u64,
    /// How many times JetStream has delivered it (1 the first time).
    pub delivered: i64,
    /// The subject it was published on.
    pub subject: String,
}

impl<E> Delivery<E> {
    /// The event's global position in the store.
    pub fn position(&self) -> i64 {
        self.envelope.global_position
    }

    /// Its version in its aggregate.
    pub fn version(&self) -> i64 {
        self.envelope.aggregate_version
    }

    /// Its aggregate's id.
    pub fn aggregate_id(&self) -> &str {
        &self.envelope.aggregate_id
    }

    /// The event's id (unique: deduplicate on it for effects that must
    /// happen once even past the duplicate window).
    pub fn event_id(&self) -> uuid::Uuid {
        self.envelope.event_id
    }
}

/// What handles the consumer's events: any `Fn(Delivery<E>) -> impl
/// Future<Output = Result<(), HandlerError>>`, or a type of yours.
///
/// ```
/// # use es::DomainEvent;
/// # #[derive(Debug, DomainEvent)]
/// # #[event(bounded_context = "Billing", aggregate_type = "Account")]
/// # enum AccountEvent { Deposited { amount: i64 } }
/// use es::aggregate::projection::HandlerError;
/// use es::nats::{Delivery, EventHandler};
///
/// struct Totals(std::sync::Mutex<i64>);
///
/// impl EventHandler<AccountEvent> for Totals {
///     async fn handle(&self, delivery: Delivery<AccountEvent>) -> Result<(), HandlerError> {
///         let AccountEvent::Deposited { amount } = delivery.event;
///         *self.0.lock().unwrap() += amount;
///         Ok(())
///     }
/// }
/// ```
pub trait EventHandler<E>: Send + Sync {
    /// Handles one event. `Ok` acknowledges it.
    fn handle(
        &self,
        delivery: Delivery<E>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<E, F, Fut> EventHandler<E> for F
where
    F: Fn(Delivery<E>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(
        &self,
        delivery: Delivery<E>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(delivery)
    }
}

/// What the consumer does when the handler fails.
///
/// ```
/// use std::time::Duration;
/// use es::aggregate::RetryPolicy;
/// use es::nats::OnFailure;
///
/// let in_place = OnFailure::Retry(RetryPolicy::exponential(100, Duration::from_millis(50), Duration::from_secs(10)));
/// let later = OnFailure::Nak(Duration::from_secs(30)); // order of that aggregate not kept
/// assert_ne!(in_place, later);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Call the handler again after the policy's backoff, on the same
    /// message, telling JetStream the message is in progress (so it is not
    /// redelivered meanwhile): the events after it wait, so each
    /// aggregate's order is kept. When the attempts run out, the message is
    /// nak'ed (delivered again first to the next run) and
    /// [`run`](Consumer::run) stops with [`ConsumerError::Handler`]. The
    /// default: 10 attempts, from 100 ms up to 5 s apart.
    Retry(RetryPolicy),
    /// Nak the message with this delay and go on: JetStream delivers it
    /// again later (up to the consumer's `max_deliver`), so the
    /// aggregate's later events may be handled before it.
    Nak(Duration),
    /// Terminate the message (JetStream never delivers it again), log
    /// the error and go on.
    Term,
    /// Nak the message and stop at once with [`ConsumerError::Handler`].
    Stop,
}

impl Default for OnFailure {
    fn default() -> Self {
        OnFailure::Retry(RetryPolicy::exponential(
            10,
            Duration::from_millis(100),
            Duration::from_secs(5),
        ))
    }
}

/// What the consumer does with a message it cannot decode: not published
/// by es-nats, an event type `E` does not know, a schema version newer
/// than it knows, a payload that does not fit.
///
/// ```
/// // wait for a deployment that knows the newer versions
/// let policy = es::nats::OnUndecodable::Nak(std::time::Duration::from_secs(300));
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnUndecodable {
    /// Terminate it (never delivered again), log the error and go on. The
    /// default: delivering it again would fail again.
    Term,
    /// Nak it with this delay (for example until a deployment that knows a
    /// newer version) and go on.
    Nak(Duration),
    /// Nak it and stop with [`ConsumerError::Undecodable`].
    Stop,
}

/// Why a consumer stopped.
///
/// ```no_run
/// # use es::DomainEvent;
/// # #[derive(Debug, DomainEvent)]
/// # #[event(bounded_context = "Billing", aggregate_type = "Account")]
/// # enum AccountEvent { Deposited { amount: i64 } }
/// use es::nats::{Consumer, ConsumerError, Delivery};
///
/// # async fn demo(consumer: Consumer<AccountEvent>) {
/// let handler = |_: Delivery<AccountEvent>| async { Ok(()) };
/// match consumer.run(handler, std::future::pending()).await {
///     Err(ConsumerError::Handler { stream_sequence, source, .. }) => eprintln!("stuck at {stream_sequence}: {source}"),
///     Err(other) => eprintln!("{other}"),
///     Ok(()) => {}
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The stream or the consumer could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The handler failed and the policy gave up.
    #[error(
        "consumer `{consumer}`: the handler failed on event {event_id} (stream sequence {stream_sequence}) after {attempts} attempt(s): {source}"
    )]
    Handler {
        /// The consumer.
        consumer: String,
        /// The message's stream sequence.
        stream_sequence: u64,
        /// The event.
        event_id: uuid::Uuid,
        /// How many times the handler was called.
        attempts: u32,
        /// The handler's error.
        #[source]
        source: HandlerError,
    },
    /// A message could not be decoded and the policy is
    /// [`OnUndecodable::Stop`].
    #[error(
        "consumer `{consumer}`: message at stream sequence {stream_sequence} cannot be decoded: {source}"
    )]
    Undecodable {
        /// The consumer.
        consumer: String,
        /// The message's stream sequence.
        stream_sequence: u64,
        /// Why.
        #[source]
        source: Undecodable,
    },
    /// The connection or the server failed.
    #[error("consumer `{consumer}` could not {what}: {source}")]
    Nats {
        /// The consumer.
        consumer: String,
        /// What it was doing.
        what: &'static str,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
}

/// Why a message could not be decoded.
///
/// ```
/// use es::nats::Undecodable;
/// let error = Undecodable::from(es::nats::headers::EnvelopeError::Missing("Es-Event-Id"));
/// assert!(error.to_string().contains("Es-Event-Id"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Undecodable {
    /// Its headers are not an es-nats envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Its payload is not an event of `E` (see [`DecodeError`]).
    #[error(transparent)]
    Event(#[from] DecodeError),
}

/// A durable JetStream pull consumer of a publisher's stream, handing each
/// event to your handler decoded into `E` (a `#[derive(DomainEvent)]`
/// enum, or several joined with [`es_aggregate::event_set!`]), upcast from
/// the schema version in its headers through
/// [`DomainEvent::decode_json`](es_store::DomainEvent::decode_json), with
/// its envelope. Each message is acknowledged after the handler returned
/// `Ok` (one at a time, in stream order, so each aggregate's events are
/// handled in version order); messages of aggregates `E` does not cover
/// are acknowledged without calling it.
///
/// **Order across restarts and crashes**: the consumer pulls messages
/// ahead of the handler, and what a run pulled without acknowledging it
/// (a crash, an aborted task, a lost connection) stays pending on the
/// server until its ack wait runs out, then comes again, after newer
/// messages were delivered. The consumer handles a message only when
/// everything delivered before it is acknowledged or in its hands, and
/// holds the rest meanwhile: see [`run`](Self::run). Each aggregate's
/// events are first handled in version order, restarts or not; a
/// restart after a crash waits about the ack wait for what was left
/// pending (after a graceful stop, not at all). This holds for one
/// running [`run`](Self::run) per durable consumer, and not for the
/// [`OnFailure::Nak`] and [`OnUndecodable::Nak`] policies, which hand a
/// message back to come later by design.
///
/// Delivery is **at least once**: a handler whose acknowledgement is
/// lost (a crash right after it, a connection dropped) sees the event
/// again, with [`Delivery::delivered`] above 1, before any later event.
/// Deduplicate on [`Delivery::event_id`] where an effect must happen
/// once; see [`ConsumerBuilder::double_ack`] to narrow the window.
///
/// Failures: [`OnFailure`] (by default the handler is retried in place,
/// then the consumer stops), [`OnUndecodable`] (by default the message is
/// terminated and logged).
///
/// ```no_run
/// # use es::DomainEvent;
/// # #[derive(Debug, DomainEvent)]
/// # #[event(bounded_context = "Billing", aggregate_type = "Account")]
/// # enum AccountEvent { Deposited { amount: i64 } }
/// use es::nats::{Consumer, Delivery};
///
/// # async fn demo(shutdown: impl std::future::Future<Output = ()>) -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// // durable: it resumes where it stopped, across restarts
/// let consumer = Consumer::<AccountEvent>::builder(client, "EVENTS", "mailer").build().await?;
/// consumer
///     .run(
///         |delivery: Delivery<AccountEvent>| async move {
///             if let AccountEvent::Deposited { amount } = delivery.event {
///                 println!("{} got {amount} (version {})", delivery.aggregate_id(), delivery.version());
///             }
///             Ok(())
///         },
///         shutdown,
///     )
///     .await?;
/// # Ok(()) }
/// ```
pub struct Consumer<E> {
    name: String,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    on_failure: OnFailure,
    on_undecodable: OnUndecodable,
    double_ack: bool,
    batch: usize,
    /// How often a message held (or being handled) is told to be in
    /// progress: a third of the consumer's ack wait.
    progress_every: Duration,
    /// How long the consumer waits at most for messages delivered before
    /// (and not acknowledged) to come back before it goes on without them:
    /// three times their redelivery delay (the ack wait, or the longest
    /// backoff) and 2 s. They come back after one (two, when a redelivery
    /// lands on a crashed run's pull request still waiting on the server):
    /// this only keeps a consumer going when they never will (another run
    /// of the same durable consumer holds them, or they were nak'ed with a
    /// longer delay).
    redelivery_bound: Duration,
    events: PhantomData<fn() -> E>,
}

/// How long one pull request waits for messages before the server ends
/// it; what a graceful shutdown may wait for those in flight.
const PULL_WAIT: Duration = Duration::from_millis(500);

/// How often the consumer asks the server, while it waits for messages
/// delivered before, whether they are all in its hands.
const RECHECK: Duration = Duration::from_millis(200);

/// Stream sequences of messages handled lately: a copy delivered again
/// after it was handled (its ack wait ran out just before the ack) is
/// acknowledged without handling it again.
const RECENT: usize = 4096;

impl<E> std::fmt::Debug for Consumer<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("on_failure", &self.on_failure)
            .field("on_undecodable", &self.on_undecodable)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Consumer`]; see [`Consumer::builder`].
///
/// ```no_run
/// # use es::DomainEvent;
/// # #[derive(Debug, DomainEvent)]
/// # #[event(bounded_context = "Billing", aggregate_type = "Account")]
/// # enum AccountEvent { Deposited { amount: i64 } }
/// use std::time::Duration;
/// use es::nats::{Consumer, OnFailure, OnUndecodable, Subjects};
///
/// # async fn demo(client: async_nats::Client) -> Result<(), es::nats::ConsumerError> {
/// let consumer = Consumer::<AccountEvent>::builder(client, "BILLING", "ledger")
///     .subjects(Subjects::prefixed("billing")) // as the publisher's
///     .ack_wait(Duration::from_secs(60))
///     .max_ack_pending(500)
///     .batch(100)
///     .on_failure(OnFailure::Stop)
///     .on_undecodable(OnUndecodable::Stop)
///     .double_ack(true)
///     .build()
///     .await?;
/// println!("{} pending", consumer.info().await?.num_pending);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct ConsumerBuilder<E> {
    client: async_nats::Client,
    stream: String,
    name: String,
    subjects: Subjects,
    filter: Option<String>,
    ack_wait: Duration,
    max_ack_pending: i64,
    deliver: pull::Config,
    on_failure: OnFailure,
    on_undecodable: OnUndecodable,
    double_ack: bool,
    batch: usize,
    events: PhantomData<fn() -> E>,
}

impl<E: EventSet> Consumer<E> {
    /// A durable consumer named `name` of the stream `stream`. Only the
    /// aggregates `E` covers are asked for: with one aggregate type, the
    /// consumer filters on its subjects (of the [default
    /// scheme](Subjects::default), or [`subjects`](ConsumerBuilder::subjects));
    /// otherwise it receives the stream's messages and acknowledges the
    /// others without handing them out.
    pub fn builder(
        client: async_nats::Client,
        stream: impl Into<String>,
        name: impl Into<String>,
    ) -> ConsumerBuilder<E> {
        ConsumerBuilder {
            client,
            stream: stream.into(),
            name: name.into(),
            subjects: Subjects::default(),
            filter: None,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            deliver: pull::Config::default(),
            on_failure: OnFailure::default(),
            on_undecodable: OnUndecodable::Term,
            double_ack: false,
            batch: 256,
            events: PhantomData,
        }
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The consumer's state on the server: what it has delivered, what is
    /// pending (not yet delivered: its lag in messages) and what awaits an
    /// acknowledgement.
    pub async fn info(&self) -> Result<jetstream::consumer::Info, ConsumerError> {
        self.consumer
            .get_info()
            .await
            .map_err(|e| self.nats("read its info", e))
    }

    fn nats(
        &self,
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ConsumerError {
        ConsumerError::Nats {
            consumer: self.name.clone(),
            what,
            source: Box::new(source),
        }
    }

    /// Handles messages until `shutdown` completes (checked between
    /// messages: the one being handled is finished and acknowledged
    /// first; the messages pulled and not handled yet are handed back, to
    /// be delivered again at once to the next run, which takes up to half
    /// a second: the pull requests in flight are waited for). The
    /// connection's losses and the server's restarts are ridden out (the
    /// client reconnects, and the pulls resume). Pull requests for
    /// [`batch`](ConsumerBuilder::batch) messages are kept ahead of the
    /// handler, all answered on one inbox, so that deliveries arrive in
    /// the order the server sends them.
    ///
    /// **Order across restarts**: a message is handled only when every
    /// message delivered before it has been acknowledged or is in this
    /// consumer's hands. Messages a previous run (or a crashed process)
    /// pulled and never acknowledged stay pending on the server until their
    /// ack wait runs out; so do messages lost with a connection. When the
    /// server has such messages (at the start, or when a delivery is
    /// missing), the consumer holds what it receives (telling the server
    /// it is in progress) until the missing ones are redelivered, then
    /// handles all of them in stream order. After a crash that is about
    /// the consumer's ack wait ([`ConsumerBuilder::ack_wait`]); after a
    /// graceful shutdown, nothing. One `run` per durable consumer at a
    /// time: a second one consuming the same durable makes each wait for
    /// the other's messages (three ack waits, then it goes on without
    /// them, logging a warning) and takes order away.
    pub async fn run(
        &self,
        handler: impl EventHandler<E>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumerError> {
        tokio::pin!(shutdown);
        let mut order = Order::default();
        let mut puller = loop {
            match Puller::new(&self.client, self.batch).await {
                Ok(puller) => break puller,
                Err(error) => {
                    tracing::warn!(consumer = self.name, %error, "could not subscribe, trying again");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        };
        loop {
            if !order.started {
                // What the server delivered and has not had acknowledged:
                // a previous run's messages.
                let info = tokio::select! {
                    biased;
                    () = &mut shutdown => return self.stop(&mut order, &mut puller).await,
                    info = self.consumer.get_info() => info,
                };
                match info {
                    Ok(info) => order.start(&info, self),
                    Err(error) => {
                        tracing::warn!(consumer = self.name, %error, "could not read the consumer's state, trying again");
                        tokio::select! {
                            biased;
                            () = &mut shutdown => return self.stop(&mut order, &mut puller).await,
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        continue;
                    }
                }
            }
            if let Err(error) = puller.request_more(&self.consumer).await {
                tracing::warn!(consumer = self.name, %error, "could not pull, trying again");
                tokio::select! {
                    biased;
                    () = &mut shutdown => return self.stop(&mut order, &mut puller).await,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            // held messages released: handled one at a time, in stream
            // order, before anything received after them
            let draining = order.waiting_since.is_none() && !order.held.is_empty();
            let due = order.due();
            let next = tokio::select! {
                biased;
                () = &mut shutdown => return self.stop(&mut order, &mut puller).await,
                () = sleep_until(due), if due.is_some() => {
                    self.tick(&mut order).await?;
                    continue;
                }
                () = std::future::ready(()), if draining => {
                    if let Some((stream_sequence, message)) = order.held.pop_first() {
                        self.deliver(&handler, &mut order, stream_sequence, message).await?;
                    }
                    continue;
                }
                // requests the server has forgotten (a restart) are
                // given up, and new ones sent
                () = tokio::time::sleep_until(puller.silent_until()) => continue,
                next = puller.subscriber.next() => next,
            };
            let Some(message) = next else {
                return Err(self.nats("pull", DisplayError("the connection was closed".to_owned())));
            };
            match puller.take(message) {
                Pulled::Message(message) => {
                    let message = jetstream::Message {
                        message,
                        context: self.jetstream.clone(),
                    };
                    self.receive(&handler, &mut order, message).await?;
                }
                Pulled::Status => {}
                Pulled::Unavailable => {
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return self.stop(&mut order, &mut puller).await,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Pulled::Refused(why) => {
                    return Err(self.nats("pull", DisplayError(why)));
                }
            }
        }
    }

    /// Hands `message` to the handler, or holds it while something
    /// delivered before it is missing.
    async fn receive(
        &self,
        handler: &impl EventHandler<E>,
        order: &mut Order,
        message: jetstream::Message,
    ) -> Result<(), ConsumerError> {
        let (stream_sequence, delivery) = match message.info() {
            Ok(info) => (info.stream_sequence, info.consumer_sequence),
            Err(error) => {
                return Err(self.nats("read a message's info", DisplayError(error.to_string())));
            }
        };
        if order.recent_set.contains(&stream_sequence) {
            // handled already: a copy delivered again as it was acknowledged
            return self.ack(&message, AckKind::Ack).await;
        }
        // Every delivery takes the next consumer sequence: a jump means a
        // delivery did not reach this run (lost with a connection, or
        // taken by another run of the same durable consumer).
        if order.last_delivery.is_some_and(|last| delivery != last + 1) {
            tracing::debug!(consumer = self.name, delivery, last = ?order.last_delivery, "a delivery is missing: holding what comes until it is back");
            order.waiting_since.get_or_insert_with(Instant::now);
        }
        order.last_delivery = Some(delivery);
        if order.waiting_since.is_none() && order.held.is_empty() {
            return self.deliver(handler, order, stream_sequence, message).await;
        }
        order.held.insert(stream_sequence, message);
        if order
            .last_check
            .is_none_or(|at| at.elapsed() >= Duration::from_millis(50))
        {
            self.try_release(order).await;
        }
        Ok(())
    }

    /// Keeps held messages from being delivered again, and asks whether
    /// the missing ones are back.
    async fn tick(&self, order: &mut Order) -> Result<(), ConsumerError> {
        let now = Instant::now();
        if !order.held.is_empty() && order.next_progress.is_none_or(|at| at <= now) {
            for message in order.held.values() {
                self.ack(message, AckKind::Progress).await?;
            }
            order.next_progress = Some(now + self.progress_every);
        }
        if order.waiting_since.is_some() && order.last_check.is_none_or(|at| at + RECHECK <= now) {
            self.try_release(order).await;
        }
        Ok(())
    }

    /// Releases the held messages (to be handled in stream order) once
    /// every message the server has delivered and not had acknowledged is
    /// among them (or once the missing ones had all the time their
    /// redelivery takes).
    async fn try_release(&self, order: &mut Order) {
        let Some(since) = order.waiting_since else {
            return;
        };
        order.last_check = Some(Instant::now());
        let pending = match self.consumer.get_info().await {
            Ok(info) => info.num_ack_pending,
            Err(error) => {
                tracing::debug!(consumer = self.name, %error, "could not read the consumer's state");
                return;
            }
        };
        let all_here = pending <= order.held.len();
        if !all_here && since.elapsed() < self.redelivery_bound {
            order.next_progress.get_or_insert_with(Instant::now);
            return;
        }
        if !all_here {
            tracing::warn!(
                consumer = self.name,
                missing = pending - order.held.len(),
                waited = ?since.elapsed(),
                "messages delivered before are still unacknowledged past their redelivery (another run consuming this durable consumer, or nak'ed with a delay): going on without them"
            );
        }
        order.waiting_since = None;
    }

    /// A graceful stop: what was pulled and not handled is nak'ed, to be
    /// delivered again at once to the next run.
    async fn stop(&self, order: &mut Order, puller: &mut Puller) -> Result<(), ConsumerError> {
        for message in std::mem::take(&mut order.held).into_values() {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
        // the pull requests in flight: what has come and what comes until
        // they end (no new ones are sent)
        let deadline = Instant::now() + PULL_WAIT + Duration::from_millis(200);
        while puller.outstanding > 0 {
            let Ok(Some(message)) =
                tokio::time::timeout_at(deadline, puller.subscriber.next()).await
            else {
                break;
            };
            if let Pulled::Message(message) = puller.take(message) {
                let message = jetstream::Message {
                    message,
                    context: self.jetstream.clone(),
                };
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
        }
        if let Err(error) = self.client.flush().await {
            tracing::debug!(consumer = self.name, %error, "could not flush the naks");
        }
        Ok(())
    }

    /// Decodes one message, hands it to the handler under the failure
    /// policy, and acknowledges it.
    async fn deliver(
        &self,
        handler: &impl EventHandler<E>,
        order: &mut Order,
        stream_sequence: u64,
        message: jetstream::Message,
    ) -> Result<(), ConsumerError> {
        let handled = self.deliver_once(handler, &message).await;
        if let Ok(true) = handled {
            order.recent(stream_sequence);
        }
        handled.map(|_| ())
    }

    /// [`deliver`](Self::deliver); `Ok(true)` when the message was
    /// acknowledged (or terminated) and is done with.
    async fn deliver_once(
        &self,
        handler: &impl EventHandler<E>,
        message: &jetstream::Message,
    ) -> Result<bool, ConsumerError> {
        let (stream_sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(error) => {
                return Err(self.nats("read a message's info", DisplayError(error.to_string())));
            }
        };
        let decode = || -> Result<Option<(E, PersistedEvent)>, Undecodable> {
            let empty = async_nats::HeaderMap::new();
            let headers = message.headers.as_ref().unwrap_or(&empty);
            let envelope = headers::decode(headers, &message.payload)?;
            match E::decode(&envelope) {
                None => Ok(None),
                Some(event) => Ok(Some((event?, envelope))),
            }
        };
        let mut attempts = 0u32;
        loop {
            let (event, envelope) = match decode() {
                Ok(Some(decoded)) => decoded,
                // not ours
                Ok(None) => return self.ack(message, AckKind::Ack).await.map(|()| true),
                Err(source) => {
                    tracing::error!(consumer = self.name, stream_sequence, error = %source, "message cannot be decoded");
                    return match self.on_undecodable {
                        OnUndecodable::Term => {
                            self.ack(message, AckKind::Term).await.map(|()| true)
                        }
                        OnUndecodable::Nak(delay) => self
                            .ack(message, AckKind::Nak(Some(delay)))
                            .await
                            .map(|()| false),
                        OnUndecodable::Stop => {
                            self.ack(message, AckKind::Nak(None)).await?;
                            Err(ConsumerError::Undecodable {
                                consumer: self.name.clone(),
                                stream_sequence,
                                source,
                            })
                        }
                    };
                }
            };
            let event_id = envelope.event_id;
            attempts += 1;
            let delivery = Delivery {
                event,
                envelope,
                stream_sequence,
                delivered,
                subject: message.subject.to_string(),
            };
            let error = match self.in_progress(message, handler.handle(delivery)).await {
                Ok(()) => {
                    return if self.double_ack {
                        message
                            .double_ack()
                            .await
                            .map(|()| true)
                            .map_err(|e| self.nats("acknowledge", DisplayError(e.to_string())))
                    } else {
                        self.ack(message, AckKind::Ack).await.map(|()| true)
                    };
                }
                Err(error) => error,
            };
            let give_up = |source| ConsumerError::Handler {
                consumer: self.name.clone(),
                stream_sequence,
                event_id,
                attempts,
                source,
            };
            tracing::warn!(consumer = self.name, stream_sequence, %event_id, attempts, %error, "handler failed");
            match self.on_failure {
                OnFailure::Retry(policy) if attempts < policy.max_attempts() => {
                    self.ack(message, AckKind::Progress).await?;
                    self.in_progress(message, tokio::time::sleep(policy.backoff(attempts)))
                        .await;
                }
                OnFailure::Retry(_) | OnFailure::Stop => {
                    self.ack(message, AckKind::Nak(None)).await?;
                    return Err(give_up(error));
                }
                OnFailure::Nak(delay) => {
                    return self
                        .ack(message, AckKind::Nak(Some(delay)))
                        .await
                        .map(|()| false);
                }
                OnFailure::Term => {
                    tracing::error!(consumer = self.name, stream_sequence, %event_id, %error, "message terminated after the handler failed");
                    return self.ack(message, AckKind::Term).await.map(|()| true);
                }
            }
        }
    }

    /// Runs `work` on `message`, telling the server every third of the ack
    /// wait that it is in progress (so that a slow handler's message is
    /// not delivered again meanwhile).
    async fn in_progress<T>(
        &self,
        message: &jetstream::Message,
        work: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                done = &mut work => return done,
                () = tokio::time::sleep(self.progress_every) => {
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(consumer = self.name, %error, "could not say a message is in progress");
                    }
                }
            }
        }
    }

    async fn ack(&self, message: &jetstream::Message, kind: AckKind) -> Result<(), ConsumerError> {
        message
            .ack_with(kind)
            .await
            .map_err(|e| self.nats("acknowledge", DisplayError(e.to_string())))
    }
}

/// The pull requests of a run, all answered on one inbox: the server
/// spreads messages over the requests waiting (round robin), so only one
/// inbox keeps them in the order it sends them. A new request goes out
/// when less than half a batch is on its way, so that messages keep
/// coming while the handler works.
struct Puller {
    subscriber: async_nats::Subscriber,
    inbox: async_nats::Subject,
    batch: usize,
    /// Messages asked for that the server has neither sent nor given up.
    outstanding: usize,
    /// When the server was last heard from (or asked).
    heard: Instant,
}

/// What came on a run's inbox.
enum Pulled {
    Message(async_nats::Message),
    /// A request ended or a heartbeat: nothing to handle.
    Status,
    /// No JetStream answered (or another status): the requests are gone,
    /// asked again after a pause.
    Unavailable,
    /// The server will not serve this consumer (deleted, push based, a
    /// request refused for good).
    Refused(String),
}

impl Puller {
    async fn new(
        client: &async_nats::Client,
        batch: usize,
    ) -> Result<Puller, async_nats::SubscribeError> {
        let inbox = async_nats::Subject::from(client.new_inbox());
        let subscriber = client.subscribe(inbox.clone()).await?;
        Ok(Puller {
            subscriber,
            inbox,
            batch,
            outstanding: 0,
            heard: Instant::now(),
        })
    }

    /// Until when a silent server is waited for with requests out: each
    /// ends (a message or a timeout status) within its wait.
    fn silent_until(&self) -> Instant {
        self.heard + PULL_WAIT + Duration::from_secs(1)
    }

    /// Asks for a batch when less than half of one is on its way.
    async fn request_more(
        &mut self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
    ) -> Result<(), pull::BatchRequestError> {
        if self.outstanding > 0 && Instant::now() >= self.silent_until() {
            // lost with a connection or a server restart
            self.outstanding = 0;
        }
        if self.outstanding > self.batch / 2 {
            return Ok(());
        }
        let request = pull::BatchConfig {
            batch: self.batch,
            expires: Some(PULL_WAIT),
            ..Default::default()
        };
        consumer.request_batch(request, self.inbox.clone()).await?;
        self.outstanding += self.batch;
        self.heard = Instant::now();
        Ok(())
    }

    /// Accounts for what came.
    fn take(&mut self, message: async_nats::Message) -> Pulled {
        self.heard = Instant::now();
        match message.status {
            None | Some(async_nats::StatusCode::OK) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                Pulled::Message(message)
            }
            Some(async_nats::StatusCode::IDLE_HEARTBEAT) => Pulled::Status,
            Some(async_nats::StatusCode::TIMEOUT | async_nats::StatusCode::REQUEST_TERMINATED) => {
                let description = message.description.as_deref().unwrap_or_default();
                if description == "Consumer Deleted"
                    || description == "Consumer is push based"
                    || description.starts_with("Exceeded MaxRequest")
                {
                    return Pulled::Refused(description.to_owned());
                }
                // a request ended: what it had not delivered is not coming
                let left = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Pending-Messages"))
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(self.batch);
                self.outstanding = self.outstanding.saturating_sub(left);
                Pulled::Status
            }
            Some(status) => {
                // no responders (JetStream away), or another status: the
                // requests are gone; ask again after a while
                tracing::debug!(%status, description = ?message.description, "pull status");
                self.outstanding = 0;
                Pulled::Unavailable
            }
        }
    }
}

/// What a run knows about the order of its deliveries.
#[derive(Default)]
struct Order {
    /// Whether the consumer's state was read at the start.
    started: bool,
    /// The consumer sequence of the last delivery received.
    last_delivery: Option<u64>,
    /// Since when something delivered before may be missing (pending at
    /// the start, or a delivery that did not arrive).
    waiting_since: Option<Instant>,
    /// What came meanwhile, by stream sequence.
    held: BTreeMap<u64, jetstream::Message>,
    /// When the held messages are next said to be in progress.
    next_progress: Option<Instant>,
    /// When the server was last asked.
    last_check: Option<Instant>,
    /// Stream sequences handled lately.
    recent_set: HashSet<u64>,
    recent_order: VecDeque<u64>,
}

impl Order {
    fn start<E>(&mut self, info: &jetstream::consumer::Info, consumer: &Consumer<E>) {
        self.started = true;
        self.last_delivery = Some(info.delivered.consumer_sequence);
        if info.num_ack_pending > 0 {
            tracing::info!(
                consumer = consumer.name,
                pending = info.num_ack_pending,
                "messages delivered before are unacknowledged: they are handled first, when they are delivered again"
            );
            self.waiting_since = Some(Instant::now());
        }
    }

    /// When the run next has something to do besides receiving.
    fn due(&self) -> Option<Instant> {
        let check = self
            .waiting_since
            .map(|_| self.last_check.map_or_else(Instant::now, |at| at + RECHECK));
        let progress = if self.held.is_empty() {
            None
        } else {
            self.next_progress
        };
        match (check, progress) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn recent(&mut self, stream_sequence: u64) {
        if self.recent_set.insert(stream_sequence) {
            self.recent_order.push_back(stream_sequence);
            if self.recent_order.len() > RECENT
                && let Some(old) = self.recent_order.pop_front()
            {
                self.recent_set.remove(&old);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A client error that is only text (async-nats's boxed errors are not
/// `'static + Sized` errors of their own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DisplayError(String);

impl<E: EventSet> ConsumerBuilder<E> {
    /// The publisher's subject scheme, for the default filter (default
    /// [`Subjects::default`]).
    pub fn subjects(mut self, subjects: Subjects) -> Self {
        self.subjects = subjects;
        self
    }

    /// The consumer's subject filter, instead of the one derived from `E`.
    pub fn filter_subject(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// How long JetStream waits for an acknowledgement before delivering
    /// a message again (default 30 s): also about how long a restarted
    /// consumer waits, after a crash, for the messages its predecessor
    /// pulled and never acknowledged (it handles nothing later before
    /// them). A handler that runs long, or is retried in place, keeps its
    /// message in progress (told every third of the ack wait), so a short
    /// ack wait is safe. At most [`MAX_ACK_WAIT`] (0 lets the server
    /// choose its default); a longer one is refused by
    /// [`build`](Self::build) with [`SetupError::InvalidSetting`].
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Messages delivered and not yet acknowledged at most (default 1000):
    /// also the most a consumer holds while it waits for messages
    /// delivered before.
    pub fn max_ack_pending(mut self, max: i64) -> Self {
        self.max_ack_pending = max;
        self
    }

    /// Messages asked for by one pull request (default 256; the next is
    /// sent when less than half of one is on its way): about what a crash
    /// leaves pending, to be delivered again after the ack wait.
    /// 1..=[`MAX_CONSUMER_BATCH`] (0 is taken as 1); a larger batch is
    /// refused by [`build`](Self::build) with [`SetupError::InvalidSetting`].
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// What to do when the handler fails (default [`OnFailure::default`]).
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// What to do with a message that cannot be decoded (default
    /// [`OnUndecodable::Term`]).
    pub fn on_undecodable(mut self, policy: OnUndecodable) -> Self {
        self.on_undecodable = policy;
        self
    }

    /// Whether each acknowledgement waits for the server's confirmation
    /// (default: no). With it, an event whose handler succeeded is not
    /// delivered again because its acknowledgement was lost; it costs a
    /// round trip per event.
    pub fn double_ack(mut self, double: bool) -> Self {
        self.double_ack = double;
        self
    }

    /// The rest of the consumer's configuration (deliver policy, max
    /// deliver, backoff, replicas, ...): its durable name, filter, ack
    /// policy, ack wait and max ack pending are set from the builder.
    pub fn config(mut self, config: pull::Config) -> Self {
        self.deliver = config;
        self
    }

    /// Creates the durable consumer, or binds to it if it exists (a
    /// consumer keeps the configuration it was created with). A setting
    /// out of its range is refused first, with
    /// [`SetupError::InvalidSetting`] (in [`ConsumerError::Setup`]).
    pub async fn build(self) -> Result<Consumer<E>, ConsumerError> {
        self.check()?;
        let client = self.client.clone();
        let jetstream = jetstream::new(self.client);
        let stream = jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|e| nats_error(&jetstream, "find the stream", e))?;
        let aggregates = E::aggregates();
        let filter = match (&self.filter, aggregates.as_slice()) {
            (Some(filter), _) => filter.clone(),
            (None, [(context, kind)]) => self
                .subjects
                .aggregate_type_filter(context, kind)
                .unwrap_or_default(),
            (None, _) => String::new(),
        };
        let config = pull::Config {
            durable_name: Some(self.name.clone()),
            filter_subject: filter,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending,
            ..self.deliver
        };
        let consumer = stream
            .get_or_create_consumer(&self.name, config)
            .await
            .map_err(|e| nats_error(&jetstream, "create the consumer", e))?;
        // The consumer's own settings (an existing one keeps those it was
        // created with).
        let config = &consumer.cached_info().config;
        let ack_wait = if config.ack_wait.is_zero() {
            Duration::from_secs(30)
        } else {
            config.ack_wait
        };
        let longest = config
            .backoff
            .iter()
            .copied()
            .max()
            .unwrap_or_default()
            .max(ack_wait);
        Ok(Consumer {
            name: self.name,
            client,
            jetstream,
            consumer,
            on_failure: self.on_failure,
            on_undecodable: self.on_undecodable,
            double_ack: self.double_ack,
            batch: self.batch,
            progress_every: (ack_wait / 3).max(Duration::from_millis(100)),
            redelivery_bound: longest * 3 + Duration::from_secs(2),
            events: PhantomData,
        })
    }
}

/// The most messages a [`Consumer`] pulls at a time
/// ([`ConsumerBuilder::batch`]): they are held in memory until handled.
pub const MAX_CONSUMER_BATCH: usize = 10_000;

/// The longest [`ConsumerBuilder::ack_wait`]: a message whose handler
/// died is delivered again after it.
pub const MAX_ACK_WAIT: Duration = Duration::from_secs(24 * 3600);

impl<E> ConsumerBuilder<E> {
    /// Refuses settings out of their range, before anything is sent.
    fn check(&self) -> Result<(), SetupError> {
        let (setting, value, allowed) = if self.batch > MAX_CONSUMER_BATCH {
            (
                "batch",
                self.batch.to_string(),
                format!("1..={MAX_CONSUMER_BATCH}"),
            )
        } else if self.ack_wait > MAX_ACK_WAIT {
            (
                "ack_wait",
                format!("{:?}", self.ack_wait),
                format!("0s..={MAX_ACK_WAIT:?}"),
            )
        } else {
            return Ok(());
        };
        Err(SetupError::InvalidSetting {
            setting,
            value,
            allowed,
        })
    }
}
