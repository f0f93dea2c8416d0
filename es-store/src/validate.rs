//! Input checks shared by every backend, run before anything is sent to a
//! database so that refused input writes nothing.

use std::collections::HashMap;

use chrono::SubsecRound;

use crate::{Error, Event, ExpectedVersion, NameField, Result};

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
    non_empty(&first.bounded_context, NameField::BoundedContext, Some(0))?;
    non_empty(&first.aggregate_type, NameField::AggregateType, Some(0))?;
    non_empty(&first.aggregate_id, NameField::AggregateId, Some(0))?;
    let aggregate = first.aggregate();
    for (index, event) in events.iter().enumerate() {
        if event.aggregate() != aggregate {
            return Err(Error::MixedAggregates {
                expected: Box::new(aggregate.to_owned()),
                found: Box::new(event.aggregate().to_owned()),
                index,
            });
        }
        non_empty(&event.event_type, NameField::EventType, Some(index))?;
        if event.event_version < 1 {
            return Err(Error::InvalidEventVersion {
                value: event.event_version,
                index,
            });
        }
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
    non_empty(bounded_context, NameField::BoundedContext, None)?;
    non_empty(aggregate_type, NameField::AggregateType, None)?;
    non_empty(aggregate_id, NameField::AggregateId, None)
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
pub(crate) fn projection_name(name: &str) -> Result<()> {
    non_empty(name, NameField::ProjectionName, None)
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
    Ok(())
}

fn non_empty(value: &str, field: NameField, index: Option<usize>) -> Result<()> {
    if value.is_empty() {
        return Err(Error::EmptyName { field, index });
    }
    Ok(())
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
