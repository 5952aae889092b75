//! Integration tests of the `model` crate through its public API (one test binary, to keep
//! link time down).

mod output;
mod parse;
mod props;
mod selector;
mod validation;

/// The fixture with one or more objects of every appliable kind.
pub const ALL_KINDS: &str = include_str!("../fixtures/all-kinds.yaml");
