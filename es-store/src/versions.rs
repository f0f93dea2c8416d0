//! The versions of a projection, as the store records them: which one
//! readers are served from, which are catching up beside it, which were
//! replaced.

/// Where a projection version stands.
///
/// ```
/// use es_store::VersionState;
/// assert_eq!(VersionState::CatchingUp.as_str(), "catching_up");
/// assert_eq!("active".parse::<VersionState>(), Ok(VersionState::Active));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VersionState {
    /// The version readers are served from: at most one per projection.
    Active,
    /// A newer version building its read model beside the active one.
    CatchingUp,
    /// A version a newer one replaced; its processors refuse to handle
    /// events, and its read model waits to be retired.
    Superseded,
}

impl VersionState {
    /// The state as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Active => "active",
            VersionState::CatchingUp => "catching_up",
            VersionState::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for VersionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored state that is none of [`VersionState`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown projection version state `{0}`, expected `active`, `catching_up` or `superseded`")]
pub struct UnknownVersionState(pub String);

impl std::str::FromStr for VersionState {
    type Err = UnknownVersionState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "active" => Ok(VersionState::Active),
            "catching_up" => Ok(VersionState::CatchingUp),
            "superseded" => Ok(VersionState::Superseded),
            other => Err(UnknownVersionState(other.to_owned())),
        }
    }
}

/// One version of a projection, as recorded by
/// [`ProjectionStore::insert_projection_version`](crate::ProjectionStore::insert_projection_version).
///
/// ```
/// use es_store::{ProjectionVersion, VersionState};
/// let v2 = ProjectionVersion::new("balances", 2, VersionState::CatchingUp, 1_000, 1);
/// assert_eq!(v2.checkpoint_names(), ["balances@v2"]);
/// assert_eq!(
///     ProjectionVersion::new("balances", 1, VersionState::Active, 0, 2).checkpoint_names(),
///     ["balances#0/2", "balances#1/2"],
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionVersion {
    /// The projection's name.
    pub name: String,
    /// The version (1 for a projection that never said otherwise).
    pub version: u32,
    /// Where it stands.
    pub state: VersionState,
    /// The last global position this version handles as a replay: events
    /// up to it were appended before the version started (or before its
    /// last rebuild).
    pub replay_until: i64,
    /// The partition count of its checkpoints.
    pub partitions: u32,
    /// When the record last changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Whether the projection declares side effects (effects outside its
    /// read model's transaction, such as publishing or mailing, that a
    /// replay would do again), as its processor last recorded it. Tools
    /// that rewind projections (the `es` command line) read it here and
    /// refuse to rewind such a projection unless forced.
    pub side_effects: bool,
    /// When a worker running this version last recorded that it runs
    /// ([`ProjectionStore::record_projection_worker`](crate::ProjectionStore::record_projection_worker),
    /// every [`WORKER_HEARTBEAT`](Self::WORKER_HEARTBEAT)); `None` when none
    /// has. The worker's clock.
    pub worker_seen_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ProjectionVersion {
    /// How often a running worker records that it runs
    /// ([`worker_seen_at`](Self::worker_seen_at)). A record not refreshed
    /// for a few of these has no worker running.
    pub const WORKER_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

    /// A version record, stamped now, without side effects and with no
    /// worker seen.
    pub fn new(
        name: impl Into<String>,
        version: u32,
        state: VersionState,
        replay_until: i64,
        partitions: u32,
    ) -> Self {
        Self {
            name: name.into(),
            version,
            state,
            replay_until,
            partitions: partitions.max(1),
            updated_at: crate::event::now(),
            side_effects: false,
            worker_seen_at: None,
        }
    }

    /// This record, saying whether the projection declares side effects.
    ///
    /// ```
    /// use es_store::{ProjectionVersion, VersionState};
    /// let v1 = ProjectionVersion::new("publisher", 1, VersionState::Active, 0, 1).with_side_effects(true);
    /// assert!(v1.side_effects);
    /// ```
    pub fn with_side_effects(mut self, side_effects: bool) -> Self {
        self.side_effects = side_effects;
        self
    }

    /// The name of this version's checkpoint (or of its partitions'
    /// checkpoints' common stem): the projection's name for version 1, so
    /// that checkpoints from before versions stay valid, and
    /// `name@v<version>` for the others.
    ///
    /// ```
    /// assert_eq!(es_store::ProjectionVersion::checkpoint_stem("balances", 1), "balances");
    /// assert_eq!(es_store::ProjectionVersion::checkpoint_stem("balances", 3), "balances@v3");
    /// ```
    pub fn checkpoint_stem(name: &str, version: u32) -> String {
        if version == 1 {
            name.to_owned()
        } else {
            format!("{name}@v{version}")
        }
    }

    /// The names of this version's checkpoints, one per partition
    /// (`stem#index/count`), or the stem alone without partitions.
    pub fn checkpoint_names(&self) -> Vec<String> {
        checkpoint_names(&self.name, self.version, self.partitions)
    }
}

/// The checkpoint names of a version with `partitions` partitions.
fn checkpoint_names(name: &str, version: u32, partitions: u32) -> Vec<String> {
    let stem = ProjectionVersion::checkpoint_stem(name, version);
    if partitions <= 1 {
        return vec![stem];
    }
    (0..partitions)
        .map(|index| format!("{stem}#{index}/{partitions}"))
        .collect()
}
