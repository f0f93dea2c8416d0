//! Parsing of `#[event(...)]` attributes into typed values.
//!
//! Syntax errors (an unknown or repeated key, a value of the wrong kind) are
//! reported here; what the values mean together is checked in `valid.rs`.

use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, Lit, LitStr, Token};

use crate::errors::Errors;

// Every key, named once.
pub(crate) const EVENT: &str = "event";
pub(crate) const BOUNDED_CONTEXT: &str = "bounded_context";
pub(crate) const AGGREGATE_TYPE: &str = "aggregate_type";
pub(crate) const CRATE: &str = "crate";
pub(crate) const NAME: &str = "name";
pub(crate) const VERSION: &str = "version";
pub(crate) const UPCAST: &str = "upcast";
pub(crate) const FROM: &str = "from";
pub(crate) const WITH: &str = "with";

const ENUM_KEYS: &[&str] = &[BOUNDED_CONTEXT, AGGREGATE_TYPE, CRATE];
const VARIANT_KEYS: &[&str] = &[NAME, VERSION, UPCAST];
const UPCAST_KEYS: &[&str] = &[FROM, WITH];

/// `#[event(...)]` on the enum.
#[derive(Default)]
pub(crate) struct EnumAttrs {
    /// The first `#[event]` attribute, to point at when a key is missing.
    pub(crate) first: Option<Attribute>,
    pub(crate) bounded_context: Option<LitStr>,
    pub(crate) aggregate_type: Option<LitStr>,
    /// `crate = "path"`: the literal, and the path when it parses.
    pub(crate) krate: Option<(LitStr, Option<syn::Path>)>,
    /// The keys written, valid or not: a key with a bad value is not also
    /// reported as missing.
    pub(crate) written: Vec<&'static str>,
}

/// `#[event(...)]` on a variant.
#[derive(Default)]
pub(crate) struct VariantAttrs {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<Int>,
    pub(crate) upcasts: Vec<UpcastAttr>,
    /// Whether `version` was written, valid or not.
    pub(crate) version_written: bool,
}

/// One `upcast(from = N, with = function)`.
pub(crate) struct UpcastAttr {
    /// The `upcast` keyword.
    pub(crate) keyword: syn::Path,
    pub(crate) from: Option<Int>,
    pub(crate) with: Option<Expr>,
    /// Whether a key or value in it was refused: a missing key is then not
    /// reported, as the refused one is likely the one meant.
    pub(crate) refused_key: bool,
}

/// An integer literal (possibly negated), kept with its tokens for spans.
pub(crate) struct Int {
    pub(crate) expr: Expr,
    pub(crate) value: i64,
}

/// Parses the `#[event(...)]` attributes of the enum.
pub(crate) fn enum_attrs(attrs: &[Attribute], errors: &mut Errors) -> EnumAttrs {
    let mut out = EnumAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident(EVENT)) {
        out.first.get_or_insert_with(|| attr.clone());
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(BOUNDED_CONTEXT) {
                out.written.push(BOUNDED_CONTEXT);
                let value = string_value(&meta, errors)?;
                set_once(&mut out.bounded_context, &meta, value, errors);
            } else if meta.path.is_ident(AGGREGATE_TYPE) {
                out.written.push(AGGREGATE_TYPE);
                let value = string_value(&meta, errors)?;
                set_once(&mut out.aggregate_type, &meta, value, errors);
            } else if meta.path.is_ident(CRATE) {
                let value = string_value(&meta, errors)?.map(|lit| {
                    let path = match lit.parse::<syn::Path>() {
                        Ok(path) => Some(path),
                        Err(_) => {
                            errors.spanned(
                                &lit,
                                format_args!(
                                    "`crate` must be a path to the `es` crate, as in `crate = \"::es\"`; `{}` is not a path",
                                    lit.value()
                                ),
                            );
                            None
                        }
                    };
                    (lit, path)
                });
                set_once(&mut out.krate, &meta, value, errors);
            } else {
                unknown_key(&meta, ENUM_KEYS, "on the enum", VARIANT_KEYS, "on a variant", errors);
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(error) = result {
            errors.push(error);
        }
    }
    out
}

/// Parses the `#[event(...)]` attributes of one variant.
pub(crate) fn variant_attrs(attrs: &[Attribute], errors: &mut Errors) -> VariantAttrs {
    let mut out = VariantAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident(EVENT)) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(NAME) {
                let value = string_value(&meta, errors)?;
                set_once(&mut out.name, &meta, value, errors);
            } else if meta.path.is_ident(VERSION) {
                out.version_written = true;
                let value = int_value(&meta, errors)?;
                set_once(&mut out.version, &meta, value, errors);
            } else if meta.path.is_ident(UPCAST) {
                if let Some(upcast) = upcast(&meta, errors)? {
                    out.upcasts.push(upcast);
                }
            } else {
                unknown_key(
                    &meta,
                    VARIANT_KEYS,
                    "on a variant",
                    ENUM_KEYS,
                    "on the enum",
                    errors,
                );
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(error) = result {
            errors.push(error);
        }
    }
    out
}

/// Refuses `#[event]` where it has no meaning (on fields).
pub(crate) fn refuse_on_field(attrs: &[Attribute], errors: &mut Errors) {
    for attr in attrs.iter().filter(|a| a.path().is_ident(EVENT)) {
        errors.spanned(
            attr,
            "`#[event]` does not apply to fields; a field is configured with serde's field attributes, as in `#[serde(rename = \"...\")]`",
        );
    }
}

fn upcast(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<UpcastAttr>> {
    if !meta.input.peek(syn::token::Paren) {
        errors.spanned(
            &meta.path,
            "expected `upcast(from = <version>, with = <function>)`",
        );
        skip_value(meta)?;
        return Ok(None);
    }
    let mut upcast = UpcastAttr {
        keyword: meta.path.clone(),
        from: None,
        with: None,
        refused_key: false,
    };
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident(FROM) {
            let value = int_value(&inner, errors)?;
            upcast.refused_key |= value.is_none();
            set_once(&mut upcast.from, &inner, value, errors);
        } else if inner.path.is_ident(WITH) {
            let value = with_value(&inner, errors)?;
            upcast.refused_key |= value.is_none();
            set_once(&mut upcast.with, &inner, value, errors);
        } else {
            unknown_key(&inner, UPCAST_KEYS, "in `upcast(...)`", &[], "", errors);
            upcast.refused_key = true;
            skip_value(&inner)?;
        }
        Ok(())
    })?;
    Ok(Some(upcast))
}

/// Keeps the first value of a key and reports any repetition on its key.
fn set_once<T>(
    slot: &mut Option<T>,
    meta: &ParseNestedMeta<'_>,
    value: Option<T>,
    errors: &mut Errors,
) {
    if slot.is_some() {
        errors.spanned(
            &meta.path,
            format_args!(
                "duplicate `{}`: a key may be given only once",
                path_name(&meta.path)
            ),
        );
    } else if value.is_some() {
        *slot = value;
    }
}

fn unknown_key(
    meta: &ParseNestedMeta<'_>,
    allowed: &[&str],
    here: &str,
    elsewhere: &[&str],
    there: &str,
    errors: &mut Errors,
) {
    let name = path_name(&meta.path);
    let message = if elsewhere.contains(&name.as_str()) {
        format!(
            "`{name}` goes {there}, not {here}; expected one of {}",
            one_of(allowed)
        )
    } else {
        format!(
            "unknown event attribute `{name}` {here}; expected one of {}",
            one_of(allowed)
        )
    };
    errors.spanned(&meta.path, message);
}

fn one_of(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

fn path_name(path: &syn::Path) -> String {
    quote::ToTokens::to_token_stream(path)
        .to_string()
        .replace(' ', "")
}

/// The value after `key =`, reporting a missing `=`.
fn value_expr(
    meta: &ParseNestedMeta<'_>,
    example: &str,
    errors: &mut Errors,
) -> syn::Result<Option<Expr>> {
    if !meta.input.peek(Token![=]) {
        errors.spanned(&meta.path, format_args!("expected `{example}`"));
        skip_value(meta)?;
        return Ok(None);
    }
    Ok(Some(meta.value()?.parse::<Expr>()?))
}

fn string_value(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<LitStr>> {
    let name = path_name(&meta.path);
    let example = format!("{name} = \"...\"");
    let Some(expr) = value_expr(meta, &example, errors)? else {
        return Ok(None);
    };
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(Some(lit)),
        other => {
            errors.spanned(
                &other,
                format_args!("expected a string literal, as in `{example}`"),
            );
            Ok(None)
        }
    }
}

fn int_value(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<Int>> {
    let name = path_name(&meta.path);
    let example = format!("{name} = 2");
    let Some(expr) = value_expr(meta, &example, errors)? else {
        return Ok(None);
    };
    let parsed = match &expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(lit), ..
        }) => lit.base10_parse::<i64>().ok(),
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr: inner,
            ..
        }) => match &**inner {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Int(lit), ..
            }) => lit.base10_parse::<i64>().ok().map(|v| -v),
            _ => None,
        },
        _ => None,
    };
    match parsed {
        Some(value) => Ok(Some(Int { expr, value })),
        None => {
            errors.spanned(
                &expr,
                format_args!("expected an integer literal, as in `{example}`"),
            );
            Ok(None)
        }
    }
}

fn with_value(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<Expr>> {
    let Some(expr) = value_expr(meta, "with = path::to::function", errors)? else {
        return Ok(None);
    };
    // `with = "path"`, as serde spells paths, is accepted too.
    if let Expr::Lit(syn::ExprLit {
        lit: Lit::Str(lit), ..
    }) = &expr
    {
        return match lit.parse::<syn::ExprPath>() {
            Ok(path) => Ok(Some(Expr::Path(path))),
            Err(_) => {
                errors.spanned(
                    lit,
                    format_args!("`{}` is not a path to a function", lit.value()),
                );
                Ok(None)
            }
        };
    }
    Ok(Some(expr))
}

/// Consumes whatever follows an unusable key: `= value` or `(...)`.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<proc_macro2::Group>()?;
    }
    Ok(())
}
