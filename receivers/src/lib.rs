//! The built-in receivers. Each lives in a folder of its own and registers itself with the
//! engine's registry next to its config type.

pub mod http;
