//! The built-in processors. Each lives in a folder of its own and registers itself with the
//! engine's registry next to its config type.

pub mod auth;
pub mod batch;
pub mod enrich;
pub mod filter;
pub mod rate_limit;
pub mod validate;
