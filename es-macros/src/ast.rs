//! A typed model of the derive input that keeps the syn nodes for spans.

use syn::{Data, DeriveInput, Fields, Ident, Member, Type};

use crate::attr::{self, EnumAttrs, VariantAttrs};
use crate::errors::Errors;

/// The enum the derive is on.
pub(crate) struct Enum<'a> {
    pub(crate) input: &'a DeriveInput,
    pub(crate) attrs: EnumAttrs,
    pub(crate) variants: Vec<Variant<'a>>,
}

/// One variant: one event type.
pub(crate) struct Variant<'a> {
    pub(crate) original: &'a syn::Variant,
    pub(crate) ident: &'a Ident,
    pub(crate) attrs: VariantAttrs,
    pub(crate) shape: Shape,
    pub(crate) fields: Vec<Field<'a>>,
}

/// How a variant holds its data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `Opened { owner: String }`: the payload is the fields as an object.
    Struct,
    /// `Withdrawn(Withdrawal)`: the payload is the field's own object.
    Newtype,
    /// `Withdrawn(A, B)`: refused, a payload is an object with named fields.
    Tuple,
    /// `Closed`: the payload is `{}`.
    Unit,
}

/// One field of a variant.
pub(crate) struct Field<'a> {
    pub(crate) original: &'a syn::Field,
    pub(crate) member: Member,
    pub(crate) ty: &'a Type,
}

impl<'a> Enum<'a> {
    /// Builds the model, or `None` (with the error recorded) when the input
    /// is not an enum.
    pub(crate) fn from_syn(input: &'a DeriveInput, errors: &mut Errors) -> Option<Self> {
        let data = match &input.data {
            Data::Enum(data) => data,
            Data::Struct(data) => {
                errors.spanned(
                    data.struct_token,
                    "`DomainEvent` can only be derived for enums, not structs: declare one enum per aggregate with one variant per event type",
                );
                return None;
            }
            Data::Union(data) => {
                errors.spanned(
                    data.union_token,
                    "`DomainEvent` can only be derived for enums, not unions: declare one enum per aggregate with one variant per event type",
                );
                return None;
            }
        };
        let attrs = attr::enum_attrs(&input.attrs, errors);
        let variants = data
            .variants
            .iter()
            .map(|variant| Variant::from_syn(variant, errors))
            .collect();
        Some(Enum {
            input,
            attrs,
            variants,
        })
    }

    pub(crate) fn ident(&self) -> &'a Ident {
        &self.input.ident
    }
}

impl<'a> Variant<'a> {
    fn from_syn(variant: &'a syn::Variant, errors: &mut Errors) -> Self {
        let attrs = attr::variant_attrs(&variant.attrs, errors);
        let shape = match &variant.fields {
            Fields::Named(_) => Shape::Struct,
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => Shape::Newtype,
            Fields::Unnamed(_) => Shape::Tuple,
            Fields::Unit => Shape::Unit,
        };
        let fields = variant
            .fields
            .iter()
            .enumerate()
            .map(|(index, field)| {
                attr::refuse_on_field(&field.attrs, errors);
                Field {
                    original: field,
                    member: match &field.ident {
                        Some(ident) => Member::Named(ident.clone()),
                        None => Member::Unnamed(index.into()),
                    },
                    ty: &field.ty,
                }
            })
            .collect();
        Variant {
            original: variant,
            ident: &variant.ident,
            attrs,
            shape,
            fields,
        }
    }
}

impl Field<'_> {
    /// The field's `#[serde(...)]` attributes, which apply to its payload.
    pub(crate) fn serde_attrs(&self) -> impl Iterator<Item = &syn::Attribute> {
        self.original
            .attrs
            .iter()
            .filter(|attr| attr.path().is_ident("serde"))
    }
}

impl Enum<'_> {
    /// The path generated code reaches the framework through: `crate =
    /// "..."`, or `::es`.
    pub(crate) fn krate(&self) -> syn::Path {
        match &self.attrs.krate {
            Some((_, Some(path))) => path.clone(),
            _ => syn::parse_quote!(::es),
        }
    }
}

impl Variant<'_> {
    /// The event type name: `name = "..."`, or the variant's name.
    pub(crate) fn event_name(&self) -> String {
        match &self.attrs.name {
            Some(lit) => lit.value(),
            None => syn::ext::IdentExt::unraw(self.ident).to_string(),
        }
    }

    /// The current schema version: `version = N`, or 1. Valid once checked.
    pub(crate) fn version(&self) -> i32 {
        self.attrs
            .version
            .as_ref()
            .and_then(|v| i32::try_from(v.value).ok())
            .unwrap_or(1)
    }
}
