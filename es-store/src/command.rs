//! Command ids: the identity of one command, from which its events' ids
//! are derived, so that running it again is recognised.

use sha1::{Digest, Sha1};
use uuid::Uuid;

/// The identity of one command: the events it produces get ids derived
/// from it ([`CommandId::event_id`]), so the store recognises a command that
/// runs again (after a lost reply, or a client's retry) by its events' ids.
///
/// Give one to make a command idempotent across calls, for example from an
/// HTTP `Idempotency-Key` ([`CommandId::from_key`]), with
/// [`Metadata::with_command_id`](crate::Metadata::with_command_id). Without
/// one, the repository makes a new id for each call
/// ([`CommandId::new`]), which is what makes its own retries after a lost
/// reply safe.
///
/// ```
/// use es_store::CommandId;
///
/// let key = CommandId::from_key("9f0c3f4e-order-17");
/// assert_eq!(key, CommandId::from_key("9f0c3f4e-order-17"));
/// assert_ne!(key, CommandId::from_key("9f0c3f4e-order-18"));
/// // the same event ids, call after call; a different one per event
/// assert_eq!(key.event_id(0), CommandId::from_key("9f0c3f4e-order-17").event_id(0));
/// assert_ne!(key.event_id(0), key.event_id(1));
/// assert_ne!(CommandId::new(), CommandId::new());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(Uuid);

/// The namespace of [`CommandId::from_key`]'s name-based UUIDs.
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_5d0e_8f43_4b7a_9d2e_0c61_f3b8_a254);

impl CommandId {
    /// A new, unique id (a UUID v7: time-ordered, so that the event ids
    /// derived from it keep the store's index of event ids growing at its
    /// end as random ids would not).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id of a command named by a key of the caller's, such as an HTTP
    /// `Idempotency-Key`: a name-based UUID (version 5, SHA-1), the same
    /// for the same key in every process and release.
    pub fn from_key(key: &str) -> Self {
        let hash = Sha1::new()
            .chain_update(KEY_NAMESPACE.as_bytes())
            .chain_update(key.as_bytes())
            .finalize();
        let bytes: [u8; 16] = hash[..16].try_into().expect("SHA-1 has 20 bytes");
        Self(uuid::Builder::from_sha1_bytes(bytes).into_uuid())
    }

    /// The command id `id`, as given (for example one the client sent).
    ///
    /// ```
    /// # use es_store::CommandId;
    /// let sent = uuid::Uuid::now_v7();
    /// assert_eq!(CommandId::from_uuid(sent).as_uuid(), sent);
    /// assert_eq!(CommandId::from(sent), CommandId::from_uuid(sent));
    /// ```
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The id as a UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The id of the command's event number `index` (0 for the first):
    /// a UUID version 8 whose first 48 bits are the command id's (its time,
    /// for a [`CommandId::new`]) and whose other bits come from a SHA-1 of
    /// the command id and the index. The same command id and index give
    /// the same event id in every process and release.
    ///
    /// ```
    /// # use es_store::CommandId;
    /// let command = CommandId::new();
    /// let first = command.event_id(0);
    /// assert_eq!(first.get_version_num(), 8);
    /// assert_eq!(&first.as_bytes()[..6], &command.as_uuid().as_bytes()[..6]);
    /// ```
    pub fn event_id(&self, index: usize) -> Uuid {
        let hash = Sha1::new()
            .chain_update(self.0.as_bytes())
            .chain_update((index as u64).to_be_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&self.0.as_bytes()[..6]);
        bytes[6..].copy_from_slice(&hash[..10]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

impl CommandId {
    /// The id of command number `index` (0 for the first) of a unit of
    /// work whose id this is: derived like [`CommandId::event_id`], with
    /// the same time prefix, from another hash, so that a unit of work
    /// run again gives each of its commands the same id as before.
    ///
    /// ```
    /// # use es_store::CommandId;
    /// let unit = CommandId::from_key("transfer-42");
    /// assert_eq!(unit.part(0), unit.part(0));
    /// assert_ne!(unit.part(0), unit.part(1));
    /// assert_ne!(unit.part(0).as_uuid(), unit.event_id(0));
    /// ```
    pub fn part(&self, index: usize) -> CommandId {
        let hash = Sha1::new()
            .chain_update(self.0.as_bytes())
            .chain_update(b"command")
            .chain_update((index as u64).to_be_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&self.0.as_bytes()[..6]);
        bytes[6..].copy_from_slice(&hash[..10]);
        CommandId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }
}

impl From<Uuid> for CommandId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl From<CommandId> for Uuid {
    fn from(id: CommandId) -> Self {
        id.0
    }
}

impl std::fmt::Display for CommandId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derivations are part of the stored data: a command id given
    /// today must find the events it stored years ago. These values must
    /// never change.
    #[test]
    fn derived_ids_are_pinned() {
        let key = CommandId::from_key("order-17");
        assert_eq!(key.as_uuid().get_version_num(), 5);
        assert_eq!(key.to_string(), PINNED_KEY);
        let command = CommandId::from_uuid("01a237ea-b95e-7000-8000-000000000001".parse().unwrap());
        assert_eq!(command.event_id(0).to_string(), PINNED_EVENT_0);
        assert_eq!(command.event_id(1).to_string(), PINNED_EVENT_1);
        assert_eq!(command.part(0).to_string(), PINNED_PART_0);
    }

    // Computed independently (Python's uuid.uuid5, and hashlib.sha1 over
    // the command id's bytes and the index as 8 big-endian bytes).
    const PINNED_KEY: &str = "0b36e088-a664-5287-b15d-d6a598e90aa7";
    const PINNED_EVENT_0: &str = "01a237ea-b95e-875d-9684-7a1284c8fc06";
    const PINNED_EVENT_1: &str = "01a237ea-b95e-8b5e-950e-eda16ff43adf";
    // hashlib.sha1 over the id's bytes, b"command" and the index.
    const PINNED_PART_0: &str = "01a237ea-b95e-8412-b5ae-952e45b80ca2";
}
