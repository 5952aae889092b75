//! Discovery documents (pure), built from [`model::Kind`]: a kind the model knows is served
//! and discovered at once. Shapes as `../shared/reference/kube-api.md` measured them.

use model::Kind;
use serde_json::{Value, json};

/// The Kubernetes minor version the server says it is. The image's `kubectl` dispatcher runs
/// `kubectl.1.<minor>` for it; 33 is the newest kubectl present.
pub const MINOR: &str = "33";

/// `GET /version`.
pub fn version() -> Value {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    json!({
        "major": "1",
        "minor": MINOR,
        "gitVersion": format!("v1.{MINOR}.0"),
        "gitCommit": "flatnet-lab",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": format!("linux/{arch}"),
    })
}

/// `GET /api`: the core group's versions; `server` is the address clients reach us at.
pub fn api(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

/// The named groups' versions (`apps/v1`, ...), each once, sorted.
pub fn group_versions() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Kind::ALL
        .iter()
        .map(|k| k.api_version())
        .filter(|gv| gv.contains('/'))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `GET /apis`: an `APIGroupList` with every named group (one version each).
pub fn apis() -> Value {
    let groups: Vec<Value> = group_versions()
        .into_iter()
        .filter_map(|gv| {
            let (group, version) = gv.split_once('/')?;
            let v = json!({"groupVersion": gv, "version": version});
            Some(json!({"name": group, "versions": [v.clone()], "preferredVersion": v}))
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// kubectl's short names of a kind (`po`, `svc`, ...), as upstream declares them.
pub fn short_names(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Namespace => &["ns"],
        Kind::Pod => &["po"],
        Kind::Service => &["svc"],
        Kind::NetworkPolicy => &["netpol"],
        Kind::Ingress => &["ing"],
        Kind::Deployment => &["deploy"],
        Kind::Node => &["no"],
        Kind::IngressClass | Kind::Secret | Kind::EndpointSlice => &[],
    }
}

/// The verbs served for every kind (reads and delete, in this slice).
pub const VERBS: [&str; 4] = ["delete", "get", "list", "watch"];

/// `GET /api/v1` or `/apis/<group>/<version>`: an `APIResourceList`; None for a group version
/// no kind is in.
pub fn resources(group_version: &str) -> Option<Value> {
    let resources: Vec<Value> = Kind::ALL
        .into_iter()
        .filter(|k| k.api_version() == group_version)
        .map(|k| {
            let mut r = json!({
                "name": k.plural(),
                "singularName": k.as_str().to_ascii_lowercase(),
                "namespaced": k.namespaced(),
                "kind": k.as_str(),
                "verbs": VERBS,
            });
            if !short_names(k).is_empty() {
                r["shortNames"] = json!(short_names(k));
            }
            // kubectl get all: what upstream puts in the `all` category.
            if matches!(k, Kind::Pod | Kind::Service | Kind::Deployment) {
                r["categories"] = json!(["all"]);
            }
            r
        })
        .collect();
    (!resources.is_empty()).then(|| {
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn version_names_a_kubectl_minor_the_dispatcher_has() {
        let v = version();
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], MINOR);
        assert_eq!(v["gitVersion"], format!("v1.{MINOR}.0"));
    }

    #[test]
    fn apis_lists_each_named_group_once_with_its_preferred_version() {
        let a = apis();
        assert_eq!(a["kind"], "APIGroupList");
        let names: Vec<&str> = a["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["apps", "discovery.k8s.io", "networking.k8s.io"]);
        assert_eq!(
            a["groups"][0]["preferredVersion"]["groupVersion"],
            "apps/v1"
        );
        assert_eq!(a["groups"][0]["versions"][0]["version"], "v1");
    }

    #[test]
    fn resource_lists_carry_scope_kind_verbs_and_short_names() {
        let core = resources("v1").unwrap();
        assert_eq!(core["kind"], "APIResourceList");
        assert_eq!(core["groupVersion"], "v1");
        let pods = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods")
            .unwrap();
        assert_eq!(pods["kind"], "Pod");
        assert_eq!(pods["singularName"], "pod");
        assert_eq!(pods["namespaced"], true);
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["verbs"], json!(["delete", "get", "list", "watch"]));
        assert_eq!(pods["categories"], json!(["all"]));
        let nodes = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "nodes")
            .unwrap();
        assert_eq!(nodes["namespaced"], false);
        let net = resources("networking.k8s.io/v1").unwrap();
        let names: Vec<&str> = net["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["networkpolicies", "ingresses", "ingressclasses"]);
        assert!(resources("batch/v1").is_none());
        assert_eq!(
            resources("discovery.k8s.io/v1").unwrap()["resources"][0]["name"],
            "endpointslices"
        );
    }

    #[test]
    fn every_group_version_apis_lists_has_a_resource_list() {
        for gv in group_versions() {
            assert!(resources(gv).is_some(), "{gv}");
        }
    }
}
