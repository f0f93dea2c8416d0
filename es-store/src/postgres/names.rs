//! Table and schema names: validated once, quoted whenever rendered.

use crate::{Error, Result};

/// Longest table name accepted: PostgreSQL keeps 63 bytes of an identifier,
/// and the store derives sequence and constraint names by appending up to 20
/// bytes (`_global_position_seq`).
pub(crate) const MAX_TABLE_NAME: usize = 40;
/// Longest schema name accepted.
pub(crate) const MAX_SCHEMA_NAME: usize = 63;

/// A name that is safe to put into SQL between double quotes: ASCII letters,
/// digits and underscores, not starting with a digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ident(String);

impl Ident {
    pub(crate) fn new(what: &'static str, name: &str, max_len: usize) -> Result<Self> {
        let invalid = |reason| Error::InvalidIdentifier {
            what,
            name: name.to_owned(),
            reason,
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(invalid("it is empty")),
            Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
                return Err(invalid("it must start with an ASCII letter or `_`"));
            }
            Some(_) => {}
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                "it may only hold ASCII letters, digits and `_` (names are quoted, so case is kept)",
            ));
        }
        if name.len() > max_len {
            return Err(invalid(if max_len == MAX_TABLE_NAME {
                "table names are limited to 40 bytes so that derived names fit PostgreSQL's 63"
            } else {
                "PostgreSQL identifiers are limited to 63 bytes"
            }));
        }
        Ok(Ident(name.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Refuses a store configuration that gives two tables the same name.
pub(crate) fn distinct_tables(tables: [&Ident; 5]) -> Result<()> {
    if tables
        .iter()
        .enumerate()
        .any(|(i, a)| tables[i + 1..].contains(a))
    {
        return Err(Error::InvalidIdentifier {
            what: "table names",
            name: tables
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reason: "the store's five tables need distinct names",
        });
    }
    Ok(())
}

/// The store's tables, fully rendered for SQL.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) schema: Option<Ident>,
    pub(crate) events: Ident,
    pub(crate) heads: Ident,
    pub(crate) checkpoints: Ident,
    pub(crate) snapshots: Ident,
    pub(crate) failures: Ident,
    /// Whether appends send a notification.
    pub(crate) notify: bool,
}

impl Names {
    /// `"schema"."name"`, or `"name"` without a schema (the search path decides).
    pub(crate) fn qualified(&self, name: &str) -> String {
        match &self.schema {
            Some(schema) => format!("\"{}\".\"{}\"", schema.as_str(), name),
            None => format!("\"{name}\""),
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

    /// Who listens to the appends' notifications: named after the events
    /// table (at most 40 + 10 bytes).
    pub(crate) fn listeners(&self) -> String {
        self.qualified(&format!("{}_listeners", self.events.as_str()))
    }

    /// The function that tells whether any of some event ids is stored:
    /// named after the events table (at most 40 + 11 bytes).
    pub(crate) fn ids_stored_function(&self) -> String {
        self.qualified(&format!("{}_ids_stored", self.events.as_str()))
    }

    /// The function that locks an aggregate's head and then reads its
    /// events: named after the events table (at most 40 + 12 bytes).
    pub(crate) fn locked_tail_function(&self) -> String {
        self.qualified(&format!("{}_locked_tail", self.events.as_str()))
    }

    /// The LISTEN/NOTIFY channel of this store's appends: derived from the
    /// qualified events table name, so every process agrees on it.
    pub(crate) fn channel(&self) -> String {
        format!("es_appended_{:x}", fnv1a(self.events().as_bytes()))
    }

    pub(crate) fn sequence_name(&self) -> String {
        format!("{}_global_position_seq", self.events.as_str())
    }

    pub(crate) fn sequence(&self) -> String {
        self.qualified(&self.sequence_name())
    }

    pub(crate) fn event_id_constraint(&self) -> String {
        format!("{}_event_id_key", self.events.as_str())
    }

    pub(crate) fn stream_version_constraint(&self) -> String {
        format!("{}_stream_version_key", self.events.as_str())
    }

    pub(crate) fn migrations_table(&self) -> String {
        self.qualified("_es_migrations")
    }
}

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

    #[test]
    fn accepts_plain_identifiers() {
        for name in ["events", "_x", "Events2", "a_b_c"] {
            assert_eq!(
                Ident::new("table", name, MAX_TABLE_NAME).unwrap().as_str(),
                name
            );
        }
    }

    #[test]
    fn refuses_anything_else() {
        for name in [
            "",
            "1events",
            "ev ents",
            "ev\"ents",
            "events;drop table x",
            "évents",
            "a.b",
            &"x".repeat(41),
        ] {
            let err = Ident::new("table", name, MAX_TABLE_NAME).unwrap_err();
            assert!(
                matches!(err, Error::InvalidIdentifier { what: "table", .. }),
                "{name}"
            );
        }
    }
}
