//! What `#[derive(DomainEvent)]` generates calls to, and the decoding of
//! one payload with its upcasts.

use serde::de::DeserializeOwned;

use super::*;
use error::field_path;

/// What generated code calls. Not public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::{DecodeError, DomainEvent, EventTypeInfo};
    pub use serde;
    pub use serde_json;
    pub use serde_json::Value;
    pub use serde_json::value::RawValue;

    use serde::de::DeserializeOwned;

    /// One step of an upcast chain: turns a payload of version `from` into
    /// one of version `from + 1`.
    #[derive(Clone, Copy)]
    pub struct Upcast {
        /// The version the step reads.
        pub from: i32,
        /// The conversion.
        pub with: fn(Value) -> Value,
    }

    /// Decodes the payload of one event type whose current version is
    /// `current`, upcasting older versions through `upcasts`.
    pub fn decode_payload<T: DeserializeOwned>(
        event_type: &'static str,
        current: i32,
        upcasts: &[Upcast],
        version: i32,
        payload: &str,
    ) -> Result<T, DecodeError> {
        super::decode_payload(event_type, current, upcasts, version, payload)
    }

    /// The error for an event type the enum does not have.
    pub fn unknown_event_type(
        bounded_context: &'static str,
        aggregate_type: &'static str,
        event_type: &str,
    ) -> DecodeError {
        DecodeError::UnknownEventType {
            bounded_context,
            aggregate_type,
            event_type: event_type.to_owned(),
        }
    }

    /// What the payload of a unit variant decodes into: any JSON object.
    #[derive(serde::Deserialize)]
    #[serde(expecting = "a JSON object")]
    pub struct UnitPayload {}

    /// `{}`, the payload of a unit variant.
    pub fn empty_object() -> Box<RawValue> {
        crate::event::empty_object()
    }

    /// Checks that a newtype variant's payload is a JSON object.
    pub fn expect_object(
        event_type: &'static str,
        payload: Box<RawValue>,
    ) -> Result<Box<RawValue>, serde_json::Error> {
        if payload.get().starts_with('{') {
            Ok(payload)
        } else {
            Err(<serde_json::Error as serde::ser::Error>::custom(
                format_args!(
                    "the payload of event `{event_type}` must be a JSON object, but its newtype variant's field serialized to `{}`",
                    payload.get(),
                ),
            ))
        }
    }
}

fn decode_payload<T: DeserializeOwned>(
    event_type: &'static str,
    current: i32,
    upcasts: &[__private::Upcast],
    version: i32,
    payload: &str,
) -> Result<T, DecodeError> {
    if version == current {
        // The hot path: straight from the stored text, no intermediate value.
        return serde_json::from_str(payload).map_err(|source| {
            DecodeError::invalid_payload_in::<T>(event_type, version, payload, source)
        });
    }
    if version > current {
        return Err(DecodeError::UnsupportedVersion {
            event_type: event_type.to_owned(),
            version,
            current,
        });
    }
    let missing = || DecodeError::MissingUpcast {
        event_type: event_type.to_owned(),
        version,
        current,
    };
    let mut steps = Vec::new();
    for from in version..current {
        steps.push(
            upcasts
                .iter()
                .find(|u| u.from == from)
                .ok_or_else(missing)?,
        );
    }
    let mut value: serde_json::Value = serde_json::from_str(payload).map_err(|source| {
        DecodeError::invalid_payload_in::<serde_json::Value>(event_type, version, payload, source)
    })?;
    for step in steps {
        value = (step.with)(value);
    }
    T::deserialize(&value).map_err(|source| {
        // Decode the upcast value again, tracking the path, to name the
        // field at fault.
        let field = serde_path_to_error::deserialize::<_, T>(&value)
            .err()
            .and_then(|located| field_path(located.path()));
        DecodeError::InvalidPayload {
            event_type: event_type.to_owned(),
            version,
            upcast_to: Some(current),
            field,
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Address {
        city: String,
        zip: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Customer {
        name: String,
        address: Address,
        tags: Vec<u32>,
    }

    fn path_of(text: &str) -> Option<String> {
        path_in::<Customer>(text)
    }

    fn path_in<T: DeserializeOwned + std::fmt::Debug>(text: &str) -> Option<String> {
        let error = serde_json::from_str::<T>(text).unwrap_err();
        match DecodeError::invalid_payload_in::<T>("E", 1, text, error) {
            DecodeError::InvalidPayload { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_paths_name_the_field_at_fault() {
        let ok_address = r#"{"city":"Oslo","zip":"0150"}"#;
        assert_eq!(
            path_of(&format!(r#"{{"name":1,"address":{ok_address},"tags":[]}}"#)),
            Some("name".to_owned())
        );
        assert_eq!(
            path_of(r#"{"name":"a","address":{"city":"Oslo","zip":7},"tags":[]}"#),
            Some("address.zip".to_owned())
        );
        assert_eq!(
            path_of(&format!(
                r#"{{"name":"a","address":{ok_address},"tags":[1,2,"x"]}}"#
            )),
            Some("tags[2]".to_owned())
        );
        assert_eq!(
            path_of(&format!(
                r#"{{"name":"a","address":{ok_address},"tags":[],"extra":1}}"#
            )),
            Some("extra".to_owned())
        );
        // A missing field is named by serde's message, not by the path.
        assert_eq!(
            path_of(r#"{"name":"a","address":{"city":"Oslo"},"tags":[]}"#),
            Some("address".to_owned())
        );
        assert_eq!(
            path_of(&format!(r#"{{"name":"a","address":{ok_address}}}"#)),
            None
        );
        assert_eq!(path_of("[]"), None);
        assert_eq!(path_of("17"), None);
    }

    #[test]
    fn error_paths_follow_lines_escapes_and_wide_characters() {
        let text = "{\n  \"name\": \"Ærø \\\"x\\\"\",\n  \"address\": {\"city\": \"Å\", \"zip\": false},\n  \"tags\": []\n}";
        assert_eq!(path_of(text), Some("address.zip".to_owned()));
        let text = r#"{"na\"me":1}"#;
        assert_eq!(
            path_in::<std::collections::HashMap<String, String>>(text),
            Some("na\"me".to_owned())
        );
    }

    #[test]
    fn upcast_payloads_name_the_field_at_fault() {
        fn add_tags(mut value: serde_json::Value) -> serde_json::Value {
            value["tags"] = serde_json::json!([1, "two"]);
            value
        }
        let upcasts = [__private::Upcast {
            from: 1,
            with: add_tags,
        }];
        let payload = r#"{"name":"a","address":{"city":"Oslo","zip":"0150"}}"#;
        let error = decode_payload::<Customer>("E", 2, &upcasts, 1, payload).unwrap_err();
        assert!(
            matches!(
                &error,
                DecodeError::InvalidPayload { upcast_to: Some(2), field: Some(f), .. } if f == "tags[1]"
            ),
            "{error:?}"
        );
    }

    #[test]
    fn syntax_errors_name_where_they_are() {
        assert_eq!(
            path_of(r#"{"name":"a","address":{"city":tru"#),
            Some("address.city".to_owned())
        );
    }
}
