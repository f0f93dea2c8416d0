//! `#[derive(DomainEvent)]` for the es event-sourcing framework.
//!
//! Use it through the `es` crate, which re-exports the derive next to the
//! trait it implements: `use es::DomainEvent;` brings both.
//!
//! # Declaring events
//!
//! One enum per aggregate type, one variant per event type:
//!
//! ```
//! use es::DomainEvent;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub enum Currency { Eur, Nok }
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct Withdrawal { pub amount: i64, pub reference: String }
//!
//! #[derive(Debug, Clone, PartialEq, DomainEvent)]
//! #[event(bounded_context = "Billing", aggregate_type = "Account")]
//! pub enum AccountEvent {
//!     Opened { owner: String, currency: Currency },
//!     #[event(name = "MoneyDeposited", version = 2)]
//!     Deposited { amount: i64 },
//!     Withdrawn(Withdrawal), // the payload is the inner type's JSON object
//!     Closed,                // the payload is {}
//! }
//!
//! assert_eq!(AccountEvent::BOUNDED_CONTEXT, "Billing");
//! assert_eq!(AccountEvent::EVENT_TYPES[1], es::EventTypeInfo::new("MoneyDeposited", 2));
//!
//! let event = AccountEvent::Deposited { amount: 10 };
//! assert_eq!((event.event_type(), event.event_version()), ("MoneyDeposited", 2));
//! let payload = event.encode()?;
//! assert_eq!(payload.get(), r#"{"amount":10}"#);
//! assert_eq!(AccountEvent::decode("MoneyDeposited", 2, &payload)?, event);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The derive implements `es::DomainEvent`: the bounded context and
//! aggregate type as constants, every event type with its current version
//! (`EVENT_TYPES`), `event_type()`, `event_version()`, `encode()` and
//! `decode()`. The trait's provided methods make store events of a batch
//! (`to_events`, with correlation and causation ids from `es::store::Metadata`)
//! and decode what the store returns (`from_persisted`).
//!
//! # Attributes
//!
//! | where | attribute | meaning |
//! | --- | --- | --- |
//! | enum | `bounded_context = "..."` | required, not empty |
//! | enum | `aggregate_type = "..."` | required, not empty |
//! | enum | `crate = "path"` | where the framework is, `::es` by default (see below) |
//! | variant | `name = "..."` | the event type name stored, the variant's name by default; unique in the enum |
//! | variant | `version = N` | the current payload schema version, 1 by default; from 1 to `i32::MAX` |
//! | variant | `upcast(from = N, with = function)` | turns a stored payload of version `N` into version `N + 1`; repeatable |
//! | field | `#[serde(...)]` | serde's field attributes, which apply inside the payload |
//!
//! Keys may be spread over several `#[event(...)]` attributes; each may be
//! given once.
//!
//! `crate = "path"` names the crate the generated code reaches the framework
//! through, for code that renames or re-exports `es`, or that depends on
//! `es-store` directly (`crate = "::es_store"`, with `es_macros::DomainEvent`
//! imported).
//!
//! # Payloads
//!
//! The event type has a column of its own, so a payload is the variant's data
//! alone, not serde's externally tagged `{"Deposited": {...}}`:
//!
//! - a struct variant is its fields as a JSON object: `{"amount":10}`
//!   (`Frozen {}` is `{}`);
//! - a newtype variant is its field's own JSON object; encoding fails if that
//!   type serializes to something else, such as a string;
//! - a unit variant is `{}`, and decodes from any object;
//! - tuple variants of several fields are refused: a payload has named fields.
//!
//! Decoding ignores fields the type does not have, so that events written by
//! a newer release with an added field still load.
//!
//! Decoding at the current version deserializes straight from the stored
//! JSON text. Failures are typed `es::DecodeError`s:
//!
//! | error | when |
//! | --- | --- |
//! | `UnknownEventType` | the enum has no event of that name |
//! | `UnsupportedVersion` | the stored version is newer than the variant's: written by a newer release |
//! | `MissingUpcast` | the stored version is older and no upcast starts from it |
//! | `InvalidPayload` | the payload does not fit; names the event type, version and field (`amount`, `lines[2].sku`) |
//! | `WrongAggregate` | `from_persisted` got an event of another bounded context or aggregate type |
//!
//! ```
//! # use es::DomainEvent;
//! # #[derive(Debug, DomainEvent)]
//! # #[event(bounded_context = "Billing", aggregate_type = "Account")]
//! # enum AccountEvent { #[event(name = "MoneyDeposited", version = 2)] Deposited { amount: i64 } }
//! use es::DecodeError;
//! use serde_json::value::RawValue;
//!
//! let payload = RawValue::from_string(r#"{"amount":"ten"}"#.to_owned())?;
//! let error = AccountEvent::decode("MoneyDeposited", 2, &payload).unwrap_err();
//! assert!(matches!(&error, DecodeError::InvalidPayload { field: Some(field), .. } if field == "amount"));
//! assert_eq!(
//!     error.to_string(),
//!     r#"payload of event `MoneyDeposited` version 2 does not fit at `amount`: invalid type: string "ten", expected i64 at line 1 column 15"#,
//! );
//!
//! let error = AccountEvent::decode("MoneyDeposited", 3, &payload).unwrap_err();
//! assert!(matches!(error, DecodeError::UnsupportedVersion { version: 3, current: 2, .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Upcasting
//!
//! Events stay in the store as they were written. When a payload's shape
//! changes, raise the variant's `version` and declare how a payload of the
//! previous version becomes one of the next: each `upcast(from = N, with =
//! f)` takes a version `N` payload to version `N + 1`, and the steps must
//! chain up to the current version (a gap is a compile error). A stored
//! payload runs through every step from its version on, then deserializes
//! as usual; a version older than the first step is
//! `DecodeError::MissingUpcast`.
//!
//! An upcast is a `fn(serde_json::Value) -> serde_json::Value`: a path to a
//! function, the same path as a string (as serde spells paths), or a closure
//! that captures nothing. It cannot fail: a payload it cannot convert is left
//! as it is and then fails to deserialize, as `DecodeError::InvalidPayload`
//! with `upcast_to` set to the version it was upcast to.
//!
//! ```
//! use es::DomainEvent;
//! use serde_json::{Value, json};
//!
//! // v1 {"cents": 1500}, v2 {"amount_cents": 1500, "currency": "EUR"},
//! // v3 {"amount": 1500, "currency": "EUR", "source": "unknown"}
//! fn v1_to_v2(payload: Value) -> Value {
//!     json!({ "amount_cents": payload["cents"], "currency": "EUR" })
//! }
//!
//! fn v2_to_v3(payload: Value) -> Value {
//!     json!({ "amount": payload["amount_cents"], "currency": payload["currency"], "source": "unknown" })
//! }
//!
//! #[derive(Debug, PartialEq, DomainEvent)]
//! #[event(bounded_context = "Billing", aggregate_type = "Account")]
//! enum AccountEvent {
//!     #[event(
//!         name = "MoneyDeposited",
//!         version = 3,
//!         upcast(from = 1, with = v1_to_v2),
//!         upcast(from = 2, with = v2_to_v3),
//!     )]
//!     Deposited { amount: i64, currency: String, source: String },
//! }
//!
//! let stored_v1 = serde_json::value::to_raw_value(&json!({ "cents": 1500 }))?;
//! assert_eq!(
//!     AccountEvent::decode("MoneyDeposited", 1, &stored_v1)?,
//!     AccountEvent::Deposited { amount: 1500, currency: "EUR".into(), source: "unknown".into() },
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Only payloads older than the current version go through a
//! `serde_json::Value`; the current version is read from the text directly.
//!
//! # serde attributes
//!
//! Every serde *field* attribute applies inside payloads, in both directions:
//! `rename`, `alias`, `default`, `skip_serializing_if`, `with`,
//! `serialize_with`, `deserialize_with`, `skip`, `flatten` and the rest.
//! The derive hands the fields, with their `#[serde(...)]` attributes, to
//! serde's own derive, so they mean exactly what serde documents, and
//! serde reports their misuse. On a newtype variant's field, the
//! attributes that make sense for a single value (`with` and its halves)
//! apply to the whole payload.
//!
//! ```
//! use es::DomainEvent;
//!
//! fn default_fee() -> i64 { 25 }
//!
//! #[derive(Debug, PartialEq, DomainEvent)]
//! #[event(bounded_context = "Billing", aggregate_type = "Account")]
//! enum AccountEvent {
//!     Charged {
//!         #[serde(rename = "chargedAmount", alias = "charge")]
//!         amount: i64,
//!         #[serde(default = "default_fee")]
//!         fee: i64,
//!         #[serde(default, skip_serializing_if = "Option::is_none")]
//!         note: Option<String>,
//!     },
//! }
//!
//! let event = AccountEvent::Charged { amount: 100, fee: 3, note: None };
//! assert_eq!(event.encode()?.get(), r#"{"chargedAmount":100,"fee":3}"#);
//!
//! let old = serde_json::value::RawValue::from_string(r#"{"charge":9}"#.to_owned())?;
//! assert_eq!(
//!     AccountEvent::decode("Charged", 1, &old)?,
//!     AccountEvent::Charged { amount: 9, fee: 25, note: None },
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! serde attributes on the enum or on a variant (`rename_all`, `tag`,
//! `rename` of a variant...) do not change payloads: they belong to the
//! `Serialize`/`Deserialize` implementations the enum may derive for other
//! uses. The stored event type name is set with `#[event(name = "...")]`.
//! `#[event(...)]` on a field is refused.
//!
//! # Generics
//!
//! Type parameters are allowed; the implementation requires each to be
//! `Serialize + DeserializeOwned + Send + Sync + 'static`. Lifetime
//! parameters are refused: decoded events own their data.
//!
//! # Compile errors
//!
//! Misuse is reported at the token at fault, every error of the enum in one
//! compile, and the enum still implements the trait so that its uses add no
//! errors of their own: the derive on a struct or union; a missing or empty
//! `bounded_context` or `aggregate_type`; an empty `name`; an unknown key
//! (the message lists the allowed ones); a repeated key; two variants with
//! the same event name; a version that is not an integer from 1 to
//! `i32::MAX`; an upcast from a version not below the current one, twice
//! from one version, or leaving a gap in the chain; an upcast function of the
//! wrong type; a tuple variant of several fields; a field type that serde
//! cannot serialize or deserialize.
//!
//! ```compile_fail
//! use es::DomainEvent;
//!
//! #[derive(DomainEvent)]
//! #[event(bounded_context = "Billing", aggregate_type = "Account")]
//! enum AccountEvent {
//!     Deposited { amount: i64 },
//!     #[event(name = "Deposited")] // error: event name `Deposited` is already used by variant `Deposited`
//!     Refunded { amount: i64 },
//! }
//! ```
//!
//! ```compile_fail
//! use es::DomainEvent;
//!
//! fn v2_to_v3(payload: serde_json::Value) -> serde_json::Value { payload }
//!
//! #[derive(DomainEvent)]
//! #[event(bounded_context = "Billing", aggregate_type = "Account")]
//! enum AccountEvent {
//!     // error: an upcast must read a version below the current version 2 of `Deposited`
//!     #[event(version = 2, upcast(from = 2, with = v2_to_v3))]
//!     Deposited { amount: i64 },
//! }
//! ```
//!
//! ```compile_fail
//! use es::DomainEvent;
//!
//! #[derive(DomainEvent)] // error: `DomainEvent` can only be derived for enums, not structs
//! #[event(bounded_context = "Billing", aggregate_type = "Account")]
//! struct Deposited { amount: i64 }
//! ```

mod ast;
mod attr;
mod errors;
mod expand;
mod valid;

use proc_macro::TokenStream;

/// Implements `es::DomainEvent` for an enum of events: one variant per event
/// type, its data as the payload.
///
/// ```
/// use es::DomainEvent;
/// use es::store::{Metadata, PersistedEvent};
///
/// fn v1_to_v2(mut payload: serde_json::Value) -> serde_json::Value {
///     payload["amount"] = payload["cents"].take();
///     payload
/// }
///
/// #[derive(Debug, PartialEq, DomainEvent)]
/// #[event(bounded_context = "Billing", aggregate_type = "Account")]
/// enum AccountEvent {
///     Opened { owner: String },
///     #[event(name = "MoneyDeposited", version = 2, upcast(from = 1, with = v1_to_v2))]
///     Deposited { amount: i64 },
///     Closed,
/// }
///
/// let metadata = Metadata::new().with_trace_id("trace-1").with_field("user", "alice");
/// let history = [AccountEvent::Opened { owner: "alice".into() }, AccountEvent::Deposited { amount: 5 }];
/// let events = AccountEvent::to_events(&history, "acc-1", &metadata)?;
/// assert_eq!((events[1].event_type.as_str(), events[1].event_version), ("MoneyDeposited", 2));
///
/// let stored = PersistedEvent::new(events[1].clone(), 2, 2);
/// assert_eq!(AccountEvent::from_persisted(&stored)?, AccountEvent::Deposited { amount: 5 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The attributes, the payload format, upcasting and the serde attributes
/// that apply are described in the documentation of the `es_macros` crate.
#[proc_macro_derive(DomainEvent, attributes(event, serde))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    expand::derive(&syn::parse_macro_input!(input as syn::DeriveInput)).into()
}

#[cfg(test)]
mod tests;
