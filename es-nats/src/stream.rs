//! The JetStream stream the feed is published to: created when missing,
//! checked when there.

use std::time::Duration;

use async_nats::jetstream::{self, ErrorCode, context::GetStreamErrorKind, stream};

/// The stream the publisher needs. [`ensure`](StreamSettings::ensure)
/// creates it when it is missing, and checks it when it is there: its
/// subjects must cover the publisher's, its retention and storage must be
/// the ones asked for and its duplicate window at least as long (the
/// window is what drops a re-send for a custom subject scheme not marked
/// [`per_aggregate`](crate::Subjects::per_aggregate); with per-aggregate
/// subjects a re-send is found in the stream past it too). A stream that
/// differs is refused with [`SetupError::StreamMismatch`], unless
/// [`update_existing`](Self::update_existing) says to change it.
///
/// ```
/// use std::time::Duration;
/// use es_nats::StreamSettings;
///
/// let settings = StreamSettings::new("BILLING")
///     .subjects(["billing.>"])
///     .duplicate_window(Duration::from_secs(600))
///     .max_age(Duration::from_secs(30 * 24 * 3600));
/// assert_eq!(settings.name(), "BILLING");
/// ```
#[derive(Debug, Clone)]
pub struct StreamSettings {
    name: String,
    subjects: Vec<String>,
    retention: stream::RetentionPolicy,
    storage: stream::StorageType,
    duplicate_window: Duration,
    max_age: Duration,
    replicas: usize,
    update_existing: bool,
}

/// The duplicate window streams are created with unless told: two
/// minutes, JetStream's own default. Within it, a re-sent event is
/// dropped by its message id; past it, a publisher with per-aggregate
/// subjects finds it in the stream (see [`Publisher`](crate::Publisher)).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

impl StreamSettings {
    /// A stream named `name` (JetStream names have no spaces, `.`, `*`,
    /// `>`, path separators), with the subjects of the publisher's
    /// [`Subjects`](crate::Subjects) (set when the publisher is built,
    /// unless [`subjects`](Self::subjects) is given), limits retention (a
    /// log every consumer reads at its own pace), file storage, one
    /// replica, no age limit and a [two-minute](DEFAULT_DUPLICATE_WINDOW)
    /// duplicate window.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            subjects: Vec::new(),
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_age: Duration::ZERO,
            replicas: 1,
            update_existing: false,
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subjects the stream captures (filters, with wildcards).
    pub fn subjects<S: Into<String>>(mut self, subjects: impl IntoIterator<Item = S>) -> Self {
        self.subjects = subjects.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the subjects if none were given.
    pub(crate) fn default_subjects(mut self, filter: String) -> Self {
        if self.subjects.is_empty() {
            self.subjects = vec![filter];
        }
        self
    }

    /// The stream's subjects.
    pub fn subject_filters(&self) -> &[String] {
        &self.subjects
    }

    /// Retention: `Limits` (the default), `Interest` (kept while a
    /// consumer has yet to see it) or `WorkQueue` (removed once acked).
    pub fn retention(mut self, retention: stream::RetentionPolicy) -> Self {
        self.retention = retention;
        self
    }

    /// File (the default) or memory storage.
    pub fn storage(mut self, storage: stream::StorageType) -> Self {
        self.storage = storage;
        self
    }

    /// How long JetStream remembers message ids to drop duplicates
    /// (default [two minutes](DEFAULT_DUPLICATE_WINDOW)). A publisher
    /// that stops mid-batch re-sends that batch when it (or another) comes
    /// back: within the window the re-sends are dropped by their message
    /// ids; past it, with per-aggregate subjects (the default), the
    /// publisher finds them in the stream and does not send them (see
    /// [`Publisher`](crate::Publisher)), and with a custom scheme not
    /// marked per aggregate they are stored again (with the same event
    /// id, to deduplicate on).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// How long messages are kept (zero, the default: no limit).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Replicas in a cluster (default 1).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Whether an existing stream that differs is updated to these
    /// settings (default: no, it is refused with
    /// [`SetupError::StreamMismatch`]: the stream may be someone else's).
    pub fn update_existing(mut self, update: bool) -> Self {
        self.update_existing = update;
        self
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            retention: self.retention,
            storage: self.storage,
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Creates the stream, or checks the one that is there; returns its
    /// info. Fails with [`SetupError::NoJetStream`] when the server has no
    /// JetStream.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
    /// let jetstream = async_nats::jetstream::new(client);
    /// let info = es_nats::StreamSettings::new("EVENTS")
    ///     .subjects(["events.>"])
    ///     .ensure(&jetstream)
    ///     .await?;
    /// println!("{} messages", info.state.messages);
    /// # Ok(()) }
    /// ```
    pub async fn ensure(&self, jetstream: &jetstream::Context) -> Result<stream::Info, SetupError> {
        if self.subjects.is_empty() {
            return Err(SetupError::NoSubjects {
                stream: self.name.clone(),
            });
        }
        match jetstream.get_stream(&self.name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| nats_error(jetstream, "read the stream's info", e))?
                    .clone();
                match self.mismatch(&info.config) {
                    None => Ok(info),
                    Some(_) if self.update_existing => {
                        let mut config = info.config.clone();
                        for subject in &self.subjects {
                            if !config.subjects.contains(subject) {
                                config.subjects.push(subject.clone());
                            }
                        }
                        config.retention = self.retention;
                        config.duplicate_window =
                            config.duplicate_window.max(self.duplicate_window);
                        config.max_age = self.max_age;
                        config.num_replicas = self.replicas;
                        if config.storage != self.storage {
                            return Err(self.mismatch(&config).expect("storage differs"));
                        }
                        jetstream
                            .update_stream(config)
                            .await
                            .map_err(|e| nats_error(jetstream, "update the stream", e))
                    }
                    Some(mismatch) => Err(mismatch),
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                let stream = jetstream
                    .create_stream(self.config())
                    .await
                    .map_err(|e| nats_error(jetstream, "create the stream", e))?;
                Ok(stream.cached_info().clone())
            }
            Err(error) => Err(nats_error(jetstream, "look the stream up", error)),
        }
    }

    /// What in `found` does not give the guarantees asked for.
    fn mismatch(&self, found: &stream::Config) -> Option<SetupError> {
        let refuse = |field: &'static str, expected: String, found: String| {
            Some(SetupError::StreamMismatch {
                stream: self.name.clone(),
                field,
                expected,
                found,
            })
        };
        let missing: Vec<&String> = self
            .subjects
            .iter()
            .filter(|s| !found.subjects.contains(s))
            .collect();
        if !missing.is_empty() {
            return refuse(
                "subjects",
                format!("{:?}", self.subjects),
                format!("{:?}", found.subjects),
            );
        }
        if found.retention != self.retention {
            return refuse(
                "retention",
                format!("{:?}", self.retention),
                format!("{:?}", found.retention),
            );
        }
        if found.storage != self.storage {
            return refuse(
                "storage",
                format!("{:?}", self.storage),
                format!("{:?}", found.storage),
            );
        }
        if found.duplicate_window < self.duplicate_window {
            return refuse(
                "duplicate_window",
                format!("at least {:?}", self.duplicate_window),
                format!("{:?}", found.duplicate_window),
            );
        }
        None
    }
}

/// Why the stream (or a consumer) could not be set up.
///
/// ```no_run
/// use es::nats::{Publisher, SetupError};
///
/// # async fn demo(client: async_nats::Client) {
/// match Publisher::builder(client).build().await {
///     Ok(_publisher) => {}
///     Err(SetupError::NoJetStream { server }) => eprintln!("enable JetStream on {server}"),
///     Err(SetupError::StreamMismatch { stream, field, .. }) => eprintln!("{stream}: {field} differs"),
///     Err(other) => eprintln!("{other}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The server answered nothing on the JetStream API: it runs without
    /// JetStream.
    #[error(
        "the NATS server at {server} has no JetStream: start nats-server with `-js` (and `-sd <dir>` for where it stores), or `jetstream {{}}` in its configuration"
    )]
    NoJetStream {
        /// The server the client is connected to.
        server: String,
    },
    /// The stream exists with settings that do not give the guarantees
    /// asked for; nothing was changed.
    #[error(
        "stream `{stream}` exists with {field} {found}, where {expected} is needed (StreamSettings::update_existing(true) changes it)"
    )]
    StreamMismatch {
        /// The stream.
        stream: String,
        /// The setting that differs.
        field: &'static str,
        /// What was asked for.
        expected: String,
        /// What the stream has.
        found: String,
    },
    /// The settings name no subject.
    #[error("stream `{stream}` needs at least one subject")]
    NoSubjects {
        /// The stream.
        stream: String,
    },
    /// A builder setting is out of its allowed range (see
    /// [`PublisherBuilder::max_in_flight`](crate::PublisherBuilder::max_in_flight),
    /// [`outage_timeout`](crate::PublisherBuilder::outage_timeout),
    /// [`ack_timeout`](crate::PublisherBuilder::ack_timeout),
    /// [`ConsumerBuilder::batch`](crate::ConsumerBuilder::batch) and
    /// [`ack_wait`](crate::ConsumerBuilder::ack_wait)); refused before
    /// anything was sent to the server.
    ///
    /// ```
    /// let refused = es_nats::SetupError::InvalidSetting {
    ///     setting: "max_in_flight",
    ///     value: "18446744073709551615".into(),
    ///     allowed: "1..=65536".into(),
    /// };
    /// assert_eq!(
    ///     refused.to_string(),
    ///     "max_in_flight(18446744073709551615) is out of range (allowed: 1..=65536); nothing was done"
    /// );
    /// ```
    #[error("{setting}({value}) is out of range (allowed: {allowed}); nothing was done")]
    InvalidSetting {
        /// The builder's setter.
        setting: &'static str,
        /// The value it was given.
        value: String,
        /// The values it allows.
        allowed: String,
    },
    /// The NATS server or the connection failed.
    #[error("could not {what}: {source}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
}

/// A JetStream API error, or [`SetupError::NoJetStream`] when nothing
/// answered (the server has no JetStream, or the request timed out on a
/// server that never answers the API).
pub(crate) fn nats_error(
    jetstream: &jetstream::Context,
    what: &'static str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> SetupError {
    let mut text = error.to_string().to_lowercase();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string().to_lowercase());
        source = cause.source();
    }
    // nothing subscribes to the JetStream API: async-nats says
    // `NoResponders` (displayed as a resource that does not exist)
    if format!("{error:?}").contains("NoResponders")
        || text.contains("no responders")
        || text.contains("jetstream not enabled")
        || text.contains("10076")
        || text.contains("10039")
    {
        let info = jetstream.client().server_info();
        return SetupError::NoJetStream {
            server: format!("{}:{}", info.host, info.port),
        };
    }
    SetupError::Nats {
        what,
        source: Box::new(error),
    }
}
