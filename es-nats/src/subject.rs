//! Subjects: where each event is published.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use es_store::PersistedEvent;

/// How an event's subject is made. The default is
/// `<prefix>.<bounded context>.<aggregate type>.<aggregate id>` with the
/// prefix `events`, each part made a valid subject token by [`token`], so
/// that a consumer can filter on a context (`events.Billing.>`), an
/// aggregate type (`events.Billing.Account.*`) or one aggregate.
///
/// ```
/// use es_nats::Subjects;
/// use es_store::{Event, PersistedEvent};
///
/// let event = Event::new("Billing", "Account", "acc 1.eu", "Opened", &serde_json::json!({}))?;
/// let stored = PersistedEvent::new(event, 1, 7);
/// assert_eq!(Subjects::default().subject(&stored), "events.Billing.Account.acc%201%2Eeu");
/// assert_eq!(Subjects::prefixed("billing").subject(&stored), "billing.Billing.Account.acc%201%2Eeu");
/// assert_eq!(Subjects::prefixed("billing").filter(), "billing.>");
///
/// // any scheme: a function of the stored event, and the filter that covers it
/// let by_type = Subjects::custom("audit.>", |e: &PersistedEvent| format!("audit.{}", es_nats::subject::token(&e.event_type)));
/// assert_eq!(by_type.subject(&stored), "audit.Opened");
/// # Ok::<(), es_store::Error>(())
/// ```
#[derive(Clone)]
pub struct Subjects {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Prefixed(String),
    Custom {
        filter: String,
        make: Arc<dyn Fn(&PersistedEvent) -> String + Send + Sync>,
        per_aggregate: bool,
    },
}

impl Default for Subjects {
    fn default() -> Self {
        Self::prefixed("events")
    }
}

impl fmt::Debug for Subjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Prefixed(prefix) => f.debug_tuple("Subjects::prefixed").field(prefix).finish(),
            Kind::Custom {
                filter,
                per_aggregate,
                ..
            } => f
                .debug_struct("Subjects::custom")
                .field("filter", filter)
                .field("per_aggregate", per_aggregate)
                .finish(),
        }
    }
}

impl Subjects {
    /// `<prefix>.<bounded context>.<aggregate type>.<aggregate id>`. The
    /// prefix is used as it is: it may hold several tokens (`acme.events`).
    pub fn prefixed(prefix: impl Into<String>) -> Self {
        Self {
            kind: Kind::Prefixed(prefix.into()),
        }
    }

    /// Subjects of your own: `make` gives each event's subject, `filter`
    /// is the subject filter (with wildcards) that covers them all, which
    /// the stream is created with. Use [`token`] on the parts that come
    /// from the event.
    ///
    /// The publisher cannot tell whether such subjects are one per
    /// aggregate, so it does not resume from the stream's last message on
    /// them: re-sends are dropped within the duplicate window only. Say
    /// [`per_aggregate`](Self::per_aggregate) when they are.
    pub fn custom(
        filter: impl Into<String>,
        make: impl Fn(&PersistedEvent) -> String + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind: Kind::Custom {
                filter: filter.into(),
                make: Arc::new(make),
                per_aggregate: false,
            },
        }
    }

    /// Says that a [`custom`](Self::custom) scheme gives each aggregate a
    /// subject of its own: all of an aggregate's events on one subject,
    /// and no other aggregate's there. The publisher then treats it as the
    /// default scheme: it appends to each subject only after the message
    /// it last found there, and never re-sends what the stream holds, even
    /// past the duplicate window (see [`Publisher`](crate::Publisher)).
    /// (A scheme that breaks the promise makes its publishes fail with
    /// [`PublishError::Diverged`](crate::PublishError::Diverged) when the
    /// last message on a subject is another aggregate's.) The default and
    /// [`prefixed`](Self::prefixed) schemes are per aggregate already.
    ///
    /// ```
    /// use es_nats::Subjects;
    /// use es_nats::subject::token;
    ///
    /// let by_id = Subjects::custom("acc.>", |e: &es_store::PersistedEvent| format!("acc.{}", token(&e.aggregate_id)));
    /// assert!(!by_id.is_per_aggregate());
    /// assert!(by_id.per_aggregate().is_per_aggregate());
    /// assert!(Subjects::default().is_per_aggregate());
    /// ```
    pub fn per_aggregate(mut self) -> Self {
        if let Kind::Custom { per_aggregate, .. } = &mut self.kind {
            *per_aggregate = true;
        }
        self
    }

    /// Whether each aggregate has a subject of its own (the default and
    /// prefixed schemes, or a custom one marked
    /// [`per_aggregate`](Self::per_aggregate)).
    pub fn is_per_aggregate(&self) -> bool {
        match &self.kind {
            Kind::Prefixed(_) => true,
            Kind::Custom { per_aggregate, .. } => *per_aggregate,
        }
    }

    /// The subject of one event.
    pub fn subject(&self, event: &PersistedEvent) -> String {
        match &self.kind {
            Kind::Prefixed(prefix) => {
                let mut subject = String::with_capacity(
                    prefix.len()
                        + event.bounded_context.len()
                        + event.aggregate_type.len()
                        + event.aggregate_id.len()
                        + 3,
                );
                subject.push_str(prefix);
                for part in [
                    &event.bounded_context,
                    &event.aggregate_type,
                    &event.aggregate_id,
                ] {
                    subject.push('.');
                    subject.push_str(&token(part));
                }
                subject
            }
            Kind::Custom { make, .. } => make(event),
        }
    }

    /// The subject filter that covers every subject of the scheme: what the
    /// stream is created with.
    pub fn filter(&self) -> String {
        match &self.kind {
            Kind::Prefixed(prefix) => format!("{prefix}.>"),
            Kind::Custom { filter, .. } => filter.clone(),
        }
    }

    /// The filter of one aggregate type's events, for a consumer (only for
    /// the default scheme and [`prefixed`](Self::prefixed); `None` for a
    /// custom one).
    ///
    /// ```
    /// assert_eq!(
    ///     es_nats::Subjects::default().aggregate_type_filter("Billing", "Account").as_deref(),
    ///     Some("events.Billing.Account.*")
    /// );
    /// ```
    pub fn aggregate_type_filter(
        &self,
        bounded_context: &str,
        aggregate_type: &str,
    ) -> Option<String> {
        match &self.kind {
            Kind::Prefixed(prefix) => Some(format!(
                "{prefix}.{}.{}.*",
                token(bounded_context),
                token(aggregate_type)
            )),
            Kind::Custom { .. } => None,
        }
    }
}

/// Makes `text` one valid subject token, keeping it readable and telling
/// different texts apart: ASCII letters, digits and `-_=:@+~` stay as
/// they are; every other byte (the separator `.`, the wildcards `*` and
/// `>`, whitespace, `%` itself, non-ASCII text) is percent-encoded, so
/// two different ids never share a subject. An empty text becomes `%`
/// (a token cannot be empty).
///
/// ```
/// use es_nats::subject::token;
/// assert_eq!(token("acc-1"), "acc-1");
/// assert_eq!(token("a.b*c>d e"), "a%2Eb%2Ac%3Ed%20e");
/// assert_eq!(token("50%"), "50%25");
/// assert_eq!(token("café"), "caf%C3%A9");
/// ```
pub fn token(text: &str) -> Cow<'_, str> {
    if text.is_empty() {
        return Cow::Borrowed("%");
    }
    if text.bytes().all(plain) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for byte in text.bytes() {
        if plain(byte) {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        }
    }
    Cow::Owned(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-_=:@+~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_injective_and_valid() {
        let texts = ["a.b", "a%2Eb", "a b", "a\tb", "", "%", "*", ">", "é", "x"];
        let tokens: std::collections::HashSet<_> = texts.iter().map(|t| token(t)).collect();
        assert_eq!(tokens.len(), texts.len());
        for t in &tokens {
            assert!(!t.is_empty());
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_graphic() && !b".*>".contains(&b)),
                "{t}"
            );
        }
    }
}
