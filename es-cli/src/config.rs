//! Where the store is: the URL and the table names, from the flags, the
//! config file and the environment.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, redact};

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
#[derive(Clone, Default, Deserialize)]
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

impl std::fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileConfig")
            .field("url", &self.url.as_deref().map(redact::url))
            .field("names", &self.names())
            .finish()
    }
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

/// The config file's path as messages show it: a path that looks like a
/// URL (a URL given as `--config` by mistake) is shown as one.
pub(crate) fn shown_path(path: &Path) -> String {
    redact::scrub_urls(&path.display().to_string())
}

/// Reads and parses the config file. No message shows a value of the file
/// (a `url` may hold a password): only keys and line numbers.
pub(crate) fn read_file(path: &Path) -> Result<FileConfig, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Usage(format!(
            "cannot read the config file {}: {e}",
            shown_path(path)
        ))
    })?;
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|span| {
            format!(
                " (line {})",
                text[..span.start.min(text.len())].matches('\n').count() + 1
            )
        })
        .unwrap_or_default()
    };
    // Valid TOML first: its values are what a message must not show.
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        Error::Usage(format!(
            "bad config file {}: not valid TOML{}",
            shown_path(path),
            line_of(e.span())
        ))
    })?;
    toml::from_str(&text).map_err(|e: toml::de::Error| {
        // toml's Display quotes the line at fault over several lines, and
        // its message may quote a value: say the message without the
        // file's values, and the line number.
        let mut values = Vec::new();
        collect_values(&toml::Value::Table(table.clone()), &mut values);
        let message = hide_quoted_values(e.message().trim(), &values);
        Error::Usage(format!(
            "bad config file {}: {}{}",
            shown_path(path),
            redact::scrub_urls(&message),
            line_of(e.span())
        ))
    })
}

/// `message` with every quoted part (in backticks or double quotes, as
/// serde quotes what it was given) that holds one of `values` as `***`;
/// the rest (key names, what was expected) stays.
fn hide_quoted_values(message: &str, values: &[String]) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted: Option<(char, String)> = None;
    for c in message.chars() {
        match &mut quoted {
            Some((quote, text)) if c == *quote => {
                let hide = values
                    .iter()
                    .any(|v| !v.is_empty() && (text == v || text.contains(v.as_str())));
                out.push(*quote);
                out.push_str(if hide { "***" } else { text });
                out.push(c);
                quoted = None;
            }
            Some((_, text)) => text.push(c),
            None if c == '`' || c == '"' => quoted = Some((c, String::new())),
            None => out.push(c),
        }
    }
    if let Some((quote, text)) = quoted {
        // Unbalanced: show nothing of what follows the quote.
        out.push(quote);
        if !text.is_empty() {
            out.push_str("***");
        }
    }
    out
}

/// Every scalar value in `value`, as text.
fn collect_values(value: &toml::Value, into: &mut Vec<String>) {
    match value {
        toml::Value::String(text) => into.push(text.clone()),
        toml::Value::Integer(n) => into.push(n.to_string()),
        toml::Value::Float(n) => into.push(n.to_string()),
        toml::Value::Boolean(_) => {}
        toml::Value::Datetime(at) => into.push(at.to_string()),
        toml::Value::Array(items) => items.iter().for_each(|v| collect_values(v, into)),
        toml::Value::Table(table) => table.values().for_each(|v| collect_values(v, into)),
    }
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

    /// The backend a URL's scheme names, after checking that a server's
    /// URL parses (a message never shows a URL that does not).
    pub(crate) fn of(url: &str) -> Result<Scheme, Error> {
        let scheme = url
            .split_once(':')
            .map(|(s, _)| s.to_ascii_lowercase())
            .filter(|s| {
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            });
        let scheme = match scheme.as_deref() {
            Some("postgres" | "postgresql") => Scheme::Postgres,
            Some("sqlite") => return Ok(Scheme::Sqlite),
            Some("mysql" | "mariadb") => Scheme::MySql,
            _ => {
                let shown = redact::url(url);
                return Err(Error::Usage(if shown == redact::NOT_SHOWN {
                    "cannot tell the database from the URL (not shown: it does not parse, and \
                     may hold a password): it must start with postgres://, sqlite: or mysql://"
                        .to_owned()
                } else {
                    format!(
                        "cannot tell the database from the URL `{shown}`: it must start with \
                         postgres://, sqlite: or mysql://"
                    )
                }));
            }
        };
        redact::check_server_url(url).map_err(Error::Usage)?;
        Ok(scheme)
    }
}

/// Where the store is: the URL (given, or from the config file or
/// `DATABASE_URL`) and the names.
#[derive(Clone)]
pub(crate) struct Location {
    pub(crate) url: String,
    pub(crate) scheme: Scheme,
    pub(crate) names: Names,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location")
            .field("url", &self.shown())
            .field("scheme", &self.scheme)
            .field("names", &self.names)
            .finish()
    }
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
        redact::url(&self.url)
    }

    /// The URL's secrets, to scrub from messages that may echo it.
    pub(crate) fn secrets(&self) -> redact::Secrets {
        redact::Secrets::of(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_choose_the_backend() {
        assert_eq!(Scheme::of("postgresql://x").unwrap(), Scheme::Postgres);
        assert_eq!(Scheme::of("sqlite:///tmp/x.db").unwrap(), Scheme::Sqlite);
        assert_eq!(Scheme::of("mariadb://x").unwrap(), Scheme::MySql);
        assert!(matches!(Scheme::of("http://x"), Err(Error::Usage(_))));
        assert!(matches!(Scheme::of("events.db"), Err(Error::Usage(_))));
    }

    #[test]
    fn config_file_errors_redact_its_values() {
        let path =
            std::env::temp_dir().join(format!("es_cli_{}.toml", uuid::Uuid::new_v4().simple()));
        for (text, says) in [
            (
                "url = \"postgres://u:s3cret@h/db\nschema = 1",
                "not valid TOML",
            ),
            ("url = 424242\n", "invalid type"),
            ("url = [\"postgres://u:s3cret@h/db\"]", "invalid type"),
            (
                "schema = \"s3cret\"\nurl = false\nevents_table = 424242",
                "invalid type",
            ),
            (
                "url = \"x\"\npassword = \"s3cret\"",
                "unknown field `password`",
            ),
            ("url = \"x\"\n[schema]\nname = \"s3cret\"", "invalid type"),
        ] {
            std::fs::write(&path, text).unwrap();
            let message = read_file(&path).unwrap_err().to_string();
            assert!(message.contains(says), "{text}: {message}");
            assert!(
                !message.contains("s3cret") && !message.contains("424242"),
                "{message}"
            );
        }
        std::fs::remove_file(&path).unwrap();
        // A URL given as the config file's path is not shown whole.
        let message = read_file(Path::new("postgres://u:s3cret@h/db"))
            .unwrap_err()
            .to_string();
        assert!(!message.contains("s3cret"), "{message}");
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
