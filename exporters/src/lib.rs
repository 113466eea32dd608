//! The built-in exporters. Each lives in a folder of its own and registers itself with the
//! engine's registry next to its config type.

pub mod database;
pub mod otel;
pub mod otlp;
pub mod prometheus;
