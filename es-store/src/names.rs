//! Table and schema names, shared by every backend: validated once, when a
//! store is built, and quoted whenever rendered into SQL.

use crate::{Error, Result};

/// Longest table name accepted, on every backend: the store derives
/// sequence, index and table names by appending up to 20 bytes
/// (`_global_position_seq`), and the result must fit PostgreSQL's 63-byte
/// and MySQL's 64-character identifiers. SQLite has no limit, but keeps the
/// same one so that a configuration works on every backend.
pub(crate) const MAX_TABLE_NAME: usize = 40;

/// What a backend allows in the names the store is given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// The database's name, for messages.
    pub(crate) backend: &'static str,
    /// The character identifiers are quoted with (`"` or `` ` ``).
    pub(crate) quote: char,
    /// The longest schema (or database) name, when the backend has schemas.
    pub(crate) max_schema: Option<usize>,
}

/// A name that is safe to put into SQL between quotes: ASCII letters,
/// digits and underscores, not starting with a digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ident(String);

impl Ident {
    fn new(
        what: &'static str,
        name: &str,
        max_len: usize,
        reason_too_long: String,
    ) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidIdentifier {
            what,
            name: name.to_owned(),
            reason: reason.into(),
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(invalid("it is empty".into())),
            Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
                return Err(invalid("it must start with an ASCII letter or `_`".into()));
            }
            Some(_) => {}
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                "it may only hold ASCII letters, digits and `_` (names are quoted, so case is kept)"
                    .into(),
            ));
        }
        if name.len() > max_len {
            return Err(invalid(reason_too_long));
        }
        Ok(Ident(name.to_owned()))
    }

    /// A table name, limited to [`MAX_TABLE_NAME`] bytes.
    pub(crate) fn table(rules: &Rules, what: &'static str, name: &str) -> Result<Self> {
        let backend = rules.backend;
        let reason = match backend {
            "SQLite" => format!(
                "table names are limited to {MAX_TABLE_NAME} bytes on every backend, so that \
                 one configuration works on PostgreSQL and MySQL too"
            ),
            "MySQL" => format!(
                "table names are limited to {MAX_TABLE_NAME} bytes so that the names derived \
                 from them fit MySQL's 64-character identifiers"
            ),
            _ => format!(
                "table names are limited to {MAX_TABLE_NAME} bytes so that the names derived \
                 from them fit {backend}'s 63-byte identifiers"
            ),
        };
        Self::new(what, name, MAX_TABLE_NAME, reason)
    }

    /// A schema (PostgreSQL) or database (MySQL) name.
    pub(crate) fn schema(rules: &Rules, name: &str) -> Result<Self> {
        let Some(max) = rules.max_schema else {
            return Err(Error::InvalidIdentifier {
                what: "schema",
                name: name.to_owned(),
                reason: format!(
                    "{} has no schemas: use another database file instead",
                    rules.backend
                )
                .into(),
            });
        };
        let reason = format!("{} limits identifiers to {max} bytes", rules.backend);
        Self::new("schema", name, max, reason)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The store's tables, fully rendered for SQL.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) quote: char,
    pub(crate) schema: Option<Ident>,
    pub(crate) events: Ident,
    pub(crate) heads: Ident,
    pub(crate) checkpoints: Ident,
    pub(crate) snapshots: Ident,
    pub(crate) failures: Ident,
    pub(crate) documents: Ident,
    /// Whether appends send a notification (PostgreSQL).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) notify: bool,
}

impl Names {
    /// Refuses a configuration in which two of the names the store creates
    /// (its tables, and the tables, sequences and indexes it derives from
    /// them, on any backend) are the same.
    pub(crate) fn check_distinct(&self) -> Result<()> {
        let mut created: Vec<(String, &'static str)> = vec![
            (self.events.0.clone(), "the events table"),
            (self.heads.0.clone(), "the heads table"),
            (self.checkpoints.0.clone(), "the checkpoints table"),
            (self.snapshots.0.clone(), "the snapshots table"),
            (self.failures.0.clone(), "the failures table"),
            (self.documents.0.clone(), "the read models table"),
        ];
        let events = self.events.as_str();
        for suffix in DERIVED_SUFFIXES {
            created.push((
                format!("{events}{suffix}"),
                "a name derived from the events table",
            ));
        }
        created.push((self.migrations_name(), "the migrations table"));
        for (i, (name, what)) in created.iter().enumerate() {
            if let Some((_, other)) = created[i + 1..].iter().find(|(n, _)| n == name) {
                return Err(Error::InvalidIdentifier {
                    what: "table names",
                    name: name.clone(),
                    reason: format!(
                        "it would name both {what} and {other}: every table and every name the \
                         store derives from them must be distinct"
                    )
                    .into(),
                });
            }
        }
        Ok(())
    }

    fn quoted(&self, name: &str) -> String {
        let q = self.quote;
        format!("{q}{name}{q}")
    }

    /// `"schema"."name"`, or `"name"` without a schema (the search path, or
    /// the connection's database, decides).
    pub(crate) fn qualified(&self, name: &str) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", self.quoted(schema.as_str()), self.quoted(name)),
            None => self.quoted(name),
        }
    }

    pub(crate) fn events(&self) -> String {
        self.qualified(self.events.as_str())
    }

    pub(crate) fn heads(&self) -> String {
        self.qualified(self.heads.as_str())
    }

    pub(crate) fn checkpoints(&self) -> String {
        self.qualified(self.checkpoints.as_str())
    }

    pub(crate) fn snapshots(&self) -> String {
        self.qualified(self.snapshots.as_str())
    }

    pub(crate) fn failures(&self) -> String {
        self.qualified(self.failures.as_str())
    }

    /// The table recording each projection's versions and which one is
    /// active (derived from the events table, like the others the store
    /// adds after its first migration).
    pub(crate) fn versions(&self) -> String {
        self.derived_qualified(VERSIONS)
    }

    pub(crate) fn documents(&self) -> String {
        self.qualified(self.documents.as_str())
    }

    /// A name derived from the events table (one of [`DERIVED_SUFFIXES`]).
    pub(crate) fn derived(&self, suffix: &str) -> String {
        debug_assert!(DERIVED_SUFFIXES.contains(&suffix), "{suffix}");
        format!("{}{suffix}", self.events.as_str())
    }

    /// [`derived`](Self::derived), qualified and quoted.
    pub(crate) fn derived_qualified(&self, suffix: &str) -> String {
        self.qualified(&self.derived(suffix))
    }

    /// The LISTEN/NOTIFY channel of this store's appends: derived from the
    /// qualified events table name, so every process agrees on it.
    #[cfg(feature = "postgres")]
    pub(crate) fn channel(&self) -> String {
        format!("es_appended_{:x}", fnv1a(self.events().as_bytes()))
    }

    /// The table the store's migrations are tracked in: `_es_migrations`
    /// for a store on the default events table, `_es_migrations_<events
    /// table>` otherwise, so that several stores in one schema each track
    /// their own.
    fn migrations_name(&self) -> String {
        match self.events.as_str() {
            "events" => "_es_migrations".to_owned(),
            events => format!("_es_migrations_{events}"),
        }
    }

    pub(crate) fn migrations_table(&self) -> String {
        self.qualified(&self.migrations_name())
    }
}

/// Every suffix the backends append to the events table's name for what
/// they derive from it: PostgreSQL's sequence, unique indexes, listeners
/// table and functions, SQLite's indexes, the projection versions table,
/// and future backends'.
pub(crate) const DERIVED_SUFFIXES: [&str; 9] = [
    SEQUENCE,
    EVENT_ID_KEY,
    STREAM_VERSION_KEY,
    LISTENERS,
    IDS_STORED,
    LOCKED_TAIL,
    POSITION,
    LOCKS,
    VERSIONS,
];

pub(crate) const SEQUENCE: &str = "_global_position_seq";
pub(crate) const EVENT_ID_KEY: &str = "_event_id_key";
pub(crate) const STREAM_VERSION_KEY: &str = "_stream_version_key";
pub(crate) const LISTENERS: &str = "_listeners";
pub(crate) const IDS_STORED: &str = "_ids_stored";
pub(crate) const LOCKED_TAIL: &str = "_locked_tail";
pub(crate) const POSITION: &str = "_position";
pub(crate) const LOCKS: &str = "_locks";
pub(crate) const VERSIONS: &str = "_projection_versions";

#[cfg(feature = "postgres")]
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG: Rules = Rules {
        backend: "PostgreSQL",
        quote: '"',
        max_schema: Some(63),
    };

    #[test]
    fn accepts_plain_identifiers() {
        for name in ["events", "_x", "Events2", "a_b_c"] {
            assert_eq!(Ident::table(&PG, "table", name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_anything_else() {
        for name in [
            "",
            "1events",
            "ev ents",
            "ev\"ents",
            "ev`ents",
            "events;drop table x",
            "évents",
            "a.b",
            &"x".repeat(41),
        ] {
            let err = Ident::table(&PG, "table", name).unwrap_err();
            assert!(
                matches!(err, Error::InvalidIdentifier { what: "table", .. }),
                "{name}"
            );
        }
    }

    #[test]
    fn length_messages_name_the_backend() {
        let long = "x".repeat(41);
        for (backend, needle) in [
            ("PostgreSQL", "PostgreSQL's 63"),
            ("MySQL", "MySQL's 64"),
            ("SQLite", "every backend"),
        ] {
            let rules = Rules { backend, ..PG };
            let err = Ident::table(&rules, "events table", &long).unwrap_err();
            assert!(err.to_string().contains(needle), "{backend}: {err}");
        }
    }
}
