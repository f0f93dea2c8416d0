//! Semantic checks on the parsed input: what the attributes mean together.

use std::collections::{BTreeMap, HashMap};

use quote::ToTokens;
use syn::{GenericParam, LitStr};

use crate::ast::{Enum, Shape, Variant};
use crate::attr::{AGGREGATE_TYPE, BOUNDED_CONTEXT};
use crate::errors::Errors;

/// Records every problem of `input`.
pub(crate) fn check(input: &Enum<'_>, errors: &mut Errors) {
    check_generics(input, errors);
    check_enum_attrs(input, errors);
    if input.variants.is_empty() {
        errors.spanned(
            input.ident(),
            "a `DomainEvent` enum needs at least one variant, one per event type",
        );
    }
    for variant in &input.variants {
        check_variant(variant, errors);
    }
    check_unique_names(input, errors);
}

fn check_generics(input: &Enum<'_>, errors: &mut Errors) {
    for param in &input.input.generics.params {
        if let GenericParam::Lifetime(lifetime) = param {
            errors.spanned(
                lifetime,
                "a `DomainEvent` enum cannot have lifetime parameters: events are decoded into owned, `'static` values",
            );
        }
    }
}

fn check_enum_attrs(input: &Enum<'_>, errors: &mut Errors) {
    let attrs = &input.attrs;
    let Some(first) = &attrs.first else {
        errors.spanned(
            input.ident(),
            "missing `#[event(bounded_context = \"...\", aggregate_type = \"...\")]` on the enum",
        );
        return;
    };
    for (value, key) in [
        (&attrs.bounded_context, BOUNDED_CONTEXT),
        (&attrs.aggregate_type, AGGREGATE_TYPE),
    ] {
        match value {
            None if attrs.written.contains(&key) => {}
            None => errors.spanned(
                first,
                format_args!("missing `{key} = \"...\"` in `#[event(...)]` on the enum"),
            ),
            Some(lit) => check_name(lit, key, errors),
        }
    }
}

/// Names are stored as they are written: refuse what would be refused or
/// confusing in the store.
fn check_name(lit: &LitStr, what: &str, errors: &mut Errors) {
    let value = lit.value();
    if value.trim().is_empty() {
        errors.spanned(lit, format_args!("`{what}` must not be empty"));
    } else if value.trim() != value {
        errors.spanned(
            lit,
            format_args!("`{what}` must not start or end with whitespace"),
        );
    }
}

fn check_variant(variant: &Variant<'_>, errors: &mut Errors) {
    if variant.shape == Shape::Tuple {
        let count = variant.fields.len();
        let message = if count == 0 {
            format!(
                "an event without data is a unit variant: write `{}` without parentheses",
                variant.ident
            )
        } else {
            format!(
                "a tuple variant with {count} fields has no field names for its payload object; name the fields, or wrap them in one type: `{}(Payload)`",
                variant.ident
            )
        };
        errors.spanned(&variant.original.fields, message);
    }

    if let Some(name) = &variant.attrs.name {
        check_name(name, "name", errors);
    }

    let current = match &variant.attrs.version {
        // An invalid version is reported already; upcasts cannot be checked against it.
        None if variant.attrs.version_written => None,
        None => Some(1),
        Some(version) => {
            let valid = check_version(version, "version", errors);
            valid.then_some(version.value)
        }
    };

    // The upcast steps by the version they read, to check the chain.
    let mut steps = BTreeMap::new();
    for upcast in &variant.attrs.upcasts {
        if upcast.from.is_none() && !upcast.refused_key {
            errors.spanned(
                &upcast.keyword,
                "missing `from = <version>` in `upcast(...)`: the version this upcast reads",
            );
        }
        if upcast.with.is_none() && !upcast.refused_key {
            errors.spanned(
                &upcast.keyword,
                "missing `with = <function>` in `upcast(...)`: a `fn(serde_json::Value) -> serde_json::Value` that turns a payload of version `from` into one of version `from + 1`",
            );
        }
        let Some(from) = &upcast.from else { continue };
        if !check_version(from, "from", errors) {
            continue;
        }
        if let Some(current) = current
            && from.value >= current
        {
            errors.spanned(
                &from.expr,
                format_args!(
                    "an upcast must read a version below the current version {current} of `{}`{}",
                    variant.ident,
                    if variant.attrs.version.is_none() {
                        " (set the current version with `version = ...`)"
                    } else {
                        ""
                    }
                ),
            );
            continue;
        }
        if steps.insert(from.value, from).is_some() {
            errors.spanned(
                &from.expr,
                format_args!(
                    "a second upcast from version {}: each version is upcast by one function",
                    from.value
                ),
            );
        }
    }
    if let Some(current) = current {
        for (&version, from) in &steps {
            let next = version + 1;
            if next < current && !steps.contains_key(&next) {
                errors.spanned(
                    &from.expr,
                    format_args!(
                        "this upcast gives version {next}, and no `upcast(from = {next}, ...)` takes it on to the current version {current}"
                    ),
                );
            }
        }
    }
}

/// A version is a positive `i32`, as in the store's `event_version` column.
fn check_version(version: &crate::attr::Int, what: &str, errors: &mut Errors) -> bool {
    if version.value < 1 {
        errors.spanned(
            &version.expr,
            format_args!(
                "`{what}` must be at least 1, got {}: versions count from 1",
                version.value
            ),
        );
        false
    } else if i32::try_from(version.value).is_err() {
        errors.spanned(
            &version.expr,
            format_args!("`{what}` must be at most {}", i32::MAX),
        );
        false
    } else {
        true
    }
}

fn check_unique_names(input: &Enum<'_>, errors: &mut Errors) {
    let mut seen: HashMap<String, &syn::Ident> = HashMap::new();
    for variant in &input.variants {
        let name = variant.event_name();
        match seen.get(&name) {
            Some(first) => {
                let at: &dyn ToTokens = match &variant.attrs.name {
                    Some(lit) => lit,
                    None => variant.ident,
                };
                errors.spanned(
                    at,
                    format_args!(
                        "event name `{name}` is already used by variant `{first}`: each event type of an enum needs a name of its own (set one with `#[event(name = \"...\")]`)"
                    ),
                );
            }
            None => {
                seen.insert(name, variant.ident);
            }
        }
    }
}
