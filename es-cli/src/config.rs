//! Where the store is: the URL and the table names, from the flags, the
//! config file and the environment.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// The config file (`--config FILE`, or `$ES_CONFIG`): every key is
/// optional, and a flag given on the command line wins over it.
///
/// ```toml
/// url = "postgres://app@db.internal:5432/app"
/// schema = "billing"
/// events_table = "events"
/// heads_table = "aggregate_heads"
/// checkpoints_table = "checkpoints"
/// snapshots_table = "snapshots"
/// failures_table = "projection_failures"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) url: Option<String>,
    pub(crate) schema: Option<String>,
    pub(crate) events_table: Option<String>,
    pub(crate) heads_table: Option<String>,
    pub(crate) checkpoints_table: Option<String>,
    pub(crate) snapshots_table: Option<String>,
    pub(crate) failures_table: Option<String>,
}

impl FileConfig {
    /// The names the file sets.
    pub(crate) fn names(&self) -> Names {
        Names {
            schema: self.schema.clone(),
            events_table: self.events_table.clone(),
            heads_table: self.heads_table.clone(),
            checkpoints_table: self.checkpoints_table.clone(),
            snapshots_table: self.snapshots_table.clone(),
            failures_table: self.failures_table.clone(),
        }
    }
}

/// The store's schema and table names; `None` keeps the store's default.
#[derive(Debug, Clone, Default)]
pub(crate) struct Names {
    pub(crate) schema: Option<String>,
    pub(crate) events_table: Option<String>,
    pub(crate) heads_table: Option<String>,
    pub(crate) checkpoints_table: Option<String>,
    pub(crate) snapshots_table: Option<String>,
    pub(crate) failures_table: Option<String>,
}

impl Names {
    /// `self`, with what it leaves unset taken from `fallback`.
    pub(crate) fn or(self, fallback: Names) -> Names {
        Names {
            schema: self.schema.or(fallback.schema),
            events_table: self.events_table.or(fallback.events_table),
            heads_table: self.heads_table.or(fallback.heads_table),
            checkpoints_table: self.checkpoints_table.or(fallback.checkpoints_table),
            snapshots_table: self.snapshots_table.or(fallback.snapshots_table),
            failures_table: self.failures_table.or(fallback.failures_table),
        }
    }

    /// Builds the store these names describe.
    pub(crate) fn build<D: es_store::Dialect>(&self) -> Result<es_store::SqlStore<D>, Error> {
        let mut builder = es_store::SqlStore::<D>::builder();
        if let Some(schema) = &self.schema {
            builder = builder.schema(schema);
        }
        if let Some(name) = &self.events_table {
            builder = builder.events_table(name);
        }
        if let Some(name) = &self.heads_table {
            builder = builder.heads_table(name);
        }
        if let Some(name) = &self.checkpoints_table {
            builder = builder.checkpoints_table(name);
        }
        if let Some(name) = &self.snapshots_table {
            builder = builder.snapshots_table(name);
        }
        if let Some(name) = &self.failures_table {
            builder = builder.failures_table(name);
        }
        builder.build().map_err(|e| Error::Usage(e.to_string()))
    }

    /// The events table's own name (unqualified).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn events(&self) -> &str {
        self.events_table.as_deref().unwrap_or("events")
    }
}

/// Reads and parses the config file.
pub(crate) fn read_file(path: &Path) -> Result<FileConfig, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Usage(format!(
            "cannot read the config file {}: {e}",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        // toml's Display quotes the line at fault over several lines: say
        // the message and the line number instead.
        let line = e
            .span()
            .map(|span| {
                format!(
                    " (line {})",
                    text[..span.start.min(text.len())].matches('\n').count() + 1
                )
            })
            .unwrap_or_default();
        Error::Usage(format!(
            "bad config file {}: {}{line}",
            path.display(),
            e.message().trim()
        ))
    })
}

/// The database the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Postgres,
    Sqlite,
    MySql,
}

impl Scheme {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scheme::Postgres => "PostgreSQL",
            Scheme::Sqlite => "SQLite",
            Scheme::MySql => "MySQL",
        }
    }

    /// The backend a URL's scheme names.
    pub(crate) fn of(url: &str) -> Result<Scheme, Error> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => Ok(Scheme::Postgres),
            Some("sqlite") => Ok(Scheme::Sqlite),
            Some("mysql" | "mariadb") => Ok(Scheme::MySql),
            _ => Err(Error::Usage(format!(
                "cannot tell the database from the URL `{}`: it must start with postgres://, \
                 sqlite: or mysql://",
                redact(url)
            ))),
        }
    }
}

/// Where the store is: the URL (given, or from the config file or
/// `DATABASE_URL`) and the names.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub(crate) url: String,
    pub(crate) scheme: Scheme,
    pub(crate) names: Names,
}

impl Location {
    /// `--url`, else the config file's `url`, else `DATABASE_URL`; names
    /// from the flags, else the config file.
    pub(crate) fn resolve(
        url: Option<String>,
        config: Option<PathBuf>,
        names: Names,
    ) -> Result<Location, Error> {
        let file = config
            .as_deref()
            .map(read_file)
            .transpose()?
            .unwrap_or_default();
        let url = url
            .or(file.url.clone())
            .or_else(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()))
            .ok_or_else(|| {
                Error::Usage(
                    "no database: pass --url, set DATABASE_URL, or give a config file with `url`"
                        .into(),
                )
            })?;
        let scheme = Scheme::of(&url)?;
        Ok(Location {
            url,
            scheme,
            names: names.or(file.names()),
        })
    }

    /// The URL without its password, for messages.
    pub(crate) fn shown(&self) -> String {
        redact(&self.url)
    }
}

/// `url` with the password (between `user:` and `@`) replaced by `***`.
///
/// ```text
/// postgres://app:secret@db/x  ->  postgres://app:***@db/x
/// ```
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _)) => format!(
                "{scheme}://{user}:***{}{}",
                &authority[at..],
                &rest[authority_end..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            redact("mysql://root:p%40ss@h/db?ssl=1"),
            "mysql://root:***@h/db?ssl=1"
        );
        assert_eq!(redact("sqlite:events.db"), "sqlite:events.db");
    }

    #[test]
    fn schemes_choose_the_backend() {
        assert_eq!(Scheme::of("postgresql://x").unwrap(), Scheme::Postgres);
        assert_eq!(Scheme::of("sqlite:///tmp/x.db").unwrap(), Scheme::Sqlite);
        assert_eq!(Scheme::of("mariadb://x").unwrap(), Scheme::MySql);
        assert!(matches!(Scheme::of("http://x"), Err(Error::Usage(_))));
        assert!(matches!(Scheme::of("events.db"), Err(Error::Usage(_))));
    }

    #[test]
    fn config_files_fill_what_flags_leave() {
        let file: FileConfig =
            toml::from_str("url = \"sqlite:x.db\"\nevents_table = \"ev\"\nschema = \"s\"").unwrap();
        let names = Names {
            schema: Some("flag".into()),
            ..Names::default()
        }
        .or(file.names());
        assert_eq!(names.schema.as_deref(), Some("flag"));
        assert_eq!(names.events(), "ev");
        assert!(toml::from_str::<FileConfig>("evnts_table = \"x\"").is_err());
    }
}
