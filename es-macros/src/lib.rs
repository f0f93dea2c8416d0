//! es-macros
