//! Publishing the store's feed to NATS JetStream, and consuming it.
//!
//! - [`Publisher`] is a projection: run by a
//!   [`ProjectionProcessor`](es_aggregate::ProjectionProcessor), it follows
//!   the gap-safe global feed with the processor's checkpoints,
//!   partitions, claims across processes, error policies and status, and
//!   publishes each event to a JetStream stream (subject from the bounded
//!   context, aggregate type and id, see [`Subjects`]; the payload as is;
//!   the envelope in [`headers`]; `Nats-Msg-Id` = the event id). A batch's
//!   checkpoint commits only after JetStream acknowledged all of it, with
//!   a bounded number of publishes in flight; per aggregate, events are
//!   stored in version order.
//! - [`StreamSettings`] creates the stream or checks it (subjects,
//!   retention, storage, duplicate window), and says when the server has
//!   no JetStream ([`SetupError::NoJetStream`]).
//! - [`Consumer`] is a durable pull consumer for the other side: it decodes
//!   each message into your derived event enum (upcast from the version in
//!   its headers) with its envelope, calls your handler and acknowledges
//!   after it succeeded.
//!
//! # Guarantees
//!
//! - **Nothing lost**: the checkpoint moves only past events the stream
//!   acknowledged, and a failed or interrupted batch is published again.
//! - **Each event stored once, however late a re-send**: with subjects
//!   that are one per aggregate (the default), each publish names the
//!   last message it follows on its subject, and what the stream already
//!   holds is found there and not sent again: a publisher killed mid-batch
//!   and back after an hour, a batch retried, two publishers racing on one
//!   aggregate (a lease that expired, a second publisher of the feed). See
//!   [`Publisher`] for the argument and its limits (the stream must keep
//!   each subject's last message). Within the duplicate window
//!   ([`StreamSettings::duplicate_window`]) `Nats-Msg-Id` drops a re-send
//!   too, and is all there is for a custom subject scheme not marked
//!   [`per_aggregate`](Subjects::per_aggregate).
//! - **Order per aggregate**: the stream holds each aggregate's events in
//!   version order (a partition holds whole aggregates and is published
//!   in global order, an aggregate never has two publishes in flight, and
//!   a publish lands only after the message it names). Across aggregates
//!   the stream's order may differ from the feed's; the global position
//!   is in the headers.
//! - **The consumer keeps that order across restarts**: it handles a
//!   message only when everything delivered before it has been
//!   acknowledged or is in its hands, so what a crashed run left pending
//!   is handled first when it comes back (see [`Consumer::run`]).
//! - **Outages**: the client reconnects by itself; publishes are sent
//!   again within a batch, and a batch that cannot finish fails as a
//!   transient failure, which [`run`](es_aggregate::ProjectionProcessor::run)
//!   retries for ever by default.
//!
//! # Scaling out
//!
//! Run the same publisher (same name, same partition count,
//! [`with_partitions`](es_aggregate::ProjectionProcessor::with_partitions))
//! in as many processes as you like: each partition is published by the
//! process that claims it, and a process that dies leaves its partitions
//! to the others. Any number of consumers read the stream, each at its
//! own pace.

mod consumer;
pub mod headers;
mod publisher;
mod stream;
pub mod subject;

pub use consumer::{
    Consumer, ConsumerBuilder, ConsumerError, Delivery, EventHandler, MAX_ACK_WAIT,
    MAX_CONSUMER_BATCH, OnFailure, OnUndecodable, Undecodable,
};
pub use publisher::{
    DEFAULT_MAX_IN_FLIGHT, MAX_IN_FLIGHT, MAX_PUBLISH_WAIT, MIN_ACK_TIMEOUT, PublishError,
    Publisher, PublisherBuilder, PublisherStats, PublisherStatus,
};
pub use stream::{DEFAULT_DUPLICATE_WINDOW, SetupError, StreamSettings};
pub use subject::Subjects;

/// The metrics a [`Publisher`] records through the `metrics` facade, each
/// labelled by `publisher` (its name) and `stream`. Its batches, lag and
/// failures are recorded as a projection's, under its name (see
/// `es_store::telemetry`).
///
/// ```
/// assert_eq!(es_nats::telemetry::PUBLISHED, "es_nats_published_total");
/// ```
pub mod telemetry {
    pub use crate::publisher::{ALREADY_STORED, DUPLICATES, IN_FLIGHT, PUBLISH_RETRIES, PUBLISHED};
}

/// The NATS client this crate is built on, to connect with.
pub use async_nats;
