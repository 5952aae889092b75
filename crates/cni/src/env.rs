//! The `CNI_*` environment variables, validated per verb ([SPEC] §2 "Parameters", cni.md §1.2).

use std::fmt;
use std::path::PathBuf;

use crate::{CniError, code};

/// The verb in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `ADD`: attach a container to the network.
    Add,
    /// `DEL`: detach it; must succeed when already gone.
    Del,
    /// `CHECK`: verify an attachment is as ADD left it.
    Check,
    /// `GC`: release what belongs to attachments not in the valid list.
    Gc,
    /// `STATUS`: whether the plugin can serve ADD now.
    Status,
    /// `VERSION`: report the supported spec versions.
    Version,
}

impl Command {
    /// The exact, upper-case spelling the spec uses (`"ADD"`); anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }

    /// The spec's spelling (`"ADD"`), the inverse of [`Command::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Gc => "GC",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
        }
    }

    /// Whether the verb works on one attachment (container, netns, ifname, CNI_ARGS).
    fn per_attachment(self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }

    /// The table in cni.md §1.2: which variables the verb cannot do without.
    fn requires(self, var: &str) -> bool {
        match var {
            CONTAINERID | IFNAME => self.per_attachment(),
            NETNS => matches!(self, Self::Add | Self::Check),
            PATH => self == Self::Gc,
            _ => false,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const COMMAND: &str = "CNI_COMMAND";
const CONTAINERID: &str = "CNI_CONTAINERID";
const NETNS: &str = "CNI_NETNS";
const IFNAME: &str = "CNI_IFNAME";
const ARGS: &str = "CNI_ARGS";
const PATH: &str = "CNI_PATH";

/// Linux `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME: usize = 15;

/// The validated environment of one plugin call.
///
/// Variables a verb does not use are not read: GC, STATUS and VERSION always have `None` for
/// `container_id`, `netns` and `ifname` and no `args`; VERSION also has no `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`: required for ADD, DEL and CHECK.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: the container's network namespace path; required for ADD and CHECK, optional
    /// for DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: the interface to create inside the namespace; required for ADD, DEL and CHECK.
    pub ifname: Option<String>,
    /// `CNI_ARGS` split into `K=V` pairs, in order; which keys are allowed is decided by
    /// [`parse_conf`](crate::parse_conf), which knows the verb's leniency.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH` split on `:`, empty entries dropped.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH through
    /// `get` and validates them per verb.
    ///
    /// - `Ok(None)` when CNI_COMMAND is absent or empty: the caller prints its "about" text
    ///   and exits 0.
    /// - Unknown command: code 4 `unknown CNI_COMMAND: X`.
    /// - Required variables absent (or, for CNI_NETNS and CNI_PATH, empty): code 4
    ///   `required env variables [A,B] missing`, all of them named at once.
    /// - Empty CNI_CONTAINERID: code 3 `missing containerID`; one not matching
    ///   `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`: code 4 with the value as details.
    /// - CNI_IFNAME empty, longer than 15 bytes, `.` or `..`, or holding `/`, `:`, whitespace
    ///   or NUL: code 4 with the value as details.
    /// - A CNI_ARGS entry without `=` or with an empty key: code 4.
    ///
    /// CNI_NETNS is optional for DEL (an empty value counts as absent).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Env>, CniError> {
        let Some(cmd) = get(COMMAND).filter(|c| !c.is_empty()) else {
            return Ok(None);
        };
        let command = Command::parse(&cmd).ok_or_else(|| {
            CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND: {cmd}"))
        })?;
        let read = |var: &str| -> Option<String> {
            let used = match var {
                PATH => command != Command::Version,
                _ => command.per_attachment(),
            };
            if used { get(var) } else { None }
        };
        let container_id = read(CONTAINERID);
        let netns = read(NETNS).filter(|s| !s.is_empty());
        let ifname = read(IFNAME);
        let args = read(ARGS);
        let path = read(PATH).filter(|s| !s.is_empty());

        let present = [
            (CONTAINERID, container_id.is_some()),
            (NETNS, netns.is_some()),
            (IFNAME, ifname.is_some()),
            (PATH, path.is_some()),
        ];
        let missing: Vec<&str> = present
            .iter()
            .filter(|(var, here)| !here && command.requires(var))
            .map(|(var, _)| *var)
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        if let Some(id) = &container_id {
            validate_container_id(id)?;
        }
        if let Some(name) = &ifname {
            validate_ifname(name)?;
        }
        Ok(Some(Env {
            command,
            container_id,
            netns: netns.map(PathBuf::from),
            ifname,
            args: args
                .as_deref()
                .map(parse_args)
                .transpose()?
                .unwrap_or_default(),
            path: path
                .iter()
                .flat_map(|p| p.split(':'))
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        }))
    }

    /// The value of the first `CNI_ARGS` pair named `key` (e.g. `K8S_POD_NAME`).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the spec's pattern for container IDs and network names.
pub(crate) fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "missing containerID",
        ));
    }
    if !is_valid_name(id) {
        return Err(
            CniError::new(code::INVALID_ENV, "invalid characters in containerID").with_details(id),
        );
    }
    Ok(())
}

/// The reference `utils.ValidateInterfaceName`, plus NUL, which no kernel name can hold.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.is_empty() {
        "interface name is empty"
    } else if name.len() > MAX_IFNAME {
        "interface name is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "interface name is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        "interface name contains / or : or whitespace characters"
    } else {
        return Ok(());
    };
    Err(CniError::new(code::INVALID_ENV, problem).with_details(name))
}

/// `K=V;K2=V2`. Empty entries (a trailing `;`) are skipped; the value may itself hold `=`.
fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(CniError::new(code::INVALID_ENV, "invalid CNI_ARGS pair").with_details(pair)),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn args_split_into_pairs_keeping_order() {
        let got = parse_args("IgnoreUnknown=1;K8S_POD_NAME=web-0;X=a=b;").unwrap();
        let want = [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAME", "web-0"),
            ("X", "a=b"),
        ];
        assert_eq!(got.len(), want.len());
        for ((k, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
    }

    #[test]
    fn args_pair_without_key_or_equals_is_rejected() {
        for bad in ["novalue", "=v", "A=1;junk"] {
            let e = parse_args(bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV, "{bad}");
        }
    }

    #[test]
    fn names_follow_the_spec_pattern() {
        for ok in ["a", "0", "ctr-1_a.b", "A9"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "é", "a\n"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn command_round_trips_through_its_spelling() {
        use Command::*;
        for c in [Add, Del, Check, Gc, Status, Version] {
            assert_eq!(Command::parse(c.as_str()), Some(c));
        }
        assert_eq!(Command::parse("add"), None);
    }
}
