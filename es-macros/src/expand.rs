//! Code generation.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, GenericParam, Generics, LitStr, WhereClause};

use crate::ast::{Enum, Shape, Variant};
use crate::errors::Errors;
use crate::valid;

/// Parses, checks and expands one `#[derive(DomainEvent)]`.
///
/// After an error it still emits a stub implementation, so that the user
/// sees the errors of the derive rather than a cascade of "`DomainEvent` is
/// not implemented" wherever the enum is used.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    match parse_and_check(input) {
        Ok(parsed) => expand(&parsed),
        Err((error, krate)) => {
            let errors = error.to_compile_error();
            let fallback = fallback(input, &krate);
            quote!(#errors #fallback)
        }
    }
}

/// The checked model, or every error (combined) with the crate path the
/// fallback should use.
pub(crate) fn parse_and_check(input: &DeriveInput) -> Result<Enum<'_>, (syn::Error, syn::Path)> {
    let mut errors = Errors::new();
    let parsed = Enum::from_syn(input, &mut errors);
    if let Some(parsed) = &parsed {
        valid::check(parsed, &mut errors);
    }
    let krate = parsed
        .as_ref()
        .map_or_else(|| syn::parse_quote!(::es), Enum::krate);
    match (errors.finish(), parsed) {
        (Ok(()), Some(parsed)) => Ok(parsed),
        (Err(error), _) => Err((error, krate)),
        (Ok(()), None) => unreachable!("a refused input records an error"),
    }
}

/// Everything the generated code names, derived from the crate path.
struct Paths {
    private: TokenStream,
    serde: TokenStream,
    /// `#[serde(crate = "...")]` for the hidden helper types.
    serde_crate: LitStr,
}

impl Paths {
    fn new(krate: &syn::Path) -> Self {
        let private = quote!(#krate::__private);
        let serde = quote!(#private::serde);
        let serde_crate = LitStr::new(&serde.to_string(), Span::call_site());
        Paths {
            private,
            serde,
            serde_crate,
        }
    }
}

fn expand(input: &Enum<'_>) -> TokenStream {
    let paths = Paths::new(&input.krate());
    let Paths { private, .. } = &paths;
    let ident = input.ident();
    let generics = &input.input.generics;
    let (impl_generics, ty_generics, _) = generics.split_for_impl();
    let where_clause = bounded_where_clause(generics, &paths);

    let bounded_context = input.attrs.bounded_context.as_ref().map(LitStr::value);
    let aggregate_type = input.attrs.aggregate_type.as_ref().map(LitStr::value);

    let names: Vec<String> = input.variants.iter().map(Variant::event_name).collect();
    let versions: Vec<i32> = input.variants.iter().map(Variant::version).collect();
    let variant_idents: Vec<_> = input.variants.iter().map(|v| v.ident).collect();

    let mirror = mirror_enum(input, &paths);
    let encoder = encoder(input, &paths, &where_clause);
    let payload_types = input
        .variants
        .iter()
        .filter_map(|variant| payload_type(input, variant, &paths));
    let encode_arms = input
        .variants
        .iter()
        .map(|variant| encode_arm(variant, &paths));
    let decode_arms = input
        .variants
        .iter()
        .map(|variant| decode_arm(input, variant, &paths));

    quote! {
        const _: () = {
            #mirror
            #encoder
            #(#payload_types)*

            #[automatically_derived]
            impl #impl_generics #private::DomainEvent for #ident #ty_generics #where_clause {
                const BOUNDED_CONTEXT: &'static ::core::primitive::str = #bounded_context;
                const AGGREGATE_TYPE: &'static ::core::primitive::str = #aggregate_type;
                const EVENT_TYPES: &'static [#private::EventTypeInfo] = &[
                    #(#private::EventTypeInfo::new(#names, #versions),)*
                ];

                fn event_type(&self) -> &'static ::core::primitive::str {
                    match self {
                        #(Self::#variant_idents { .. } => #names,)*
                    }
                }

                fn event_version(&self) -> ::core::primitive::i32 {
                    match self {
                        #(Self::#variant_idents { .. } => #versions,)*
                    }
                }

                fn encode(
                    &self,
                ) -> ::core::result::Result<
                    ::std::boxed::Box<#private::RawValue>,
                    #private::serde_json::Error,
                > {
                    match self {
                        #(#encode_arms)*
                    }
                }

                fn decode_json(
                    __event_type: &::core::primitive::str,
                    __event_version: ::core::primitive::i32,
                    __payload: &::core::primitive::str,
                ) -> ::core::result::Result<Self, #private::DecodeError> {
                    match __event_type {
                        #(#decode_arms)*
                        _ => ::core::result::Result::Err(#private::unknown_event_type(
                            <Self as #private::DomainEvent>::BOUNDED_CONTEXT,
                            <Self as #private::DomainEvent>::AGGREGATE_TYPE,
                            __event_type,
                        )),
                    }
                }
            }
        };
    }
}

/// The user's where clause plus what the generated code needs of each type
/// parameter: (de)serializable and, as every event, `Send + Sync + 'static`.
fn bounded_where_clause(generics: &Generics, paths: &Paths) -> WhereClause {
    let Paths { serde, .. } = paths;
    let mut clause = generics
        .where_clause
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(where));
    for param in generics.type_params() {
        let ident = &param.ident;
        clause.predicates.push(syn::parse_quote! {
            #ident: #serde::Serialize
                + #serde::de::DeserializeOwned
                + ::core::marker::Send
                + ::core::marker::Sync
                + 'static
        });
    }
    clause
}

/// A copy of the enum with only its fields' serde attributes, from which
/// serde derives `serialize(&Enum)` (a "remote" derive). `untagged`
/// serializes a variant as its fields alone: the payload.
fn mirror_enum(input: &Enum<'_>, paths: &Paths) -> TokenStream {
    let Paths {
        serde, serde_crate, ..
    } = paths;
    let ident = input.ident();
    let generics = &input.input.generics;
    let params = &generics.params;
    let where_clause = &generics.where_clause;
    // serde takes the remote type's parameters from the mirror's own.
    let remote = LitStr::new(&ident.to_string(), Span::call_site());
    let variants = input.variants.iter().map(|variant| {
        let vident = variant.ident;
        let fields = variant.fields.iter().map(|field| {
            let attrs = field.serde_attrs();
            let ty = field.ty;
            match &field.original.ident {
                Some(name) => quote!(#(#attrs)* #name: #ty),
                None => quote!(#(#attrs)* #ty),
            }
        });
        match variant.shape {
            Shape::Struct => quote!(#vident { #(#fields,)* }),
            Shape::Newtype | Shape::Tuple => quote!(#vident(#(#fields,)*)),
            Shape::Unit => quote!(#vident),
        }
    });
    quote! {
        #[allow(dead_code, non_camel_case_types)]
        #[derive(#serde::Serialize)]
        #[serde(crate = #serde_crate, remote = #remote, untagged)]
        enum __DomainEventMirror<#params> #where_clause {
            #(#variants,)*
        }
    }
}

/// `Serialize` for a borrowed event, through the mirror.
fn encoder(input: &Enum<'_>, paths: &Paths, where_clause: &WhereClause) -> TokenStream {
    let Paths { serde, .. } = paths;
    let ident = input.ident();
    let mut generics = input.input.generics.clone();
    generics.params.insert(0, syn::parse_quote!('__a));
    let (impl_generics, ty_generics, _) = generics.split_for_impl();
    let (_, enum_ty_generics, _) = input.input.generics.split_for_impl();
    let user_where = &input.input.generics.where_clause;
    quote! {
        struct __DomainEventEncode #impl_generics (&'__a #ident #enum_ty_generics) #user_where;

        #[automatically_derived]
        impl #impl_generics #serde::Serialize for __DomainEventEncode #ty_generics #where_clause {
            fn serialize<__S>(
                &self,
                __serializer: __S,
            ) -> ::core::result::Result<<__S as #serde::Serializer>::Ok, <__S as #serde::Serializer>::Error>
            where
                __S: #serde::Serializer,
            {
                __DomainEventMirror::serialize(self.0, __serializer)
            }
        }
    }
}

fn payload_type_ident(variant: &Variant<'_>) -> syn::Ident {
    format_ident!("__DomainEventPayload{}", variant.ident)
}

/// The type a variant's payload deserializes into: its fields, with their
/// serde attributes. `None` for a unit variant.
fn payload_type(input: &Enum<'_>, variant: &Variant<'_>, paths: &Paths) -> Option<TokenStream> {
    let Paths {
        serde, serde_crate, ..
    } = paths;
    let generics = &input.input.generics;
    let params = &generics.params;
    let where_clause = &generics.where_clause;
    let ident = payload_type_ident(variant);
    let type_params: Vec<_> = generics.type_params().map(|p| &p.ident).collect();
    // Type parameters the variant's fields do not use still need a use.
    let marker = (!type_params.is_empty()).then(|| {
        quote! {
            #[serde(skip)]
            __domain_event_marker: ::core::marker::PhantomData<fn() -> (#(#type_params,)*)>,
        }
    });
    let fields = variant.fields.iter().map(|field| {
        let attrs = field.serde_attrs();
        let ty = field.ty;
        let name = helper_field(field);
        quote!(#(#attrs)* #name: #ty,)
    });
    let container = match variant.shape {
        Shape::Unit | Shape::Tuple => return None,
        Shape::Struct => {
            let expecting = LitStr::new(
                &format!(
                    "the payload of event `{}`: a JSON object",
                    variant.event_name()
                ),
                Span::call_site(),
            );
            quote!(#[serde(crate = #serde_crate, expecting = #expecting)])
        }
        Shape::Newtype => quote!(#[serde(crate = #serde_crate, transparent)]),
    };
    Some(quote! {
        #[allow(dead_code, non_camel_case_types)]
        #[derive(#serde::Deserialize)]
        #container
        struct #ident<#params> #where_clause {
            #(#fields)*
            #marker
        }
    })
}

/// The payload type's name for a field: its own name, or `__0` for the
/// field of a newtype variant.
fn helper_field(field: &crate::ast::Field<'_>) -> syn::Ident {
    match &field.member {
        syn::Member::Named(ident) => ident.clone(),
        syn::Member::Unnamed(index) => format_ident!("__{}", index.index),
    }
}

fn encode_arm(variant: &Variant<'_>, paths: &Paths) -> TokenStream {
    let Paths { private, .. } = paths;
    let vident = variant.ident;
    let name = variant.event_name();
    match variant.shape {
        Shape::Unit => quote! {
            Self::#vident { .. } => ::core::result::Result::Ok(#private::empty_object()),
        },
        Shape::Newtype => quote! {
            Self::#vident { .. } => #private::expect_object(
                #name,
                #private::serde_json::value::to_raw_value(&__DomainEventEncode(self))?,
            ),
        },
        Shape::Struct | Shape::Tuple => quote! {
            Self::#vident { .. } => #private::serde_json::value::to_raw_value(&__DomainEventEncode(self)),
        },
    }
}

fn decode_arm(input: &Enum<'_>, variant: &Variant<'_>, paths: &Paths) -> TokenStream {
    let Paths { private, .. } = paths;
    let vident = variant.ident;
    let name = variant.event_name();
    let version = variant.version();
    let (_, ty_generics, _) = input.input.generics.split_for_impl();
    let upcasts = variant.attrs.upcasts.iter().filter_map(|upcast| {
        let from = i32::try_from(upcast.from.as_ref()?.value).ok()?;
        let with = upcast.with.as_ref()?;
        // Spanned on the function, so that a wrong signature points at it.
        let with = quote_spanned!(with.span()=> #with);
        Some(quote!(#private::Upcast { from: #from, with: #with }))
    });
    let decode = quote! {
        #private::decode_payload(
            #name,
            #version,
            &[#(#upcasts),*],
            __event_version,
            __payload,
        )?
    };
    let construct = match variant.shape {
        Shape::Unit | Shape::Tuple => quote! {{
            let _: #private::UnitPayload = #decode;
            ::core::result::Result::Ok(Self::#vident)
        }},
        Shape::Newtype => {
            let ty = payload_type_ident(variant);
            quote! {{
                let __fields: #ty #ty_generics = #decode;
                ::core::result::Result::Ok(Self::#vident(__fields.__0))
            }}
        }
        Shape::Struct => {
            let ty = payload_type_ident(variant);
            let members = variant.fields.iter().map(|field| &field.member);
            let helper_fields = variant.fields.iter().map(helper_field);
            quote! {{
                let __fields: #ty #ty_generics = #decode;
                ::core::result::Result::Ok(Self::#vident { #(#members: __fields.#helper_fields,)* })
            }}
        }
    };
    quote!(#name => #construct)
}

/// A stub implementation emitted next to the errors.
fn fallback(input: &DeriveInput, krate: &syn::Path) -> TokenStream {
    let generics = &input.generics;
    if generics
        .params
        .iter()
        .any(|param| matches!(param, GenericParam::Lifetime(_)))
    {
        // It could not satisfy `'static` and would add errors of its own.
        return TokenStream::new();
    }
    let private = quote!(#krate::__private);
    let ident = &input.ident;
    let (impl_generics, ty_generics, _) = generics.split_for_impl();
    let mut where_clause = generics
        .where_clause
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(where));
    for param in generics.type_params() {
        let ident = &param.ident;
        where_clause.predicates.push(syn::parse_quote! {
            #ident: ::core::marker::Send + ::core::marker::Sync + 'static
        });
    }
    quote! {
        #[automatically_derived]
        impl #impl_generics #private::DomainEvent for #ident #ty_generics #where_clause {
            const BOUNDED_CONTEXT: &'static ::core::primitive::str = "";
            const AGGREGATE_TYPE: &'static ::core::primitive::str = "";
            const EVENT_TYPES: &'static [#private::EventTypeInfo] = &[];

            fn event_type(&self) -> &'static ::core::primitive::str {
                ::core::unimplemented!()
            }

            fn event_version(&self) -> ::core::primitive::i32 {
                ::core::unimplemented!()
            }

            fn encode(
                &self,
            ) -> ::core::result::Result<
                ::std::boxed::Box<#private::RawValue>,
                #private::serde_json::Error,
            > {
                ::core::unimplemented!()
            }

            fn decode_json(
                _: &::core::primitive::str,
                _: ::core::primitive::i32,
                _: &::core::primitive::str,
            ) -> ::core::result::Result<Self, #private::DecodeError> {
                ::core::unimplemented!()
            }
        }
    }
}
