//! Input checks shared by every backend, run before anything is sent to a
//! database so that refused input writes nothing.

use std::collections::HashMap;
use std::ops::{Bound, RangeBounds};

use chrono::SubsecRound;

use serde_json::value::RawValue;

use crate::{Error, Event, ExpectedVersion, NameField, Result, TextField, UnstorableTextReason};

/// Checks an append and normalises what a backend stores (timestamps to
/// microseconds). Returns the expected version with `Exact(0)` folded into
/// `NoStream`. `max_depth` is the backend's JSON nesting limit.
pub(crate) fn append(
    expected: ExpectedVersion,
    events: &mut [Event],
    max_depth: usize,
) -> Result<ExpectedVersion> {
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
        json(&event.payload, TextField::Payload, Some(index), max_depth)?;
        json(&event.metadata, TextField::Metadata, Some(index), max_depth)?;
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

/// Checks a range of versions; returns its inclusive bounds, the open ends
/// filled in (`..` is `(0, i64::MAX)`).
///
/// A bound below 0 is [`Error::NegativeVersion`], naming the start
/// `from_version` and the end `to_version`, with the value as given. A
/// range with no version in it, empty (`3..3`) or inverted (`5..=3`), is
/// [`Error::InvalidVersionRange`] with its inclusive bounds (`3..3` is
/// from 3 to 2), as the same bounds given as `Option`s were.
pub(crate) fn versions(range: &impl RangeBounds<i64>) -> Result<(i64, i64)> {
    for (what, bound) in [
        ("from_version", range.start_bound()),
        ("to_version", range.end_bound()),
    ] {
        if let Bound::Included(&value) | Bound::Excluded(&value) = bound
            && value < 0
        {
            return Err(Error::NegativeVersion { what, value });
        }
    }
    // Both bounds are 0 or more: an excluded end cannot underflow.
    let to = match range.end_bound() {
        Bound::Included(&to) => to,
        Bound::Excluded(&end) => end - 1,
        Bound::Unbounded => i64::MAX,
    };
    let from = match range.start_bound() {
        Bound::Included(&from) => from,
        Bound::Excluded(&start) => match start.checked_add(1) {
            Some(from) => from,
            // No version follows i64::MAX: the range is as empty as
            // `i64::MAX..i64::MAX`, and refused as that one is.
            None => {
                return Err(Error::InvalidVersionRange {
                    from: i64::MAX,
                    to: to.min(i64::MAX - 1),
                });
            }
        },
        Bound::Unbounded => 0,
    };
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
pub(crate) fn snapshot(snapshot: &crate::Snapshot, max_depth: usize) -> Result<()> {
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
    json(&snapshot.state, TextField::SnapshotState, None, max_depth)
}

/// Checks a read-model collection name and document id.
pub(crate) fn document_key(collection: &str, id: &str) -> Result<()> {
    name(collection, NameField::Collection, None)?;
    name(id, NameField::DocumentId, None)
}

/// Checks a read-model collection name.
pub(crate) fn collection(collection: &str) -> Result<()> {
    name(collection, NameField::Collection, None)
}

/// Checks a read-model document's JSON.
pub(crate) fn document(body: &RawValue, max_depth: usize) -> Result<()> {
    json(body, TextField::Document, None, max_depth)
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

/// Checks JSON text for what PostgreSQL's `jsonb` refuses, and for
/// nesting deeper than `max_depth`.
fn json(value: &RawValue, field: TextField, index: Option<usize>, max_depth: usize) -> Result<()> {
    if let Some((offset, reason)) = unstorable_in_json(value.get()) {
        return Err(Error::UnstorableText {
            field,
            index,
            offset,
            reason,
        });
    }
    if let Some(depth) = deeper_than(value.get(), max_depth) {
        return Err(Error::JsonTooDeep {
            field,
            index,
            depth,
            max: max_depth,
        });
    }
    Ok(())
}

/// The depth of JSON text (see [`json_depth`]) when it is deeper than
/// `max`.
///
/// Most values hold fewer brackets than the limit, counted at `memchr`'s
/// speed (brackets in strings counted too, so the count is a bound):
/// those cannot be too deep, and are not scanned further.
fn deeper_than(text: &str, max: usize) -> Option<usize> {
    let bound = memchr::memchr2_iter(b'[', b'{', text.as_bytes())
        .take(max + 1)
        .count();
    if bound <= max {
        return None;
    }
    Some(json_depth(text)).filter(|depth| *depth > max)
}

/// How deep valid JSON text nests arrays and objects: 0 for a scalar, 1
/// for `[]`, `[1]` or `{"a":1}`, 2 for `{"a":[1]}`.
///
/// One pass with a counter, no recursion, so that text nested a million
/// levels deep is measured, not a stack overflow. Strings are skipped
/// with `memchr` (a bracket in a string does not count); an escape is a
/// backslash and the character after it, so `"\"` ends where it should.
/// Text that is not valid JSON gets some number, never a panic.
pub(crate) fn json_depth(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut at) = (0usize, 0usize, 0usize);
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'"' => {
                // Past the closing quote, or the end of a cut-off string.
                at += 1;
                loop {
                    let rest = bytes.get(at..).unwrap_or_default();
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(found) if rest[found] == b'\\' => at += found + 2,
                        Some(found) => {
                            at += found + 1;
                            break;
                        }
                        None => {
                            at = bytes.len();
                            break;
                        }
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    deepest
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
    use crate::limits::{MAX_JSON_DEPTH, MAX_JSON_DEPTH_MYSQL};

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn json_depth_counts_arrays_and_objects_not_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#""[{[{""#), 0);
        assert_eq!(json_depth("[]"), 1);
        assert_eq!(json_depth(r#"{"a":1}"#), 1);
        assert_eq!(json_depth(r#"{"a":[1]}"#), 2);
        assert_eq!(json_depth(r#"{"a":[{}]}"#), 3);
        assert_eq!(json_depth(r#"[[1],[[2]],{"b":{"c":[]}}]"#), 4);
        // brackets in strings and keys, escaped quotes and backslashes
        assert_eq!(json_depth(r#"{"[[[": "]]]{{{", "x": ["\"[", "\\"]}"#), 2);
        assert_eq!(json_depth(r#"["\\", ["\\\"]"]]"#), 2);
        assert_eq!(json_depth(r#"["a\u005b", []]"#), 2);
        // cut-off or invalid text gets a number, never a panic
        for text in ["", "[", "]]]", "\"", r#"["\"#, r#"["abc"#, "{{{"] {
            let _ = json_depth(text);
        }
        assert_eq!(json_depth(&nested(MAX_JSON_DEPTH)), MAX_JSON_DEPTH);
    }

    #[test]
    fn json_depth_measures_a_million_levels_without_recursion() {
        let text = nested(1_000_000);
        assert_eq!(json_depth(&text), 1_000_000);
        assert_eq!(deeper_than(&text, MAX_JSON_DEPTH), Some(1_000_000));
    }

    #[test]
    fn depth_limit_is_checked_at_and_past_the_limit() {
        for max in [MAX_JSON_DEPTH, MAX_JSON_DEPTH_MYSQL] {
            assert_eq!(deeper_than(&nested(max), max), None);
            assert_eq!(deeper_than(&nested(max + 1), max), Some(max + 1));
            // many brackets side by side are not deep
            let wide = format!("[{}]", vec!["[]"; 10 * max].join(","));
            assert_eq!(deeper_than(&wide, max), None);
            // brackets in strings are not deep either
            let quoted = format!("[\"{}\"]", "[".repeat(10 * max));
            assert_eq!(deeper_than(&quoted, max), None);
        }
        let raw = RawValue::from_string(nested(MAX_JSON_DEPTH + 1)).unwrap();
        assert!(matches!(
            json(&raw, TextField::Metadata, Some(2), MAX_JSON_DEPTH),
            Err(Error::JsonTooDeep {
                field: TextField::Metadata,
                index: Some(2),
                depth: 101,
                max: 100
            })
        ));
        let mut event = event("a");
        event.payload = RawValue::from_string(nested(MAX_JSON_DEPTH_MYSQL + 1)).unwrap();
        let mut events = vec![event.clone()];
        assert!(append(ExpectedVersion::Any, &mut events, MAX_JSON_DEPTH).is_ok());
        assert!(matches!(
            append(ExpectedVersion::Any, &mut events, MAX_JSON_DEPTH_MYSQL),
            Err(Error::JsonTooDeep {
                field: TextField::Payload,
                index: Some(0),
                depth: 32,
                max: 31
            })
        ));
    }

    /// What the store accepts, the store and the derive can read back:
    /// a stored value is held as a `RawValue` (whose parser does not
    /// recurse), and decoded, upcast or compared with serde_json, which
    /// stops at 128 levels.
    #[test]
    fn json_at_the_depth_limit_is_read_back_by_serde_json() {
        for max in [MAX_JSON_DEPTH, MAX_JSON_DEPTH_MYSQL] {
            let text = format!("{}1{}", r#"{"a":["#.repeat(max / 2), "]}".repeat(max / 2));
            let text = if max % 2 == 1 {
                format!("[{text}]")
            } else {
                text
            };
            assert_eq!(json_depth(&text), max);
            let raw = RawValue::from_string(text.clone()).unwrap();
            assert!(serde_json::from_str::<serde_json::Value>(raw.get()).is_ok());
            let spaced = RawValue::from_string(text.replace(':', ": ")).unwrap();
            assert!(crate::core::same_json(&raw, &spaced).unwrap());
        }
        // serde_json's own limit, which the store's stays under
        assert!(serde_json::from_str::<serde_json::Value>(&nested(127)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(128)).is_err());
        // a RawValue holds any depth, so reading rows never fails on it
        assert!(RawValue::from_string(nested(100_000)).is_ok());
    }

    fn event(id: &str) -> Event {
        Event::new("Billing", "Account", id, "Opened", &serde_json::json!({})).unwrap()
    }

    #[test]
    fn exact_zero_is_no_stream() {
        let mut events = vec![event("a")];
        assert_eq!(
            append(ExpectedVersion::Exact(0), &mut events, MAX_JSON_DEPTH).unwrap(),
            ExpectedVersion::NoStream
        );
    }

    #[test]
    fn duplicate_ids_are_found_in_small_and_large_batches() {
        for len in [2, 17, 100] {
            let mut events: Vec<_> = (0..len).map(|_| event("a")).collect();
            events[len - 1].event_id = events[0].event_id;
            let err = append(ExpectedVersion::Any, &mut events, MAX_JSON_DEPTH).unwrap_err();
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
            json(&payload, TextField::Payload, Some(3), MAX_JSON_DEPTH),
            Err(Error::UnstorableText {
                field: TextField::Payload,
                index: Some(3),
                offset: 7,
                reason: UnstorableTextReason::Nul
            })
        ));
        let lone = RawValue::from_string(r#"["\ud800"]"#.to_owned()).unwrap();
        assert!(matches!(
            json(&lone, TextField::Metadata, None, MAX_JSON_DEPTH),
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
        assert!(append(ExpectedVersion::Any, &mut events, MAX_JSON_DEPTH).is_ok());
        let mut events = vec![event("a"), event("a").with_trace_id("t".repeat(256))];
        assert!(matches!(
            append(ExpectedVersion::Any, &mut events, MAX_JSON_DEPTH),
            Err(Error::NameTooLong {
                field: NameField::TraceId,
                index: Some(1),
                ..
            })
        ));
    }

    #[test]
    // Empty and inverted ranges are given on purpose, to see them refused.
    #[allow(clippy::reversed_empty_ranges)]
    fn ranges() {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        const MAX: i64 = i64::MAX;
        assert_eq!(versions(&..).unwrap(), (0, MAX));
        assert_eq!(versions(&(3..=3)).unwrap(), (3, 3));
        assert_eq!(versions(&(3..4)).unwrap(), (3, 3));
        assert_eq!(versions(&(5..)).unwrap(), (5, MAX));
        assert_eq!(versions(&(..=3)).unwrap(), (0, 3));
        assert_eq!(versions(&(..3)).unwrap(), (0, 2));
        assert_eq!(versions(&(0..=0)).unwrap(), (0, 0));
        assert_eq!(versions(&(0..=MAX)).unwrap(), (0, MAX));
        assert_eq!(versions(&(0..MAX)).unwrap(), (0, MAX - 1));
        assert_eq!(versions(&(MAX..)).unwrap(), (MAX, MAX));
        assert_eq!(versions(&(Excluded(2), Included(3))).unwrap(), (3, 3));
        assert_eq!(versions(&(Excluded(0), Unbounded)).unwrap(), (1, MAX));
        assert_eq!(
            versions(&(Excluded(MAX - 1), Unbounded)).unwrap(),
            (MAX, MAX)
        );
        assert_eq!(
            versions(&(Bound::<i64>::Unbounded, Unbounded)).unwrap(),
            (0, MAX)
        );
        // inverted and empty ranges, with their inclusive bounds
        fn invalid(range: impl RangeBounds<i64>) -> Option<(i64, i64)> {
            match versions(&range) {
                Err(Error::InvalidVersionRange { from, to }) => Some((from, to)),
                _ => None,
            }
        }
        assert_eq!(invalid(4..=3), Some((4, 3)));
        assert_eq!(invalid(4..3), Some((4, 2)));
        assert_eq!(invalid(3..3), Some((3, 2)));
        assert_eq!(invalid(0..0), Some((0, -1)));
        assert_eq!(invalid(..0), Some((0, -1)));
        assert_eq!(invalid(MAX..MAX), Some((MAX, MAX - 1)));
        assert_eq!(invalid((Excluded(3), Included(3))), Some((4, 3)));
        assert_eq!(invalid((Excluded(3), Excluded(4))), Some((4, 3)));
        // nothing follows i64::MAX
        assert_eq!(invalid((Excluded(MAX), Unbounded)), Some((MAX, MAX - 1)));
        assert_eq!(
            invalid((Excluded(MAX), Included(MAX))),
            Some((MAX, MAX - 1))
        );
        assert_eq!(invalid((Excluded(MAX), Included(5))), Some((MAX, 5)));
        // negative bounds, as given, the start first
        fn negative(range: impl RangeBounds<i64>) -> Option<(&'static str, i64)> {
            match versions(&range) {
                Err(Error::NegativeVersion { what, value }) => Some((what, value)),
                _ => None,
            }
        }
        assert_eq!(negative(..=-1), Some(("to_version", -1)));
        assert_eq!(negative(..-1), Some(("to_version", -1)));
        assert_eq!(negative(..i64::MIN), Some(("to_version", i64::MIN)));
        assert_eq!(negative(-1..), Some(("from_version", -1)));
        assert_eq!(
            negative((Excluded(-1), Unbounded)),
            Some(("from_version", -1))
        );
        assert_eq!(negative(-2..=-5), Some(("from_version", -2)));
        assert_eq!(negative(i64::MIN..=-5), Some(("from_version", i64::MIN)));
        assert_eq!(negative(5..=-5), Some(("to_version", -5)));
    }
}
