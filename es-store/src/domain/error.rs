//! Why a stored event could not be decoded into a domain event.

use serde::de::DeserializeOwned;

/// Why a stored event could not be decoded into a [`DomainEvent`](crate::DomainEvent).
///
/// ```
/// use es_store::DecodeError;
///
/// fn needs_newer_code(error: &DecodeError) -> bool {
///     matches!(error, DecodeError::UnsupportedVersion { .. })
/// }
/// let error = DecodeError::UnsupportedVersion { event_type: "MoneyDeposited".into(), version: 3, current: 2 };
/// assert!(needs_newer_code(&error));
/// assert_eq!(
///     error.to_string(),
///     "event `MoneyDeposited` has schema version 3, newer than version 2, the newest this code knows",
/// );
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The event type is not one of the enum's.
    #[error("unknown event type `{event_type}` for {bounded_context}/{aggregate_type}")]
    UnknownEventType {
        /// The bounded context of the enum.
        bounded_context: &'static str,
        /// The aggregate type of the enum.
        aggregate_type: &'static str,
        /// The stored event type.
        event_type: String,
    },

    /// The event was written at a schema version newer than the code knows:
    /// it was written by a newer release.
    #[error(
        "event `{event_type}` has schema version {version}, newer than version {current}, the newest this code knows"
    )]
    UnsupportedVersion {
        /// The event type.
        event_type: String,
        /// The stored schema version.
        version: i32,
        /// The current schema version of the type.
        current: i32,
    },

    /// The event was written at an older schema version than the current one
    /// and no upcast leads from that version to the current one.
    #[error(
        "event `{event_type}` has schema version {version}, older than the current version {current}, and no upcast from version {version} is declared"
    )]
    MissingUpcast {
        /// The event type.
        event_type: String,
        /// The stored schema version.
        version: i32,
        /// The current schema version of the type.
        current: i32,
    },

    /// The payload does not fit the event type: a missing field, a value of
    /// the wrong type, JSON that is not an object...
    #[error(
        "payload of event `{event_type}` version {version}{} does not fit{}: {source}",
        upcast_note(*.upcast_to),
        field_note(.field.as_deref()),
    )]
    InvalidPayload {
        /// The event type.
        event_type: String,
        /// The stored schema version.
        version: i32,
        /// The current version, when the payload was stored at an older
        /// version and failed after being upcast to the current one.
        upcast_to: Option<i32>,
        /// Where in the payload the error is, as a path like `amount` or
        /// `lines[2].sku`, when it is inside a field.
        field: Option<String>,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// The event belongs to another bounded context or aggregate type.
    #[error(
        "an event of {bounded_context}/{aggregate_type} cannot be decoded as an event of {expected_bounded_context}/{expected_aggregate_type}"
    )]
    WrongAggregate {
        /// The bounded context of the enum.
        expected_bounded_context: &'static str,
        /// The aggregate type of the enum.
        expected_aggregate_type: &'static str,
        /// The event's bounded context.
        bounded_context: String,
        /// The event's aggregate type.
        aggregate_type: String,
    },
}

fn upcast_note(upcast_to: Option<i32>) -> String {
    upcast_to.map_or_else(String::new, |v| format!(" (upcast to version {v})"))
}

fn field_note(field: Option<&str>) -> String {
    field.map_or_else(String::new, |f| format!(" at `{f}`"))
}

impl DecodeError {
    /// An [`InvalidPayload`](DecodeError::InvalidPayload) error for a payload
    /// stored at the current version, without the field at fault (see
    /// [`invalid_payload_in`](DecodeError::invalid_payload_in), which names it).
    ///
    /// ```
    /// use es_store::DecodeError;
    ///
    /// #[derive(Debug, serde::Deserialize)]
    /// struct Deposited { #[allow(dead_code)] amount: i64 }
    ///
    /// let payload = r#"{"amount":"ten"}"#;
    /// let source = serde_json::from_str::<Deposited>(payload).unwrap_err();
    /// let error = DecodeError::invalid_payload("MoneyDeposited", 2, source);
    /// assert!(matches!(&error, DecodeError::InvalidPayload { field: None, .. }));
    ///
    /// // With the payload text, the error names the field.
    /// let source = serde_json::from_str::<Deposited>(payload).unwrap_err();
    /// let error = DecodeError::invalid_payload_in::<Deposited>("MoneyDeposited", 2, payload, source);
    /// assert_eq!(
    ///     error.to_string(),
    ///     r#"payload of event `MoneyDeposited` version 2 does not fit at `amount`: invalid type: string "ten", expected i64 at line 1 column 15"#,
    /// );
    /// ```
    pub fn invalid_payload(
        event_type: impl Into<String>,
        version: i32,
        source: serde_json::Error,
    ) -> Self {
        DecodeError::InvalidPayload {
            event_type: event_type.into(),
            version,
            upcast_to: None,
            field: None,
            source,
        }
    }

    /// Like [`invalid_payload`](DecodeError::invalid_payload), given the
    /// payload text the error came from and the type it was decoded into,
    /// so that the error names the field at fault.
    ///
    /// The payload is decoded into `T` again, this time tracking the path
    /// (with `serde_path_to_error`): call it only once decoding has failed,
    /// so that decoding that succeeds pays nothing for it. The error kept
    /// is `source`.
    ///
    /// ```
    /// # use es_store::DecodeError;
    /// # use std::collections::HashMap;
    /// type Order = HashMap<String, Vec<HashMap<String, String>>>;
    ///
    /// let payload = r#"{"lines":[{"sku":"A"},{"sku":7}]}"#;
    /// let source = serde_json::from_str::<Order>(payload).unwrap_err();
    /// let error = DecodeError::invalid_payload_in::<Order>("OrderPlaced", 1, payload, source);
    /// assert!(matches!(error, DecodeError::InvalidPayload { field: Some(f), .. } if f == "lines[1].sku"));
    /// ```
    pub fn invalid_payload_in<T: DeserializeOwned>(
        event_type: impl Into<String>,
        version: i32,
        payload: &str,
        source: serde_json::Error,
    ) -> Self {
        let mut deserializer = serde_json::Deserializer::from_str(payload);
        let field = serde_path_to_error::deserialize::<_, T>(&mut deserializer)
            .err()
            .and_then(|located| field_path(located.path()));
        DecodeError::InvalidPayload {
            event_type: event_type.into(),
            version,
            upcast_to: None,
            field,
            source,
        }
    }
}

/// The path of the field a decoding error was raised in: `amount`,
/// `address.city`, `lines[2]`. `None` at the top level (the payload is not
/// an object, or a top-level field is missing: serde's message names the
/// missing field).
pub(super) fn field_path(path: &serde_path_to_error::Path) -> Option<String> {
    // An empty path displays as `.`.
    (path.iter().next().is_some()).then(|| path.to_string())
}
