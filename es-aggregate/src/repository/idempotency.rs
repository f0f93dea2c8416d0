//! Command ids: whether a command's events are stored, and its original
//! outcome if they are.

use es_store::{
    AggregateStreamReader, CommandId, Connection, DomainEvent, Error as StoreError, EventStore,
    Metadata, PersistedEvent, SnapshotStore,
};

use super::{CommandIdReuse, Executed, Loaded, Repository, RepositoryError, Result};
use crate::Aggregate;

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventStore + AggregateStreamReader + SnapshotStore,
{
    /// Whether the command's events are stored: if they are, the original
    /// outcome, after checking (with `verify`) that they are this
    /// aggregate's and that the command decides them on the state before
    /// them.
    pub(super) async fn find_applied(
        &self,
        conn: &mut Connection<S>,
        id: &str,
        command: &A::Command,
        command_id: CommandId,
        verify: bool,
    ) -> Result<Option<Executed<A>>, A> {
        /// How many event ids one lookup asks for; a longer batch takes
        /// more lookups.
        const LOOKUP_IDS: usize = 16;
        let mut stored: Vec<PersistedEvent> = Vec::new();
        loop {
            let from = stored.len();
            let ids: Vec<uuid::Uuid> = (from..from + LOOKUP_IDS)
                .map(|index| command_id.event_id(index))
                .collect();
            let found = self.store.events_by_id(conn, &ids).await?;
            let run = found
                .iter()
                .zip(&ids)
                .take_while(|(event, id)| event.event_id == **id)
                .count();
            stored.extend(found.into_iter().take(run));
            if run < ids.len() {
                break;
            }
        }
        let aggregate = Self::aggregate(id);
        let (Some(first), Some(last)) = (stored.first(), stored.last()) else {
            return Ok(None);
        };
        if first.aggregate() != aggregate {
            return Err(RepositoryError::CommandIdReused {
                command_id,
                aggregate: aggregate.to_owned(),
                reason: CommandIdReuse::OtherAggregate(Box::new(first.aggregate().to_owned())),
            });
        }
        let (first_version, version) = (first.aggregate_version, last.aggregate_version);
        let events = stored
            .iter()
            .map(|event| {
                A::Event::decode_json(&event.event_type, event.event_version, event.payload.get())
                    .map_err(|source| RepositoryError::Decode {
                        aggregate: aggregate.to_owned(),
                        source: Box::new(source),
                    })
            })
            .collect::<Result<Vec<_>, A>>()?;
        let Loaded { mut state, .. } = self.load_in(conn, id, Some(first_version - 1)).await?;
        if verify {
            let same = match state.handle(command) {
                Ok(decided) => same_events::<A>(id, &decided, &events)?,
                Err(_) => false,
            };
            if !same {
                return Err(RepositoryError::CommandIdReused {
                    command_id,
                    aggregate: aggregate.to_owned(),
                    reason: CommandIdReuse::DifferentCommand {
                        version: first_version,
                    },
                });
            }
        }
        for event in &events {
            state.apply(event);
        }
        tracing::debug!(%command_id, version, "command applied before, returning its outcome");
        Ok(Some(Executed {
            version,
            events,
            global_positions: stored.iter().map(|e| e.global_position).collect(),
            state,
            attempts: 1,
            transient_retries: 0,
            command_id,
            replayed: true,
        }))
    }
}

/// Whether two batches of events are the same when encoded (type, schema
/// version and payload, as JSON values), as the store compares a retried
/// batch.
pub(super) fn same_events<A: Aggregate>(
    id: &str,
    decided: &[A::Event],
    stored: &[A::Event],
) -> std::result::Result<bool, RepositoryError<A::Error>> {
    if decided.len() != stored.len() {
        return Ok(false);
    }
    let none = Metadata::default();
    let decided = A::Event::to_events(decided, id, &none)?;
    let stored = A::Event::to_events(stored, id, &none)?;
    let value = |event: &es_store::Event| {
        serde_json::from_str::<serde_json::Value>(event.payload.get())
            .map_err(|e| RepositoryError::Store(StoreError::Serialization(e)))
    };
    for (a, b) in decided.iter().zip(&stored) {
        if a.event_type != b.event_type
            || a.event_version != b.event_version
            || value(a)? != value(b)?
        {
            return Ok(false);
        }
    }
    Ok(true)
}
