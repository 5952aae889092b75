//! The pod's `/etc/resolv.conf`, as the kubelet writes it (`pkg/kubelet/network/dns`): the
//! cluster DNS, the search path `<ns>.svc.<zone> svc.<zone> <zone>` and `ndots:5` for
//! `dnsPolicy: ClusterFirst` (the default), the node's file for `Default` (and for
//! `ClusterFirst` on the host network), only `dnsConfig` for `None`; `dnsConfig` merges in.
//! The lab gives each container the file through a bind mount in its own mount namespace
//! ([`crate::shell::own_resolv_conf`]); the host's file is never touched.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use model::Pod;
use serde_json::Value;

/// The kubelet's limits (`validation.MaxDNSNameservers`, `MaxDNSSearchPaths`,
/// `MaxDNSSearchListChars`).
pub const MAX_NAMESERVERS: usize = 3;
/// Most search domains the kubelet keeps.
pub const MAX_SEARCH_PATHS: usize = 32;
/// Most characters of the search list the kubelet keeps (domains joined by spaces).
pub const MAX_SEARCH_CHARS: usize = 2048;

/// The cluster domain the lab's DNS serves.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The kube-dns Service address: the tenth address of the service CIDR (kubeadm's choice,
/// reserved by the lab's allocator).
pub fn cluster_dns_ip(service_cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(service_cidr.network()).wrapping_add(10))
}

/// The node's own resolver settings (from its `/etc/resolv.conf`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostResolv {
    /// `nameserver` addresses, in order.
    pub nameservers: Vec<String>,
    /// The search domains (of the last `search` or `domain` line).
    pub searches: Vec<String>,
    /// `options` entries (`ndots:2`, `timeout:1`, ...), in order.
    pub options: Vec<String>,
}

impl HostResolv {
    /// Parses a resolv.conf (later `search`/`domain` lines replace earlier ones, as glibc does).
    pub fn parse(text: &str) -> Self {
        let mut h = HostResolv::default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => h.nameservers.extend(f.next().map(str::to_string)),
                Some("search" | "domain") => h.searches = f.map(str::to_string).collect(),
                Some("options") => h.options.extend(f.map(str::to_string)),
                _ => {}
            }
        }
        h
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The resolv.conf for `pod`, or `None` when the pod keeps the node's file (`dnsPolicy:
/// Default`, or `ClusterFirst` on the host network, or no cluster DNS known).
pub fn render(pod: &Pod, cluster_dns: Option<Ipv4Addr>, host: &HostResolv) -> Option<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = pod
        .spec
        .extra
        .get("dnsPolicy")
        .and_then(Value::as_str)
        .unwrap_or("ClusterFirst");
    let host_net = pod.spec.host_network == Some(true);
    let config = pod.spec.extra.get("dnsConfig").cloned().unwrap_or_default();
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match (policy, host_net, cluster_dns) {
            ("None", _, _) => (Vec::new(), Vec::new(), Vec::new()),
            ("ClusterFirst", false, Some(ip)) | ("ClusterFirstWithHostNet", _, Some(ip)) => (
                vec![IpAddr::V4(ip).to_string()],
                [
                    format!("{ns}.svc.{CLUSTER_DOMAIN}"),
                    format!("svc.{CLUSTER_DOMAIN}"),
                    CLUSTER_DOMAIN.to_string(),
                ]
                .into_iter()
                .chain(host.searches.iter().cloned())
                .collect(),
                vec!["ndots:5".to_string()],
            ),
            _ => return None,
        };
    servers.extend(strings(&config["nameservers"]));
    searches.extend(strings(&config["searches"]));
    // Pod options override same-named ones.
    if let Some(opts) = config["options"].as_array() {
        for o in opts {
            let Some(name) = o["name"].as_str() else {
                continue;
            };
            options.retain(|x| x.split(':').next() != Some(name));
            options.push(match o["value"].as_str() {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    searches.retain(|s| seen.insert(s.clone()));
    servers.truncate(MAX_NAMESERVERS);
    let mut kept = Vec::new();
    let mut chars = 0;
    for s in searches {
        if kept.len() == MAX_SEARCH_PATHS
            || chars + s.len() + usize::from(!kept.is_empty()) > MAX_SEARCH_CHARS
        {
            break;
        }
        chars += s.len() + usize::from(!kept.is_empty());
        kept.push(s);
    }
    let mut out = String::new();
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !kept.is_empty() {
        out.push_str(&format!("search {}\n", kept.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    const DNS: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 96, 0, 10));

    #[test]
    fn cluster_first_gets_the_cluster_dns_search_path_and_ndots_5() {
        let text = render(&pod(json!({"containers": []})), DNS, &HostResolv::default()).unwrap();
        assert_eq!(
            text,
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn the_tenth_address_of_the_service_cidr_is_the_cluster_dns() {
        assert_eq!(
            cluster_dns_ip("10.96.0.0/12".parse().unwrap()),
            Ipv4Addr::new(10, 96, 0, 10)
        );
    }

    #[test]
    fn host_search_domains_follow_the_cluster_ones_without_duplicates() {
        let host = HostResolv::parse("nameserver 1.1.1.1\nsearch corp.example cluster.local\n");
        assert_eq!(host.nameservers, vec!["1.1.1.1"]);
        let text = render(&pod(json!({})), DNS, &host).unwrap();
        assert!(
            text.contains(
                "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n"
            ),
            "{text}"
        );
        assert!(!text.contains("1.1.1.1"), "only the cluster DNS: {text}");
    }

    #[test]
    fn default_policy_and_host_network_keep_the_node_file() {
        assert_eq!(
            render(
                &pod(json!({"dnsPolicy": "Default"})),
                DNS,
                &HostResolv::default()
            ),
            None
        );
        assert_eq!(
            render(
                &pod(json!({"hostNetwork": true})),
                DNS,
                &HostResolv::default()
            ),
            None
        );
        assert!(
            render(
                &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
                DNS,
                &HostResolv::default()
            )
            .is_some()
        );
        assert_eq!(render(&pod(json!({})), None, &HostResolv::default()), None);
    }

    #[test]
    fn dns_config_merges_and_pod_options_override() {
        let p = pod(json!({"dnsConfig": {
            "nameservers": ["192.0.2.53"], "searches": ["extra.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        let text = render(&p, DNS, &HostResolv::default()).unwrap();
        assert_eq!(
            text,
            "nameserver 10.96.0.10\nnameserver 192.0.2.53\nsearch shop.svc.cluster.local svc.cluster.local cluster.local extra.example\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn none_policy_uses_only_dns_config_within_the_kubelet_limits() {
        let searches: Vec<String> = (0..40).map(|i| format!("s{i}.example")).collect();
        let p = pod(json!({"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"],
            "searches": searches}}));
        let text = render(&p, DNS, &HostResolv::default()).unwrap();
        assert_eq!(text.matches("nameserver").count(), MAX_NAMESERVERS);
        assert!(!text.contains("10.96.0.10"));
        let search = text.lines().find(|l| l.starts_with("search")).unwrap();
        assert_eq!(search.split_whitespace().count() - 1, MAX_SEARCH_PATHS);
        assert!(!text.contains("options"));
    }
}
