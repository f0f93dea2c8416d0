//! Input checks shared by every backend, run before anything is sent to a
//! database so that refused input writes nothing.

use std::collections::HashMap;

use chrono::SubsecRound;

use serde_json::value::RawValue;

use crate::{Error, Event, ExpectedVersion, NameField, Result, TextField, UnstorableTextReason};

/// Checks an append and normalises what a backend stores (timestamps to
/// microseconds). Returns the expected version with `Exact(0)` folded into
/// `NoStream`.
pub(crate) fn append(expected: ExpectedVersion, events: &mut [Event]) -> Result<ExpectedVersion> {
    let expected = match expected {
        ExpectedVersion::Exact(v) if v < 0 => {
            return Err(Error::NegativeVersion {
                what: "expected version",
                value: v,
            });
        }
        ExpectedVersion::Exact(0) => ExpectedVersion::NoStream,
        other => other,
    };
    let Some(first) = events.first() else {
        return Err(Error::NoEvents);
    };
    name(&first.bounded_context, NameField::BoundedContext, Some(0))?;
    name(&first.aggregate_type, NameField::AggregateType, Some(0))?;
    name(&first.aggregate_id, NameField::AggregateId, Some(0))?;
    let aggregate = first.aggregate();
    for (index, event) in events.iter().enumerate() {
        if event.aggregate() != aggregate {
            return Err(Error::MixedAggregates {
                expected: Box::new(aggregate.to_owned()),
                found: Box::new(event.aggregate().to_owned()),
                index,
            });
        }
        name(&event.event_type, NameField::EventType, Some(index))?;
        if event.event_version < 1 {
            return Err(Error::InvalidEventVersion {
                value: event.event_version,
                index,
            });
        }
        if let Some(trace_id) = &event.trace_id {
            storable_name(trace_id, NameField::TraceId, Some(index))?;
        }
        json(&event.payload, TextField::Payload, Some(index))?;
        json(&event.metadata, TextField::Metadata, Some(index))?;
    }
    unique_ids(events)?;
    for event in events.iter_mut() {
        event.created_at = event.created_at.trunc_subsecs(6);
    }
    Ok(expected)
}

fn unique_ids(events: &[Event]) -> Result<()> {
    let duplicate = |event_id, first, second| Error::DuplicateEventIdInBatch {
        event_id,
        first,
        second,
    };
    // Small batches (the common case: one command's events) compare pairwise
    // without allocating.
    if events.len() <= 16 {
        for (second, event) in events.iter().enumerate() {
            if let Some(first) = events[..second]
                .iter()
                .position(|e| e.event_id == event.event_id)
            {
                return Err(duplicate(event.event_id, first, second));
            }
        }
        return Ok(());
    }
    let mut seen = HashMap::with_capacity(events.len());
    for (second, event) in events.iter().enumerate() {
        if let Some(first) = seen.insert(event.event_id, second) {
            return Err(duplicate(event.event_id, first, second));
        }
    }
    Ok(())
}

/// Checks the identity of an aggregate to read.
pub(crate) fn aggregate(
    bounded_context: &str,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<()> {
    name(bounded_context, NameField::BoundedContext, None)?;
    name(aggregate_type, NameField::AggregateType, None)?;
    name(aggregate_id, NameField::AggregateId, None)
}

/// Checks optional inclusive version bounds; returns them with the open ends
/// filled in.
pub(crate) fn version_range(from: Option<i64>, to: Option<i64>) -> Result<(i64, i64)> {
    for (what, value) in [("from_version", from), ("to_version", to)] {
        if let Some(value) = value.filter(|v| *v < 0) {
            return Err(Error::NegativeVersion { what, value });
        }
    }
    let (from, to) = (from.unwrap_or(0), to.unwrap_or(i64::MAX));
    if from > to {
        return Err(Error::InvalidVersionRange { from, to });
    }
    Ok((from, to))
}

/// Checks a global read's start and page size.
pub(crate) fn page(from_position: i64, limit: i64) -> Result<()> {
    if from_position < 0 {
        return Err(Error::NegativePosition {
            value: from_position,
        });
    }
    if limit <= 0 {
        return Err(Error::InvalidLimit { value: limit });
    }
    Ok(())
}

/// Checks a projection name.
pub(crate) fn projection_name(projection_name: &str) -> Result<()> {
    name(projection_name, NameField::ProjectionName, None)
}

/// Checks a checkpoint position.
pub(crate) fn position(position: i64) -> Result<()> {
    if position < 0 {
        return Err(Error::NegativePosition { value: position });
    }
    Ok(())
}

/// Checks a snapshot to save.
pub(crate) fn snapshot(snapshot: &crate::Snapshot) -> Result<()> {
    aggregate(
        &snapshot.bounded_context,
        &snapshot.aggregate_type,
        &snapshot.aggregate_id,
    )?;
    if snapshot.version < 0 {
        return Err(Error::NegativeVersion {
            what: "snapshot version",
            value: snapshot.version,
        });
    }
    json(&snapshot.state, TextField::SnapshotState, None)
}

/// Checks a name: not empty, not longer than its limit, no NUL.
pub(crate) fn name(value: &str, field: NameField, index: Option<usize>) -> Result<()> {
    if value.is_empty() {
        return Err(Error::EmptyName { field, index });
    }
    storable_name(value, field, index)
}

/// Checks a name that may be empty: not longer than its limit, no NUL.
fn storable_name(value: &str, field: NameField, index: Option<usize>) -> Result<()> {
    let max = field.max_bytes();
    if value.len() > max {
        return Err(Error::NameTooLong {
            field,
            index,
            len: value.len(),
            max,
        });
    }
    // A Rust string is UTF-8: it cannot hold a lone surrogate, only NUL.
    if let Some(offset) = memchr::memchr(0, value.as_bytes()) {
        return Err(Error::UnstorableText {
            field: TextField::Name(field),
            index,
            offset,
            reason: UnstorableTextReason::Nul,
        });
    }
    Ok(())
}

/// Checks JSON text for what PostgreSQL's `jsonb` refuses.
fn json(value: &RawValue, field: TextField, index: Option<usize>) -> Result<()> {
    match unstorable_in_json(value.get()) {
        Some((offset, reason)) => Err(Error::UnstorableText {
            field,
            index,
            offset,
            reason,
        }),
        None => Ok(()),
    }
}

/// Finds, in JSON text, the first escape `\u0000` or escaped surrogate
/// that is not half of a high-low pair (or a raw NUL, which valid JSON
/// cannot hold), with its byte offset.
///
/// Escapes are found with `memchr` and then read one by one, so that an
/// escaped backslash followed by `u0000` (the text `\\u0000`) is not taken
/// for one: most payloads hold no backslash, and are passed over at
/// `memchr`'s speed. Anything that is not a well-formed escape is left to
/// the JSON parser that made the text.
fn unstorable_in_json(text: &str) -> Option<(usize, UnstorableTextReason)> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = memchr::memchr2(b'\\', 0, bytes.get(from..)?) {
        let at = from + found;
        if bytes[at] == 0 {
            return Some((at, UnstorableTextReason::Nul));
        }
        // `at` starts an escape: a backslash and one character, or `\u`
        // and four hex digits.
        if bytes.get(at + 1) != Some(&b'u') {
            from = at + 2;
            continue;
        }
        let Some(unit) = hex4(bytes, at + 2) else {
            from = at + 2;
            continue;
        };
        match unit {
            0 => return Some((at, UnstorableTextReason::Nul)),
            0xD800..=0xDBFF => {
                let low = (bytes.get(at + 6..at + 8) == Some(&b"\\u"[..]))
                    .then(|| hex4(bytes, at + 8))
                    .flatten();
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Some((at, UnstorableTextReason::LoneSurrogate));
                }
                from = at + 12;
            }
            0xDC00..=0xDFFF => return Some((at, UnstorableTextReason::LoneSurrogate)),
            _ => from = at + 6,
        }
    }
    None
}

/// The value of the four hex digits at `at`, if there are four.
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    digits.iter().try_fold(0u32, |value, &digit| {
        Some(value << 4 | char::from(digit).to_digit(16)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Event {
        Event::new("Billing", "Account", id, "Opened", &serde_json::json!({})).unwrap()
    }

    #[test]
    fn exact_zero_is_no_stream() {
        let mut events = vec![event("a")];
        assert_eq!(
            append(ExpectedVersion::Exact(0), &mut events).unwrap(),
            ExpectedVersion::NoStream
        );
    }

    #[test]
    fn duplicate_ids_are_found_in_small_and_large_batches() {
        for len in [2, 17, 100] {
            let mut events: Vec<_> = (0..len).map(|_| event("a")).collect();
            events[len - 1].event_id = events[0].event_id;
            let err = append(ExpectedVersion::Any, &mut events).unwrap_err();
            assert!(
                matches!(err, Error::DuplicateEventIdInBatch { first: 0, second, .. } if second == len - 1),
                "{err:?}"
            );
        }
    }

    fn found(text: &str) -> Option<(usize, UnstorableTextReason)> {
        unstorable_in_json(text)
    }

    #[test]
    fn json_text_is_scanned_for_nul_and_lone_surrogates() {
        use UnstorableTextReason::{LoneSurrogate, Nul};
        assert_eq!(found(r#"{"a":"plain text, no escapes"}"#), None);
        assert_eq!(found(r#"{"a":"\u0000"}"#), Some((6, Nul)));
        assert_eq!(found(r#"{"\u0000":1}"#), Some((2, Nul)));
        // an escaped backslash, then the letters u0000
        assert_eq!(found(r#"{"a":"\\u0000"}"#), None);
        // an escaped backslash, then the escape \u0000
        assert_eq!(found(r#"{"a":"\\\u0000"}"#), Some((8, Nul)));
        assert_eq!(found(r#"["\n\t\"\/\u0041\u00e9"]"#), None);
        assert_eq!(found(r#"["\u0001", "\u0000"]"#), Some((12, Nul)));
        // surrogates: a pair is a character, half of one is not
        assert_eq!(found(r#"["\ud83d\ude00", "\uD83D\uDE00"]"#), None);
        assert_eq!(found(r#"["\ud800"]"#), Some((2, LoneSurrogate)));
        assert_eq!(found(r#"["\uDBFF", 1]"#), Some((2, LoneSurrogate)));
        assert_eq!(found(r#"["\udc00"]"#), Some((2, LoneSurrogate)));
        assert_eq!(found(r#"["\ud800\u0041"]"#), Some((2, LoneSurrogate)));
        assert_eq!(found(r#"["\ud800\ud800\udc00"]"#), Some((2, LoneSurrogate)));
        assert_eq!(found(r#"["x\ud800x"]"#), Some((3, LoneSurrogate)));
        assert_eq!(found(r#"["\\ud800"]"#), None);
        // a low surrogate right after a pair is unpaired
        assert_eq!(
            found(r#"["\ud83d\ude00\ude00"]"#),
            Some((14, LoneSurrogate))
        );
        // raw NUL (not valid JSON, but never let through)
        assert_eq!(found("[\"a\0\"]"), Some((3, Nul)));
        // cut-off escapes do not panic
        for text in [r"\", r"\u", r"\u00", "\"\\u12"] {
            assert_eq!(found(text), None, "{text}");
        }
        for text in [r"\ud800\u", r"\ud800\", r"\ud800\udc"] {
            assert_eq!(found(text), Some((0, LoneSurrogate)), "{text}");
        }
        assert_eq!(found(r"\u0000"), Some((0, Nul)));
    }

    #[test]
    fn serde_json_hands_nul_and_lone_surrogates_through() {
        // What the scanner is for: serde_json writes NUL as `\u0000` and
        // keeps raw text with unpaired surrogate escapes as it is.
        let payload = crate::event::to_raw(&serde_json::json!({"a": "x\0y"})).unwrap();
        assert_eq!(payload.get(), r#"{"a":"x\u0000y"}"#);
        assert!(matches!(
            json(&payload, TextField::Payload, Some(3)),
            Err(Error::UnstorableText {
                field: TextField::Payload,
                index: Some(3),
                offset: 7,
                reason: UnstorableTextReason::Nul
            })
        ));
        let lone = RawValue::from_string(r#"["\ud800"]"#.to_owned()).unwrap();
        assert!(matches!(
            json(&lone, TextField::Metadata, None),
            Err(Error::UnstorableText {
                reason: UnstorableTextReason::LoneSurrogate,
                ..
            })
        ));
    }

    #[test]
    fn names_are_checked_for_length_and_nul() {
        let at_limit = "é".repeat(NameField::AggregateId.max_bytes() / 2);
        assert!(name(&at_limit, NameField::AggregateId, None).is_ok());
        let over = format!("{at_limit}x");
        assert!(matches!(
            name(&over, NameField::AggregateId, Some(0)),
            Err(Error::NameTooLong {
                field: NameField::AggregateId,
                index: Some(0),
                len: 501,
                max: 500
            })
        ));
        assert!(matches!(
            name("a\0b", NameField::EventType, Some(2)),
            Err(Error::UnstorableText {
                field: TextField::Name(NameField::EventType),
                index: Some(2),
                offset: 1,
                reason: UnstorableTextReason::Nul
            })
        ));
        // an empty trace id is allowed, a long one is not
        let mut events = vec![event("a").with_trace_id("")];
        assert!(append(ExpectedVersion::Any, &mut events).is_ok());
        let mut events = vec![event("a"), event("a").with_trace_id("t".repeat(256))];
        assert!(matches!(
            append(ExpectedVersion::Any, &mut events),
            Err(Error::NameTooLong {
                field: NameField::TraceId,
                index: Some(1),
                ..
            })
        ));
    }

    #[test]
    fn ranges() {
        assert_eq!(version_range(None, None).unwrap(), (0, i64::MAX));
        assert_eq!(version_range(Some(3), Some(3)).unwrap(), (3, 3));
        assert!(matches!(
            version_range(Some(4), Some(3)),
            Err(Error::InvalidVersionRange { from: 4, to: 3 })
        ));
        assert!(matches!(
            version_range(None, Some(-1)),
            Err(Error::NegativeVersion {
                what: "to_version",
                value: -1
            })
        ));
    }
}
