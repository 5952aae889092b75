//! Service proxy compiler (see crate docs).
