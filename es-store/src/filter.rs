//! Narrowing the global feed: by bounded context, aggregate type and
//! partition of aggregates.

use crate::{Error, Event, NameField, PersistedEvent, Result};

/// Which events of the global feed a read returns.
///
/// Bounded contexts and aggregate types each restrict the feed when given
/// (an event must match one of each list given); a partition keeps the
/// aggregates whose [`stream_hash`] falls in it. Filters run in the
/// database, not after fetching.
///
/// ```
/// use es_store::{Event, EventFilter, Partition};
///
/// let filter = EventFilter::all().bounded_context("Billing").aggregate_type("Account");
/// let event = Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({}))?;
/// assert!(filter.matches(&event));
/// assert!(!EventFilter::all().aggregate_type("Invoice").matches(&event));
///
/// // every aggregate falls in exactly one of N partitions
/// let hits = (0..4)
///     .filter(|i| EventFilter::all().partition(Partition::new(*i, 4).unwrap()).matches(&event))
///     .count();
/// assert_eq!(hits, 1);
/// # Ok::<(), es_store::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    bounded_contexts: Vec<String>,
    aggregate_types: Vec<String>,
    partition: Option<Partition>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Also accepts events of this bounded context (the first call
    /// restricts the feed to it).
    pub fn bounded_context(mut self, name: impl Into<String>) -> Self {
        self.bounded_contexts.push(name.into());
        self
    }

    /// Also accepts events of this aggregate type (the first call restricts
    /// the feed to it).
    pub fn aggregate_type(mut self, name: impl Into<String>) -> Self {
        self.aggregate_types.push(name.into());
        self
    }

    /// Keeps only the aggregates of one partition.
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The bounded contexts accepted (all when empty).
    pub fn bounded_contexts(&self) -> &[String] {
        &self.bounded_contexts
    }

    /// The aggregate types accepted (all when empty).
    pub fn aggregate_types(&self) -> &[String] {
        &self.aggregate_types
    }

    /// The partition, if any.
    pub fn partition_of(&self) -> Option<Partition> {
        self.partition
    }

    /// Whether `event` passes the filter (what the database evaluates).
    pub fn matches(&self, event: &Event) -> bool {
        let listed =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        listed(&self.bounded_contexts, &event.bounded_context)
            && listed(&self.aggregate_types, &event.aggregate_type)
            && self.partition.is_none_or(|p| {
                p.contains(stream_hash(
                    &event.bounded_context,
                    &event.aggregate_type,
                    &event.aggregate_id,
                ))
            })
    }

    /// Refuses names that no event can have: empty ones, longer ones than
    /// the store keeps, ones holding NUL.
    pub(crate) fn validate(&self) -> Result<()> {
        for (names, field) in [
            (&self.bounded_contexts, NameField::BoundedContext),
            (&self.aggregate_types, NameField::AggregateType),
        ] {
            for name in names {
                crate::validate::name(name, field, None)?;
            }
        }
        Ok(())
    }
}

/// One of `count` disjoint shares of all aggregates.
///
/// ```
/// use es_store::{Error, Partition};
/// assert!(Partition::new(2, 4).is_ok());
/// assert!(matches!(Partition::new(4, 4), Err(Error::InvalidPartition { index: 4, count: 4 })));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition {
    index: u32,
    count: u32,
}

impl Partition {
    /// Partition `index` of `count` (`index < count`).
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::InvalidPartition { index, count });
        }
        Ok(Self { index, count })
    }

    /// Which partition this is.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many partitions there are.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether an aggregate with this stream hash falls in the partition.
    pub fn contains(&self, stream_hash: i64) -> bool {
        stream_hash % i64::from(self.count) == i64::from(self.index)
    }
}

/// The stable hash of an aggregate that partitions it: FNV-1a (64-bit) of
/// its bounded context, aggregate type and id, each followed by a zero
/// byte, shifted right by one so it is never negative. Stored with every
/// event.
///
/// ```
/// let hash = es_store::stream_hash("Billing", "Account", "acc-1");
/// assert!(hash >= 0);
/// assert_eq!(hash, es_store::stream_hash("Billing", "Account", "acc-1"));
/// assert_ne!(hash, es_store::stream_hash("Billing", "Account", "acc-2"));
/// ```
pub fn stream_hash(bounded_context: &str, aggregate_type: &str, aggregate_id: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [bounded_context, aggregate_type, aggregate_id] {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    (hash >> 1) as i64
}

/// A page of the global feed.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EventPage {
    /// The matching events, in position order.
    pub events: Vec<PersistedEvent>,
    /// How far the read looked: every event up to this position that
    /// passes the filter is in this page or an earlier one. A reader goes on
    /// from here, even when the page is empty, so a narrow filter does not
    /// rescan the events it skipped. A reader has caught up when a read
    /// returns nothing and `scanned_to` stops moving.
    pub scanned_to: i64,
}
