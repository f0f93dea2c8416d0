//! The other side: a durable JetStream consumer that hands out decoded,
//! upcast events with their envelope.

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use es_aggregate::RetryPolicy;
use es_aggregate::projection::{EventSet, HandlerError};
use es_store::{DecodeError, PersistedEvent};
use futures_util::StreamExt;

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
/// Delivery is **at least once**: a handler whose acknowledgement is
/// lost (a crash right after it, a connection dropped) sees the event
/// again, with [`Delivery::delivered`] above 1. Deduplicate on
/// [`Delivery::event_id`] where an effect must happen once; see
/// [`ConsumerBuilder::double_ack`] to narrow the window.
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
    consumer: jetstream::consumer::Consumer<pull::Config>,
    on_failure: OnFailure,
    on_undecodable: OnUndecodable,
    double_ack: bool,
    batch: usize,
    events: PhantomData<fn() -> E>,
}

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
    /// first). The connection's losses and the server's restarts are
    /// ridden out (the client reconnects, and the pull resumes).
    pub async fn run(
        &self,
        handler: impl EventHandler<E>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumerError> {
        tokio::pin!(shutdown);
        loop {
            let mut messages = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                messages = self.consumer.stream().max_messages_per_batch(self.batch).messages() => {
                    match messages {
                        Ok(messages) => messages,
                        Err(error) => {
                            tracing::warn!(consumer = self.name, %error, "could not pull, trying again");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(()),
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => self.deliver(&handler, message).await?,
                    Some(Err(error)) => {
                        // missed heartbeats, a reconnect: the stream goes on
                        tracing::debug!(consumer = self.name, %error, "pull interrupted");
                    }
                    None => break,
                }
            }
        }
    }

    /// Decodes one message, hands it to the handler under the failure
    /// policy, and acknowledges it.
    async fn deliver(
        &self,
        handler: &impl EventHandler<E>,
        message: jetstream::Message,
    ) -> Result<(), ConsumerError> {
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
                Ok(None) => return self.ack(&message, AckKind::Ack).await, // not ours
                Err(source) => {
                    tracing::error!(consumer = self.name, stream_sequence, error = %source, "message cannot be decoded");
                    return match self.on_undecodable {
                        OnUndecodable::Term => self.ack(&message, AckKind::Term).await,
                        OnUndecodable::Nak(delay) => {
                            self.ack(&message, AckKind::Nak(Some(delay))).await
                        }
                        OnUndecodable::Stop => {
                            self.ack(&message, AckKind::Nak(None)).await?;
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
            let error = match handler.handle(delivery).await {
                Ok(()) => {
                    return if self.double_ack {
                        message
                            .double_ack()
                            .await
                            .map_err(|e| self.nats("acknowledge", DisplayError(e.to_string())))
                    } else {
                        self.ack(&message, AckKind::Ack).await
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
                    self.ack(&message, AckKind::Progress).await?;
                    tokio::time::sleep(policy.backoff(attempts)).await;
                }
                OnFailure::Retry(_) | OnFailure::Stop => {
                    self.ack(&message, AckKind::Nak(None)).await?;
                    return Err(give_up(error));
                }
                OnFailure::Nak(delay) => {
                    return self.ack(&message, AckKind::Nak(Some(delay))).await;
                }
                OnFailure::Term => {
                    tracing::error!(consumer = self.name, stream_sequence, %event_id, %error, "message terminated after the handler failed");
                    return self.ack(&message, AckKind::Term).await;
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
    /// a message again (default 30 s). A handler retried in place keeps
    /// its message in progress. At most [`MAX_ACK_WAIT`] (0 lets the
    /// server choose its default); a longer one is refused by
    /// [`build`](Self::build) with [`SetupError::InvalidSetting`].
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Messages delivered and not yet acknowledged at most (default 1000).
    pub fn max_ack_pending(mut self, max: i64) -> Self {
        self.max_ack_pending = max;
        self
    }

    /// Messages pulled at a time (default 256): 1..=[`MAX_CONSUMER_BATCH`]
    /// (0 is taken as 1); a larger batch is refused by
    /// [`build`](Self::build) with [`SetupError::InvalidSetting`].
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
        Ok(Consumer {
            name: self.name,
            consumer,
            on_failure: self.on_failure,
            on_undecodable: self.on_undecodable,
            double_ack: self.double_ack,
            batch: self.batch,
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
