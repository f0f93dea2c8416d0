//! Collects every error of one derive, so that one compile reports them all.

use std::fmt::Display;

use quote::ToTokens;

/// The errors found so far.
///
/// Dropping it without calling [`Errors::finish`] is a bug in the macro (an
/// error could be lost), so it panics then, as serde's `Ctxt` does.
pub(crate) struct Errors {
    errors: Option<Vec<syn::Error>>,
}

impl Errors {
    pub(crate) fn new() -> Self {
        Errors {
            errors: Some(Vec::new()),
        }
    }

    /// Records an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.errors
            .as_mut()
            .expect("errors are not used after finish")
            .push(error);
    }

    /// Records an error spanned on `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// All errors, combined into one, or `Ok` when there are none.
    pub(crate) fn finish(mut self) -> Result<(), syn::Error> {
        let mut errors = self.errors.take().unwrap_or_default().into_iter();
        match errors.next() {
            None => Ok(()),
            Some(mut first) => {
                for error in errors {
                    first.combine(error);
                }
                Err(first)
            }
        }
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        if self.errors.is_some() && !std::thread::panicking() {
            panic!("es-macros bug: errors were collected but never reported");
        }
    }
}
