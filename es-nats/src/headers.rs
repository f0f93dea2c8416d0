//! The envelope in headers: what each published message carries beside its
//! payload, and how the consumer reads it back.
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | the event id (JetStream drops a second message with it within the stream's duplicate window) |
//! | [`EVENT_ID`] `Es-Event-Id` | the event id |
//! | [`EVENT_TYPE`] `Es-Event-Type` | the event type, as stored |
//! | [`EVENT_VERSION`] `Es-Event-Version` | the payload's schema version (what upcasting starts from) |
//! | [`BOUNDED_CONTEXT`] `Es-Bounded-Context`, [`AGGREGATE_TYPE`] `Es-Aggregate-Type`, [`AGGREGATE_ID`] `Es-Aggregate-Id` | the aggregate |
//! | [`AGGREGATE_VERSION`] `Es-Aggregate-Version` | the event's version in its aggregate (1, 2, ...) |
//! | [`GLOBAL_POSITION`] `Es-Global-Position` | its position in the store's feed |
//! | [`CORRELATION_ID`], [`CAUSATION_ID`], [`TRACE_ID`] | when the event has them |
//! | [`CREATED_AT`] `Es-Created-At` | RFC 3339, UTC, to the microsecond |
//! | [`METADATA`] `Es-Metadata` | the metadata JSON object, when it is not empty |
//! | `Content-Type` | `application/json` |
//!
//! Text values (names, ids, the trace id, the metadata) are sent as they
//! are, except that `%`, CR, LF and whitespace at either end (which NATS
//! headers cannot carry) are percent-encoded; [`decode_value`] undoes it.
//! The payload is the event's JSON as stored, byte for byte.

use std::borrow::Cow;

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use chrono::{DateTime, SecondsFormat, Utc};
use es_store::{Event, PersistedEvent};
use serde_json::value::RawValue;
use uuid::Uuid;

/// `Es-Event-Id`.
pub const EVENT_ID: &str = "Es-Event-Id";
/// `Es-Event-Type`.
pub const EVENT_TYPE: &str = "Es-Event-Type";
/// `Es-Event-Version`: the payload's schema version.
pub const EVENT_VERSION: &str = "Es-Event-Version";
/// `Es-Bounded-Context`.
pub const BOUNDED_CONTEXT: &str = "Es-Bounded-Context";
/// `Es-Aggregate-Type`.
pub const AGGREGATE_TYPE: &str = "Es-Aggregate-Type";
/// `Es-Aggregate-Id`.
pub const AGGREGATE_ID: &str = "Es-Aggregate-Id";
/// `Es-Aggregate-Version`.
pub const AGGREGATE_VERSION: &str = "Es-Aggregate-Version";
/// `Es-Global-Position`.
pub const GLOBAL_POSITION: &str = "Es-Global-Position";
/// `Es-Correlation-Id`.
pub const CORRELATION_ID: &str = "Es-Correlation-Id";
/// `Es-Causation-Id`.
pub const CAUSATION_ID: &str = "Es-Causation-Id";
/// `Es-Trace-Id`.
pub const TRACE_ID: &str = "Es-Trace-Id";
/// `Es-Created-At`.
pub const CREATED_AT: &str = "Es-Created-At";
/// `Es-Metadata`.
pub const METADATA: &str = "Es-Metadata";

fn name(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// The headers of one event's message, `Nats-Msg-Id` included.
///
/// ```
/// use es_store::{Event, PersistedEvent};
///
/// let event = Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({"owner": "ann"}))?;
/// let stored = PersistedEvent::new(event, 1, 42);
/// let headers = es_nats::headers::encode(&stored);
/// assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), stored.event_id.to_string());
/// assert_eq!(headers.get(es_nats::headers::GLOBAL_POSITION).unwrap().as_str(), "42");
///
/// let back = es_nats::headers::decode(&headers, stored.payload.get().as_bytes())?;
/// assert_eq!((back.global_position, back.aggregate_version), (42, 1));
/// assert_eq!(back.event_id, stored.event_id);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode(event: &PersistedEvent) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let id = event.event_id.as_hyphenated().to_string();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    headers.insert(name(EVENT_ID), id);
    headers.insert(name(EVENT_TYPE), encode_value(&event.event_type).as_ref());
    headers.insert(name(EVENT_VERSION), event.event_version.to_string());
    headers.insert(
        name(BOUNDED_CONTEXT),
        encode_value(&event.bounded_context).as_ref(),
    );
    headers.insert(
        name(AGGREGATE_TYPE),
        encode_value(&event.aggregate_type).as_ref(),
    );
    headers.insert(
        name(AGGREGATE_ID),
        encode_value(&event.aggregate_id).as_ref(),
    );
    headers.insert(name(AGGREGATE_VERSION), event.aggregate_version.to_string());
    headers.insert(name(GLOBAL_POSITION), event.global_position.to_string());
    if let Some(id) = event.correlation_id {
        headers.insert(name(CORRELATION_ID), id.as_hyphenated().to_string());
    }
    if let Some(id) = event.causation_id {
        headers.insert(name(CAUSATION_ID), id.as_hyphenated().to_string());
    }
    if let Some(trace) = &event.trace_id {
        headers.insert(name(TRACE_ID), encode_value(trace).as_ref());
    }
    headers.insert(
        name(CREATED_AT),
        event
            .created_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    let metadata = event.metadata.get().trim();
    if !metadata.is_empty() && metadata != "{}" && metadata != "null" {
        headers.insert(name(METADATA), encode_value(metadata).as_ref());
    }
    headers.insert(name("Content-Type"), "application/json");
    headers
}

/// Why a message could not be read back as an event: it was not
/// published by [`Publisher`](crate::Publisher) (a header is missing) or
/// was changed on the way.
///
/// ```
/// let error = es_nats::headers::EnvelopeError::Missing("Es-Event-Id");
/// assert!(error.to_string().contains("Es-Event-Id"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A header the envelope needs is not there.
    #[error("the message has no `{0}` header (was it published by es-nats?)")]
    Missing(&'static str),
    /// A header's value does not parse.
    #[error("header `{header}` has an invalid value `{value}`")]
    Invalid {
        /// The header.
        header: &'static str,
        /// Its value.
        value: String,
    },
    /// The payload (or the metadata) is not JSON.
    #[error("the message's {what} is not JSON: {source}")]
    Json {
        /// `payload` or `metadata`.
        what: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads an event back from a message's headers and payload (the inverse
/// of [`encode`]).
///
/// ```
/// let missing = es_nats::headers::decode(&async_nats::HeaderMap::new(), b"{}").unwrap_err();
/// assert!(matches!(missing, es_nats::headers::EnvelopeError::Missing("Es-Event-Id")));
/// ```
pub fn decode(headers: &HeaderMap, payload: &[u8]) -> Result<PersistedEvent, EnvelopeError> {
    let text = |header: &'static str| -> Result<String, EnvelopeError> {
        let value = headers
            .get(name(header))
            .ok_or(EnvelopeError::Missing(header))?;
        decode_value(value.as_str()).map_err(|_| EnvelopeError::Invalid {
            header,
            value: value.as_str().to_owned(),
        })
    };
    let optional = |header: &'static str| -> Result<Option<String>, EnvelopeError> {
        match headers.get(name(header)) {
            None => Ok(None),
            Some(_) => text(header).map(Some),
        }
    };
    fn parse<T: std::str::FromStr>(
        header: &'static str,
        value: String,
    ) -> Result<T, EnvelopeError> {
        value
            .parse()
            .map_err(|_| EnvelopeError::Invalid { header, value })
    }
    let event_id: Uuid = parse(EVENT_ID, text(EVENT_ID)?)?;
    let event_version: i32 = parse(EVENT_VERSION, text(EVENT_VERSION)?)?;
    let aggregate_version: i64 = parse(AGGREGATE_VERSION, text(AGGREGATE_VERSION)?)?;
    let global_position: i64 = parse(GLOBAL_POSITION, text(GLOBAL_POSITION)?)?;
    let created_at = text(CREATED_AT)?;
    let created_at = DateTime::parse_from_rfc3339(&created_at)
        .map_err(|_| EnvelopeError::Invalid {
            header: CREATED_AT,
            value: created_at.clone(),
        })?
        .with_timezone(&Utc);
    let payload = std::str::from_utf8(payload).map_err(|_| EnvelopeError::Invalid {
        header: "payload",
        value: String::from_utf8_lossy(payload).into_owned(),
    })?;
    let payload =
        RawValue::from_string(payload.to_owned()).map_err(|source| EnvelopeError::Json {
            what: "payload",
            source,
        })?;
    let mut event = Event::from_raw(
        text(BOUNDED_CONTEXT)?,
        text(AGGREGATE_TYPE)?,
        text(AGGREGATE_ID)?,
        text(EVENT_TYPE)?,
        payload,
    )
    .with_event_id(event_id)
    .with_event_version(event_version)
    .with_created_at(created_at);
    if let Some(metadata) = optional(METADATA)? {
        let metadata = RawValue::from_string(metadata).map_err(|source| EnvelopeError::Json {
            what: "metadata",
            source,
        })?;
        event = event.with_raw_metadata(metadata);
    }
    if let Some(id) = optional(CORRELATION_ID)? {
        event = event.with_correlation_id(parse(CORRELATION_ID, id)?);
    }
    if let Some(id) = optional(CAUSATION_ID)? {
        event = event.with_causation_id(parse(CAUSATION_ID, id)?);
    }
    if let Some(trace) = optional(TRACE_ID)? {
        event = event.with_trace_id(trace);
    }
    Ok(PersistedEvent::new(
        event,
        aggregate_version,
        global_position,
    ))
}

/// What the publisher reads back from a stored message to resume from the
/// stream: the event's id, aggregate, version and position (the headers
/// only: the payload is not parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) event_id: Uuid,
    pub(crate) bounded_context: String,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) aggregate_version: i64,
    pub(crate) global_position: i64,
}

impl Link {
    /// Whether it is of `event`'s aggregate.
    pub(crate) fn same_aggregate(&self, event: &PersistedEvent) -> bool {
        self.aggregate_id == event.aggregate_id
            && self.aggregate_type == event.aggregate_type
            && self.bounded_context == event.bounded_context
    }
}

/// Reads a stored message's [`Link`] from its headers.
pub(crate) fn link(headers: &HeaderMap) -> Result<Link, EnvelopeError> {
    let text = |header: &'static str| -> Result<String, EnvelopeError> {
        let value = headers
            .get(name(header))
            .ok_or(EnvelopeError::Missing(header))?;
        decode_value(value.as_str()).map_err(|_| EnvelopeError::Invalid {
            header,
            value: value.as_str().to_owned(),
        })
    };
    fn parse<T: std::str::FromStr>(
        header: &'static str,
        value: String,
    ) -> Result<T, EnvelopeError> {
        value
            .parse()
            .map_err(|_| EnvelopeError::Invalid { header, value })
    }
    Ok(Link {
        event_id: parse(EVENT_ID, text(EVENT_ID)?)?,
        bounded_context: text(BOUNDED_CONTEXT)?,
        aggregate_type: text(AGGREGATE_TYPE)?,
        aggregate_id: text(AGGREGATE_ID)?,
        aggregate_version: parse(AGGREGATE_VERSION, text(AGGREGATE_VERSION)?)?,
        global_position: parse(GLOBAL_POSITION, text(GLOBAL_POSITION)?)?,
    })
}

/// A text as a header value: `%`, CR, LF and whitespace at either end
/// (which a header cannot carry: values are trimmed) percent-encoded,
/// everything else as it is.
///
/// ```
/// use es_nats::headers::{decode_value, encode_value};
/// assert_eq!(encode_value("acc-1"), "acc-1");
/// assert_eq!(encode_value(" 100%\n"), "%20100%25%0A");
/// assert_eq!(decode_value(&encode_value(" 100%\n")).unwrap(), " 100%\n");
/// ```
pub fn encode_value(text: &str) -> Cow<'_, str> {
    let body = text.trim();
    let start = text.len() - text.trim_start().len();
    let end = start + body.len();
    if start == 0 && end == text.len() && !body.contains(['%', '\r', '\n']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let push_encoded = |out: &mut String, bytes: &[u8]| {
        for byte in bytes {
            out.push_str(&format!("%{byte:02X}"));
        }
    };
    push_encoded(&mut out, &text.as_bytes()[..start]);
    for ch in body.chars() {
        match ch {
            '%' | '\r' | '\n' => push_encoded(&mut out, &[ch as u8]),
            ch => out.push(ch),
        }
    }
    push_encoded(&mut out, &text.as_bytes()[end..]);
    Cow::Owned(out)
}

/// A header value that is not valid percent-encoding (of UTF-8 text).
///
/// ```
/// assert!(es_nats::headers::decode_value("50%2").is_err());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("not a valid percent-encoded header value")]
#[non_exhaustive]
pub struct InvalidValue;

/// Undoes [`encode_value`].
///
/// ```
/// assert_eq!(es_nats::headers::decode_value("a%0Ab").unwrap(), "a\nb");
/// ```
pub fn decode_value(value: &str) -> Result<String, InvalidValue> {
    if !value.contains('%') {
        return Ok(value.to_owned());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(InvalidValue)?;
            let hex = std::str::from_utf8(hex).map_err(|_| InvalidValue)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| InvalidValue)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| InvalidValue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for text in [
            "",
            "x",
            " a ",
            "\tb",
            "100%",
            "a\r\nb",
            "\u{a0}nbsp\u{a0}",
            "é %41",
        ] {
            let encoded = encode_value(text);
            assert!(!encoded.contains(['\r', '\n']));
            assert_eq!(encoded.trim(), encoded, "{text:?}");
            assert_eq!(decode_value(&encoded).unwrap(), text);
        }
    }

    #[test]
    fn links_are_read_from_the_headers() {
        let event = Event::new("B", "T", "a.1", "Ty", &serde_json::json!({})).unwrap();
        let stored = PersistedEvent::new(event, 7, 70);
        let read = link(&encode(&stored)).unwrap();
        assert!(read.same_aggregate(&stored));
        assert_eq!(
            (read.event_id, read.aggregate_version, read.global_position),
            (stored.event_id, 7, 70)
        );
        let missing = link(&HeaderMap::new()).unwrap_err();
        assert!(matches!(missing, EnvelopeError::Missing(EVENT_ID)));
    }

    #[test]
    fn envelope_round_trips() {
        let event = Event::new("B c", "T", " id\n%", "Ty", &serde_json::json!({"a": 1}))
            .unwrap()
            .with_correlation_id(Uuid::now_v7())
            .with_causation_id(Uuid::now_v7())
            .with_trace_id("trace 1")
            .with_metadata(&serde_json::json!({"who": "x\ny"}))
            .unwrap()
            .with_event_version(3);
        let stored = PersistedEvent::new(event, 4, 99);
        let back = decode(&encode(&stored), stored.payload.get().as_bytes()).unwrap();
        assert_eq!(back.aggregate_id, " id\n%");
        assert_eq!(back.bounded_context, "B c");
        assert_eq!(back.event_version, 3);
        assert_eq!(back.correlation_id, stored.correlation_id);
        assert_eq!(back.causation_id, stored.causation_id);
        assert_eq!(back.trace_id.as_deref(), Some("trace 1"));
        assert_eq!(back.metadata.get(), stored.metadata.get());
        assert_eq!(back.payload.get(), stored.payload.get());
        assert_eq!(
            back.created_at.timestamp_micros(),
            stored.created_at.timestamp_micros()
        );
    }
}
