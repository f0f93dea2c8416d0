//! Idempotent appends: deciding whether a refused batch repeats one earlier
//! append. Shared by every backend.

use crate::{AppendResult, Error, Event, EventIdConflictReason, PersistedEvent, Result};

/// `stored` holds, in batch order, the stored events whose ids the batch
/// uses, each with whether its event type, schema version and payload equal
/// the batch's. Returns the stored result if the batch repeats one append
/// exactly (same aggregate, same content, same order, nothing missing).
pub(crate) fn stored_result(
    events: &[Event],
    stored: Vec<(PersistedEvent, bool)>,
) -> Result<AppendResult> {
    let aggregate = events[0].aggregate();
    for (event, same_content) in &stored {
        if event.aggregate() != aggregate {
            return Err(Error::EventIdConflict {
                event_id: event.event_id,
                reason: EventIdConflictReason::OtherAggregate(event.aggregate().to_owned()),
            });
        }
        if !same_content {
            return Err(Error::EventIdConflict {
                event_id: event.event_id,
                reason: EventIdConflictReason::DifferentContent,
            });
        }
    }
    let first_version = stored[0].0.aggregate_version;
    let same_batch = stored.len() == events.len()
        && stored.iter().enumerate().all(|(i, (event, _))| {
            event.event_id == events[i].event_id
                && event.aggregate_version == first_version + i as i64
        });
    if !same_batch {
        let missing = events
            .iter()
            .zip(
                stored
                    .iter()
                    .map(|(e, _)| e.event_id)
                    .chain(std::iter::repeat(uuid::Uuid::nil())),
            )
            .find(|(event, stored_id)| event.event_id != *stored_id)
            .map_or(events[0].event_id, |(event, _)| event.event_id);
        return Err(Error::EventIdConflict {
            event_id: missing,
            reason: EventIdConflictReason::NotTheSameBatch,
        });
    }
    let mut result = AppendResult::new(stored.into_iter().map(|(event, _)| event).collect());
    result.replayed = true;
    Ok(result)
}
