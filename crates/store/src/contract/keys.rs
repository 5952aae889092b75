//! Key names of design.md §4, relative to the store prefix (`/flatnet/`).

use model::Kind;

/// Network config: pod CIDR, per-node prefix length, backend, service CIDR.
pub const CONFIG: &str = "config";
/// Prefix of every Kubernetes object key.
pub const OBJECTS: &str = "objects/";
/// Prefix of every node subnet lease key.
pub const SUBNETS: &str = "subnets/";
/// Prefix of every agent status key.
pub const AGENTS: &str = "agents/";

/// Namespace segment used for cluster-scoped kinds.
pub const CLUSTER_SCOPE: &str = "_";

/// `objects/<plural>/<namespace or _>/<name>` (the one builder, shared with
/// [`model::Object::key`]); cluster-scoped kinds use [`CLUSTER_SCOPE`].
pub use model::object_key as object;

/// `objects/<plural>/`: list or watch every object of one kind.
pub fn kind_prefix(kind: Kind) -> String {
    format!("{OBJECTS}{}/", kind.plural())
}

/// An object key taken apart (`objects/<plural>/<namespace or _>/<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectKey<'a> {
    /// The kind its plural names.
    pub kind: Kind,
    /// The namespace segment (`_` for cluster-scoped kinds).
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
}

/// Takes an object key apart; None for other keys and unknown kinds.
pub fn parse_object(key: &str) -> Option<ObjectKey<'_>> {
    let rest = key.strip_prefix(OBJECTS)?;
    let (plural, rest) = rest.split_once('/')?;
    let (namespace, name) = rest.split_once('/')?;
    let kind = Kind::ALL.into_iter().find(|k| k.plural() == plural)?;
    (!namespace.is_empty() && !name.is_empty()).then_some(ObjectKey {
        kind,
        namespace,
        name,
    })
}

/// `objects/<plural>/` of each kind, owned (for [`crate::reflector::Reflector::new`], which
/// takes `&[&str]`: `let p = prefixes(&[..]); Reflector::new(s, &as_strs(&p))`).
pub fn prefixes(kinds: &[Kind]) -> Vec<String> {
    kinds.iter().map(|k| kind_prefix(*k)).collect()
}

/// The `&str`s of owned keys or prefixes.
pub fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `subnets/10.244.1.0-24` for `10.244.1.0/24` (the `/` would read as a path separator).
pub fn subnet(cidr: &str) -> String {
    format!("{SUBNETS}{}", cidr.replace('/', "-"))
}

/// The CIDR a subnet key names: `subnets/10.244.1.0-24` -> `10.244.1.0/24`; None for other keys.
pub fn subnet_cidr(key: &str) -> Option<String> {
    let rest = key.strip_prefix(SUBNETS)?;
    let (addr, len) = rest.rsplit_once('-')?;
    if addr.is_empty() || len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("{addr}/{len}"))
}

/// `agents/<node>`.
pub fn agent(node: &str) -> String {
    format!("{AGENTS}{node}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn namespaced_and_cluster_scoped_objects() {
        assert_eq!(
            object(Kind::Pod, Some("default"), "web-0"),
            "objects/pods/default/web-0"
        );
        assert_eq!(object(Kind::Node, None, "n1"), "objects/nodes/_/n1");
        assert!(object(Kind::Pod, Some("default"), "web-0").starts_with(&kind_prefix(Kind::Pod)));
        assert_eq!(
            format!("{CLUSTER_SCOPE}"),
            object(Kind::Node, None, "n")
                .split('/')
                .nth(2)
                .unwrap_or_default()
        );
    }

    #[test]
    fn object_keys_parse_back_and_other_keys_do_not() {
        let key = object(Kind::Service, Some("web"), "api");
        assert_eq!(
            parse_object(&key),
            Some(ObjectKey {
                kind: Kind::Service,
                namespace: "web",
                name: "api"
            })
        );
        let node = object(Kind::Node, None, "n1");
        assert_eq!(
            parse_object(&node).map(|k| k.namespace),
            Some(CLUSTER_SCOPE)
        );
        for other in [
            "subnets/10.0.0.0-24",
            "objects/widgets/a/b",
            "objects/pods/a",
            "objects/pods//x",
        ] {
            assert_eq!(parse_object(other), None, "{other}");
        }
    }

    #[test]
    fn subnet_key_round_trips_v4_and_v6() {
        assert_eq!(subnet("10.244.1.0/24"), "subnets/10.244.1.0-24");
        assert_eq!(
            subnet_cidr("subnets/10.244.1.0-24").as_deref(),
            Some("10.244.1.0/24")
        );
        assert_eq!(
            subnet_cidr(&subnet("fd00:10:244:1::/64")).as_deref(),
            Some("fd00:10:244:1::/64")
        );
        assert_eq!(subnet_cidr("agents/n1"), None);
        assert_eq!(subnet_cidr("subnets/garbage"), None);
    }

    #[test]
    fn agent_and_config_keys() {
        assert_eq!(agent("node-1"), "agents/node-1");
        assert_eq!(CONFIG, "config");
    }
}
