//! The CNI protocol for flatnet, spec 1.1.0 (and 0.3.0 to 1.0.0): the `CNI_*` environment,
//! the request config on stdin, version negotiation, the result in each version's shape, and
//! errors with the spec's codes. `flatnet-cni` glues these to the process; the spec checklist
//! this follows is `reference/cni.md` §1.
//!
//! # Layout
//! - `env`: `CNI_*` variables -> [`Env`], validated per verb ([`Command`]).
//! - `conf`: stdin -> [`NetConf`] ([`parse_conf`]), the VERSION reply ([`version_output`]).
//! - `version`: exact-match negotiation and the minimum version of each verb.
//! - `result`: [`CniResult`] in its 1.1.0 form, written and read in every supported shape.
//! - `error`: [`CniError`] and the spec's [`code`]s.
//! - `json`: typed JSON field getters whose errors name the field.
//!
//! This crate must not do IO: no environment, stdin, files or kernel; callers pass values in
//! (`Env::from_lookup(|k| std::env::var(k).ok())`) and print what comes back.

mod conf;
mod env;
mod error;
mod json;
mod result;
mod version;

pub use conf::{Attachment, DEFAULT_DATA_DIR, NetConf, parse_conf, peek_version, version_output};
pub use env::{Command, Env};
pub use error::{CniError, code};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::is_supported;

/// The spec versions flatnet speaks, oldest first; a config must name one exactly.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The config's `type`, the name of the plugin binary.
pub const PLUGIN_TYPE: &str = "flatnet-cni";
