//! Keeping secrets out of what the CLI prints: a database URL is shown
//! rebuilt from its parsed parts, with its password and the values of its
//! query parameters (but a few harmless ones) replaced by `***`; a URL that
//! does not parse is not shown at all.
//!
//! Every message that may carry text from a URL (sqlx's errors, clap's) is
//! scrubbed as well: the URL's secrets, and anything in it that looks like a
//! URL, are replaced.

use std::borrow::Cow;

/// What is printed instead of a URL that cannot be shown safely.
pub(crate) const NOT_SHOWN: &str = "(URL not shown)";

/// The query parameters whose values are shown: settings, never secrets.
/// (`password`, `sslpassword`, `options` and anything unknown are hidden.)
const SHOWN_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "application_name",
    "charset",
    "collation",
    "socket",
    "timezone",
    "time-zone",
    "mode",
    "cache",
    "immutable",
    "vfs",
];

/// The query parameters sqlx reads, per backend: the others are dropped
/// before sqlx sees the URL, as sqlx would log them, values and all
/// (PostgreSQL) or ignore them (MySQL).
pub(crate) const POSTGRES_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// See [`POSTGRES_PARAMETERS`].
pub(crate) const MYSQL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslca",
    "ssl-ca",
    "charset",
    "collation",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "socket",
    "timezone",
    "time-zone",
];

/// Why a server URL (PostgreSQL, MySQL) is refused before anything
/// connects; the message never holds the URL.
pub(crate) fn check_server_url(raw: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(raw).map_err(|e| {
        format!(
            "the database URL does not parse ({e}); it is not shown, as it may hold a password. \
             Percent-encode a password's special characters (`/` as %2F, `?` %3F, `#` %23, \
             `@` %40)"
        )
    })?;
    if parsed.cannot_be_a_base() {
        return Err(format!(
            "the database URL must start with {}:// (it is not shown, as it may hold a password)",
            parsed.scheme()
        ));
    }
    if has_stray_at(&parsed) {
        return Err(
            "the database URL has an `@` after its host: is a password with a raw `/`, `?` or \
             `#` in it? It is not shown, as it may hold the password. Percent-encode a \
             password's special characters (`/` as %2F, `?` %3F, `#` %23, `@` %40)"
                .into(),
        );
    }
    Ok(parsed)
}

/// An `@` in the path, query or fragment of a server's URL: what a
/// password with a raw `/`, `?` or `#` leaves (`user:se/cret@host` parses
/// as host `user`, port or path `se/cret@host`), or a scheme without its
/// slashes (`postgres:user:secret@host`, all path).
fn has_stray_at(parsed: &url::Url) -> bool {
    [Some(parsed.path()), parsed.query(), parsed.fragment()]
        .into_iter()
        .flatten()
        .any(|part| part.contains('@'))
}

/// Whether `raw` is a SQLite URL (`sqlite:` ...), which sqlx reads as a
/// file path and parameters rather than as a URL.
fn is_sqlite(raw: &str) -> bool {
    raw.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("sqlite:"))
}

/// `raw` as messages show it: its parts, with the password and the values
/// of query parameters that may be secrets as `***`, without a fragment;
/// [`NOT_SHOWN`] for a URL that does not parse (or parses oddly).
///
/// ```text
/// postgres://app:secret@db:5432/x?sslmode=require&password=p  ->  postgres://app:***@db:5432/x?sslmode=require&password=***
/// postgres//app:secret@db/x                                    ->  (URL not shown)
/// ```
pub(crate) fn url(raw: &str) -> String {
    if is_sqlite(raw) {
        let (path, query) = match raw.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (raw, None),
        };
        let mut shown = path.to_owned();
        if let Some(query) = query {
            shown.push('?');
            shown.push_str(&query_shown(query));
        }
        return shown;
    }
    let Ok(parsed) = url::Url::parse(raw) else {
        return NOT_SHOWN.to_owned();
    };
    if parsed.cannot_be_a_base() || has_stray_at(&parsed) {
        return NOT_SHOWN.to_owned();
    }
    let mut shown = format!("{}:", parsed.scheme());
    let serialized = parsed.as_str();
    if parsed.has_host()
        || serialized
            .get(parsed.scheme().len() + 1..)
            .is_some_and(|rest| rest.starts_with("//"))
    {
        shown.push_str("//");
        let user = parsed.username();
        match (user.is_empty(), parsed.password().is_some()) {
            (_, true) => shown.push_str(&format!("{user}:***@")),
            (false, false) => shown.push_str(&format!("{user}@")),
            (true, false) => {}
        }
        if let Some(host) = parsed.host_str() {
            shown.push_str(host);
        }
        if let Some(port) = parsed.port() {
            shown.push_str(&format!(":{port}"));
        }
    }
    shown.push_str(parsed.path());
    if let Some(query) = parsed.query() {
        shown.push('?');
        shown.push_str(&query_shown(query));
    }
    if parsed.fragment().is_some() {
        shown.push_str("#***");
    }
    shown
}

/// A query string with the values of [`SHOWN_PARAMETERS`] kept and the
/// others as `***` (a parameter without a value, `***` whole).
fn query_shown(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if is_shown(key) => format!("{key}={value}"),
            Some((key, _)) if is_plain_key(key) => format!("{key}=***"),
            _ => "***".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_shown(key: &str) -> bool {
    SHOWN_PARAMETERS.contains(&decode(key).as_ref())
}

/// A key that is a word (so it is not a secret in the wrong place).
fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 32
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '[' | ']' | '.'))
}

fn decode(text: &str) -> Cow<'_, str> {
    let text: Cow<'_, str> = if text.contains('+') {
        Cow::Owned(text.replace('+', " "))
    } else {
        Cow::Borrowed(text)
    };
    match percent_decode(&text) {
        Some(decoded) => Cow::Owned(decoded),
        None => text,
    }
}

/// `%XX` sequences decoded; `None` when there are none or the result is
/// not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(high * 16 + low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// `raw` with the query parameters sqlx does not read (`known`) left out,
/// and without its fragment, and the keys left out: what the CLI hands to
/// sqlx, so that sqlx never logs an unknown parameter's value.
pub(crate) fn for_sqlx(raw: &str, known: &[&str]) -> (String, Vec<String>) {
    let without_fragment = raw.split_once('#').map_or(raw, |(before, _)| before);
    let Some((base, query)) = without_fragment.split_once('?') else {
        return (without_fragment.to_owned(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(key, _)| key);
        let decoded = decode(key);
        if known.contains(&decoded.as_ref()) || decoded.starts_with("options[") {
            kept.push(pair);
        } else if is_plain_key(key) {
            dropped.push(decoded.into_owned());
        } else {
            dropped.push("***".to_owned());
        }
    }
    let mut url = base.to_owned();
    if !kept.is_empty() {
        url.push('?');
        url.push_str(&kept.join("&"));
    }
    (url, dropped)
}

/// The secrets of one URL, to scrub from messages that may echo them
/// (sqlx's errors): its password and the values of its query parameters
/// that are not [`SHOWN_PARAMETERS`], as written and decoded, and its
/// fragment.
#[derive(Default)]
pub(crate) struct Secrets(Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} hidden)", self.0.len())
    }
}

impl Secrets {
    pub(crate) fn of(raw: &str) -> Secrets {
        let mut secrets = Vec::new();
        let mut add = |text: &str| {
            for text in [Cow::Borrowed(text), decode(text)] {
                if !text.is_empty() && !secrets.iter().any(|s: &String| s == text.as_ref()) {
                    secrets.push(text.into_owned());
                }
            }
        };
        if !is_sqlite(raw) {
            if let Ok(parsed) = url::Url::parse(raw) {
                if let Some(password) = parsed.password() {
                    add(password);
                }
                if let Some(fragment) = parsed.fragment() {
                    add(fragment);
                }
            }
            // The userinfo as written, for a URL that did not parse or put
            // it elsewhere.
            if let Some((_, rest)) = raw.split_once("//")
                && let Some((userinfo, _)) = rest.rsplit_once('@')
                && let Some((_, password)) = userinfo.split_once(':')
            {
                add(password);
            }
        }
        if let Some((_, query)) = raw.split_once('?') {
            let query = query.split_once('#').map_or(query, |(q, _)| q);
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some((key, value)) if !is_shown(key) => add(value),
                    None if !is_shown(pair) => add(pair),
                    _ => {}
                }
            }
        }
        // Longest first, so that a secret inside another goes with it.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Secrets(secrets)
    }

    /// `text` with every secret replaced by `***`, and anything that looks
    /// like a URL shown as [`url`] shows it.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.0 {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        scrub_urls(&text)
    }
}

/// `text` with every word that looks like a database URL (`scheme://...`,
/// or `scheme:...@...`, or `scheme//...@...`) replaced by [`url`]'s
/// showing of it: the last guard of every message the CLI prints.
pub(crate) fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if looks_like_url(word) {
            out.push_str(&url(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '\'' | '"' | '`' | '<' | '>' | '(' | ')' | ',') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A word that may be a URL with a password in it.
fn looks_like_url(word: &str) -> bool {
    let scheme_len = word
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .unwrap_or(word.len());
    if scheme_len == 0 || !word.as_bytes()[0].is_ascii_alphabetic() {
        return false;
    }
    let rest = &word[scheme_len..];
    if is_sqlite(word) {
        // A file path: nothing secret, unless parameters say otherwise.
        return word.contains('?');
    }
    rest.starts_with("://")
        || (rest.starts_with("//") && word.contains('@'))
        || (rest.starts_with(':') && word.contains('@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secret_parameters_are_hidden() {
        assert_eq!(
            url("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            url("mysql://root:p%40ss@h/db?ssl-mode=DISABLED&token=abc"),
            "mysql://root:***@h/db?ssl-mode=DISABLED&token=***"
        );
        assert_eq!(
            url("postgres://app@h/db?password=hunter2&sslmode=require"),
            "postgres://app@h/db?password=***&sslmode=require"
        );
        assert_eq!(url("postgres://app:a@b@h/db"), "postgres://app:***@h/db");
        assert_eq!(url("postgres://h/db#frag"), "postgres://h/db#***");
        assert_eq!(url("sqlite:events.db"), "sqlite:events.db");
        assert_eq!(
            url("sqlite:e.db?mode=ro&key=k"),
            "sqlite:e.db?mode=ro&key=***"
        );
        assert_eq!(url("postgres://[::1]:5/db"), "postgres://[::1]:5/db");
        assert_eq!(
            url("postgres:///db?host=/run/pg"),
            "postgres:///db?host=/run/pg"
        );
        assert_eq!(url(" postgres://u:p@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn urls_that_do_not_parse_are_not_shown() {
        for bad in [
            "postgres//app:secret@h/db",
            "postgres://app:se/cret@h/db",
            "postgres://app:se?cret@h/db",
            "postgres://app:se#cret@h/db",
            "postgres://app:12/34@h/db",
            "postgres://app:12?34@h/db",
            "postgres://app:12#34@h/db",
            "postgres:app:secret@h/db",
            "postgres:/app:secret@h/db",
            "not a url",
        ] {
            assert_eq!(url(bad), NOT_SHOWN, "{bad}");
            assert!(check_server_url(bad).is_err(), "{bad}");
            let message = check_server_url(bad).err().unwrap_or_default();
            assert!(
                !message.contains("cret") && !message.contains("34"),
                "{message}"
            );
        }
        assert!(check_server_url("postgres://app:s%2Fcret@h/db").is_ok());
    }

    #[test]
    fn messages_are_scrubbed_of_secrets_and_urls() {
        let secrets = Secrets::of("postgres://app:p%40ss@h/db?password=hunter2&sslmode=require");
        assert_eq!(
            secrets.scrub("auth with p@ss and p%40ss and hunter2 failed (sslmode=require)"),
            "auth with *** and *** and *** failed (sslmode=require)"
        );
        assert_eq!(
            scrub_urls("unrecognized subcommand 'postgres://u:pw@h/db'"),
            "unrecognized subcommand 'postgres://u:***@h/db'"
        );
        assert_eq!(
            scrub_urls("tip: 'postgres//u:pw@h/db' ok"),
            "tip: '(URL not shown)' ok"
        );
        assert_eq!(
            scrub_urls("user 'root'@'localhost' at 10:30"),
            "user 'root'@'localhost' at 10:30"
        );
    }

    #[test]
    fn unknown_parameters_do_not_reach_sqlx() {
        let (url, dropped) = for_sqlx(
            "postgres://h/db?sslmode=require&pasword=x&options[a]=b#f",
            POSTGRES_PARAMETERS,
        );
        assert_eq!(url, "postgres://h/db?sslmode=require&options[a]=b");
        assert_eq!(dropped, ["pasword"]);
    }
}
