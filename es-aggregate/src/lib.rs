//! es-aggregate
