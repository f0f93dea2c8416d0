//! An aggregate's identity: borrowed ([`AggregateRef`]), owned
//! ([`AggregateKey`]), or anything that names one ([`AsAggregateRef`]).

/// Borrowed identity of one aggregate instance: bounded context, type and id.
///
/// The store's methods that read, lock or load one aggregate take any
/// [`AsAggregateRef`]: an `AggregateRef`, an [`AggregateKey`] (by value or
/// by reference), or a tuple of the three names.
///
/// ```
/// use es_store::{AggregateKey, AggregateRef, Event};
///
/// let event = Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({}))?;
/// assert_eq!(event.aggregate().to_string(), "Billing/Account/acc-1");
///
/// let id = String::from("acc-1");
/// assert_eq!(AggregateRef::from(("Billing", "Account", &id)), event.aggregate());
/// let key = AggregateKey::new("Billing", "Account", "acc-1");
/// assert_eq!(AggregateRef::from(&key), event.aggregate());
/// # Ok::<(), es_store::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AggregateRef<'a> {
    /// The bounded context.
    pub bounded_context: &'a str,
    /// The aggregate type.
    pub aggregate_type: &'a str,
    /// The aggregate id.
    pub aggregate_id: &'a str,
}

impl<'a> AggregateRef<'a> {
    /// Names an aggregate instance.
    ///
    /// ```
    /// use es_store::AggregateRef;
    /// const ACCOUNT: AggregateRef<'static> = AggregateRef::new("Billing", "Account", "acc-1");
    /// assert_eq!(ACCOUNT.aggregate_id, "acc-1");
    /// ```
    pub const fn new(
        bounded_context: &'a str,
        aggregate_type: &'a str,
        aggregate_id: &'a str,
    ) -> Self {
        Self {
            bounded_context,
            aggregate_type,
            aggregate_id,
        }
    }

    /// An owned copy.
    ///
    /// ```
    /// use es_store::{AggregateKey, AggregateRef};
    /// let key = AggregateRef::new("Billing", "Account", "acc-1").to_owned();
    /// assert_eq!(key, AggregateKey::new("Billing", "Account", "acc-1"));
    /// ```
    pub fn to_owned(&self) -> AggregateKey {
        AggregateKey {
            bounded_context: self.bounded_context.to_owned(),
            aggregate_type: self.aggregate_type.to_owned(),
            aggregate_id: self.aggregate_id.to_owned(),
        }
    }
}

/// `(bounded_context, aggregate_type, aggregate_id)`, each borrowed as
/// `str`: `("Billing", "Account", "acc-1")`, or `&String`s.
impl<'a, B, T, I> From<(&'a B, &'a T, &'a I)> for AggregateRef<'a>
where
    B: AsRef<str> + ?Sized,
    T: AsRef<str> + ?Sized,
    I: AsRef<str> + ?Sized,
{
    fn from((bounded_context, aggregate_type, aggregate_id): (&'a B, &'a T, &'a I)) -> Self {
        Self::new(
            bounded_context.as_ref(),
            aggregate_type.as_ref(),
            aggregate_id.as_ref(),
        )
    }
}

/// Borrows the key, as [`AggregateKey::as_ref`].
impl<'a> From<&'a AggregateKey> for AggregateRef<'a> {
    fn from(key: &'a AggregateKey) -> Self {
        key.as_ref()
    }
}

impl std::fmt::Display for AggregateRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.bounded_context, self.aggregate_type, self.aggregate_id
        )
    }
}

/// Owned identity of one aggregate instance, as carried by errors.
///
/// ```
/// use es_store::AggregateKey;
/// let key = AggregateKey::new("Billing", "Account", "acc-1");
/// assert_eq!(key.to_string(), "Billing/Account/acc-1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateKey {
    /// The bounded context.
    pub bounded_context: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
}

impl AggregateKey {
    /// Builds a key.
    pub fn new(
        bounded_context: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> Self {
        Self {
            bounded_context: bounded_context.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }
    }

    /// Borrows the key.
    pub fn as_ref(&self) -> AggregateRef<'_> {
        AggregateRef {
            bounded_context: &self.bounded_context,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
        }
    }
}

impl std::fmt::Display for AggregateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_ref().fmt(f)
    }
}

/// What names one aggregate instance, as the store's methods take it:
/// `(bounded_context, aggregate_type, aggregate_id)` as a tuple of anything
/// that borrows as `str` (`("Billing", "Account", "acc-1")`, `&String`s,
/// `String`s), an [`AggregateRef`], an [`AggregateKey`], or a reference to
/// any of them.
///
/// ```
/// use es_store::{AggregateKey, AggregateRef, AsAggregateRef};
///
/// fn describe(aggregate: impl AsAggregateRef) -> String {
///     aggregate.as_aggregate_ref().to_string()
/// }
/// let id = String::from("acc-1");
/// assert_eq!(describe(("Billing", "Account", &id)), "Billing/Account/acc-1");
/// let key = AggregateKey::new("Billing", "Account", "acc-1");
/// assert_eq!(describe(&key), "Billing/Account/acc-1");
/// assert_eq!(describe(key.as_ref()), "Billing/Account/acc-1");
/// ```
///
/// It borrows the names from `self` instead of converting `self` into an
/// `AggregateRef` (as `Into<AggregateRef<'a>>` would), so that no bound
/// ties the argument's lifetimes to another: futures of generic code that
/// call the store stay provably `Send`.
pub trait AsAggregateRef {
    /// The aggregate's names, borrowed from `self`.
    fn as_aggregate_ref(&self) -> AggregateRef<'_>;
}

impl AsAggregateRef for AggregateRef<'_> {
    fn as_aggregate_ref(&self) -> AggregateRef<'_> {
        *self
    }
}

impl AsAggregateRef for AggregateKey {
    fn as_aggregate_ref(&self) -> AggregateRef<'_> {
        self.as_ref()
    }
}

impl<A: AsAggregateRef + ?Sized> AsAggregateRef for &A {
    fn as_aggregate_ref(&self) -> AggregateRef<'_> {
        (**self).as_aggregate_ref()
    }
}

/// `(bounded_context, aggregate_type, aggregate_id)`.
impl<B, T, I> AsAggregateRef for (B, T, I)
where
    B: AsRef<str>,
    T: AsRef<str>,
    I: AsRef<str>,
{
    fn as_aggregate_ref(&self) -> AggregateRef<'_> {
        AggregateRef::new(self.0.as_ref(), self.1.as_ref(), self.2.as_ref())
    }
}
