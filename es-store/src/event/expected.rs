//! The optimistic-concurrency condition of an append.

/// The optimistic-concurrency condition of an append.
///
/// ```
/// use es_store::ExpectedVersion;
/// assert!(ExpectedVersion::Exact(3).matches(3));
/// assert!(ExpectedVersion::NoStream.matches(0));
/// assert!(!ExpectedVersion::NoStream.matches(1));
/// assert!(ExpectedVersion::Any.matches(12));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check: the events go after whatever the aggregate holds.
    Any,
    /// The aggregate must not exist yet: used to create it.
    NoStream,
    /// The aggregate must be at exactly this version (0 is the same as `NoStream`).
    Exact(i64),
}

impl ExpectedVersion {
    /// Whether an aggregate at `current` version satisfies the condition.
    pub fn matches(self, current: i64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }

    /// `NoStream` for version 0, `Exact(version)` otherwise: what a
    /// repository passes after loading an aggregate at `version`.
    ///
    /// ```
    /// # use es_store::ExpectedVersion;
    /// assert_eq!(ExpectedVersion::at(0), ExpectedVersion::NoStream);
    /// assert_eq!(ExpectedVersion::at(4), ExpectedVersion::Exact(4));
    /// ```
    pub fn at(version: i64) -> Self {
        if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}
