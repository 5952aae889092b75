//! NetworkPolicy compiler and evaluator (see crate docs).
