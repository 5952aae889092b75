//! L4 protocols as Kubernetes names them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A protocol name that is not TCP, UDP or SCTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported protocol {0:?}: supported values: \"TCP\", \"UDP\", \"SCTP\"")]
pub struct UnknownProtocol(pub String);

/// An L4 protocol a Service port or a NetworkPolicy can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// `TCP`.
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// IANA protocol number, as `meta l4proto` carries it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The `nft` spelling: `tcp`, `udp`, `sctp`.
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Accepts the Kubernetes spelling, case-insensitively (`tcp` as typed on a command line).
    fn from_str(s: &str) -> Result<Protocol, UnknownProtocol> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(UnknownProtocol(s.to_string())),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
