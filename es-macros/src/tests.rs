//! Parser and checker tests without a compiler run: every error of an input,
//! in one pass.

use syn::{DeriveInput, parse_quote};

use crate::expand::parse_and_check;

fn errors(input: DeriveInput) -> Vec<String> {
    match parse_and_check(&input) {
        Ok(_) => Vec::new(),
        Err((error, _)) => error.into_iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn a_valid_enum_has_no_errors() {
    assert_eq!(
        errors(parse_quote! {
            #[event(bounded_context = "Billing", aggregate_type = "Account")]
            enum AccountEvent<T> {
                Opened { #[serde(rename = "who")] owner: String, currency: T },
                #[event(name = "MoneyDeposited", version = 3, upcast(from = 1, with = a), upcast(from = 2, with = "b"))]
                Deposited { amount: i64 },
                Withdrawn(Withdrawal),
                Closed,
            }
        }),
        Vec::<String>::new()
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let found = errors(parse_quote! {
        #[event(bounded_context = "", colour = "blue")]
        #[event(bounded_context = "Billing")]
        enum AccountEvent<'a> {
            #[event(version = 0, upcast(from = 1, with = f))]
            Opened { owner: &'a str },
            #[event(name = "Opened", nmae = "x")]
            Reopened { #[event(name = "y")] owner: String },
            Transferred(String, i64),
            #[event(version = 4, upcast(from = 1, with = f), upcast(from = 1, with = f), upcast(from = 4, with = f), upcast(from = 3))]
            Deposited { amount: i64 },
        }
    });
    let expected = [
        "unknown event attribute `colour` on the enum",
        "duplicate `bounded_context`: a key may be given only once",
        "unknown event attribute `nmae` on a variant",
        "`#[event]` does not apply to fields",
        "cannot have lifetime parameters",
        "`bounded_context` must not be empty",
        "missing `aggregate_type = \"...\"`",
        "`version` must be at least 1, got 0",
        "a tuple variant with 2 fields",
        "a second upcast from version 1",
        "an upcast must read a version below the current version 4 of `Deposited`",
        "missing `with = <function>`",
        "this upcast gives version 2, and no `upcast(from = 2, ...)`",
        "event name `Opened` is already used by variant `Opened`",
    ];
    for message in expected {
        assert!(
            found.iter().any(|f| f.contains(message)),
            "no error containing {message:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn a_bad_value_is_not_also_reported_as_missing() {
    let found = errors(parse_quote! {
        #[event(bounded_context = Billing, aggregate_type = "Account")]
        enum AccountEvent {
            #[event(version = "2", upcast(from = 1, with = f))]
            Opened { owner: String },
            #[event(version = 2, upcast(since = 1, with = f), upcast(from = x, with = f))]
            Closed,
        }
    });
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(found[0].starts_with("expected a string literal"));
}

#[test]
fn only_enums_are_accepted() {
    for input in [
        parse_quote!(
            #[event(bounded_context = "B", aggregate_type = "A")]
            struct S {
                a: u8,
            }
        ),
        parse_quote!(
            #[event(bounded_context = "B", aggregate_type = "A")]
            union U { a: u8 }
        ),
    ] {
        let found = errors(input);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("`DomainEvent` can only be derived for enums"));
    }
}

#[test]
fn the_fallback_keeps_the_crate_path() {
    let input: DeriveInput = parse_quote! {
        #[event(bounded_context = "B", crate = "::my_es")]
        enum E { A }
    };
    let output = crate::expand::derive(&input).to_string();
    assert!(output.contains("compile_error"));
    assert!(output.contains(":: my_es :: __private :: DomainEvent for E"));
}
