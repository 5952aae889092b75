//! Every name and path of one lab.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// One lab, by name. Two labs with different names never share a namespace, file or port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lab {
    /// The lab's name (1-16 lowercase letters and digits, starting with a letter).
    pub name: String,
}

impl Lab {
    /// Lab names become part of namespace and file names: short, lowercase, alphanumeric.
    pub fn new(name: &str) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 16
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && name.as_bytes()[0].is_ascii_lowercase();
        if !ok {
            return Err(format!(
                "invalid lab name {name:?}: use 1-16 lowercase letters and digits, starting with a letter"
            ));
        }
        Ok(Self {
            name: name.to_string(),
        })
    }

    /// Prefix of every namespace this lab creates.
    pub fn netns_prefix(&self) -> String {
        format!("flatnet-{}-", self.name)
    }

    /// The namespace holding the fabric bridge every machine's underlay link hangs off.
    pub fn fabric_netns(&self) -> String {
        format!("{}fabric", self.netns_prefix())
    }

    /// The namespace of the `external` host: on the underlay, outside the cluster.
    pub fn external_netns(&self) -> String {
        format!("{}external", self.netns_prefix())
    }

    /// The namespace that plays machine `node`.
    pub fn node_netns(&self, node: &str) -> String {
        format!("{}{node}", self.netns_prefix())
    }

    /// A pod's namespace name, derived from namespace/name so every tool finds it again.
    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!(
            "{}pod-{:016x}",
            self.netns_prefix(),
            fnv64(&format!("{namespace}/{pod}"))
        )
    }

    /// Runtime state (pids, the etcd endpoint): gone after a reboot.
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from("/run/flatnet").join(&self.name)
    }

    /// Durable state (etcd data, IPAM, logs, CNI configs).
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from("/var/lib/flatnet").join(&self.name)
    }

    /// The file holding the etcd client URL of a running lab; written once etcd answers, so its
    /// presence means the lab is up.
    pub fn etcd_endpoint_file(&self) -> PathBuf {
        self.run_dir().join("etcd.endpoint")
    }

    /// The port the lab's API server listens on (loopback), written when it first binds.
    pub fn apiserver_port_file(&self) -> PathBuf {
        self.run_dir().join("apiserver.port")
    }

    /// The kubeconfig for the lab's API server (`flatnet lab kubeconfig` prints this path).
    pub fn kubeconfig(&self) -> PathBuf {
        self.run_dir().join("kubeconfig")
    }

    /// Durable state of one node (IPAM, agent state, CNI config, pod sandboxes).
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.data_dir().join("nodes").join(node)
    }

    /// The CNI network config directory of a node, as a runtime reads it.
    pub fn cni_conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni")
    }

    /// Logs of the lab's daemons, one `<daemon>.log` each.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir().join("logs")
    }

    /// A pod's own files: its containers' logs and its resolv.conf.
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.data_dir()
            .join("pods")
            .join(format!("{namespace}_{pod}"))
    }

    /// The marker every lab daemon carries on its command line, so `lab down` finds them.
    pub fn daemon_marker(&self) -> String {
        format!("--lab={}", self.name)
    }
}

/// Node names: `node1`, `node2`, ...
pub fn node_name(i: usize) -> String {
    format!("node{i}")
}

/// Addressing of a lab (design.md §3 "Lab addresses").
#[derive(Debug, Clone)]
pub struct Addressing {
    /// The network every machine's underlay link is on (172.20.0.0/24 by default).
    pub underlay: ipnet::Ipv4Net,
    /// The cluster's pod CIDR, split into node subnets (`podCIDR`, 10.244.0.0/16 by default).
    pub pod_cidr: ipnet::Ipv4Net,
    /// Prefix length of each node's subnet (`nodePrefixLength`, 24 by default).
    pub node_prefix: u8,
    /// Where clusterIPs come from (`serviceCIDR`, 10.96.0.0/12 by default).
    pub service_cidr: ipnet::Ipv4Net,
    /// LoadBalancer IPs, on the underlay (design.md §3: 172.20.0.240/28).
    pub lb_pool: ipnet::Ipv4Net,
}

impl Default for Addressing {
    fn default() -> Self {
        Self {
            underlay: ipnet::Ipv4Net::new(Ipv4Addr::new(172, 20, 0, 0), 24).unwrap_or_default(),
            pod_cidr: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            node_prefix: 24,
            service_cidr: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_default(),
            lb_pool: ipnet::Ipv4Net::new(Ipv4Addr::new(172, 20, 0, 240), 28).unwrap_or_default(),
        }
    }
}

impl Addressing {
    /// Node `i` (1-based) is `.10+i` on the underlay.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.underlay.network()) + 10 + i as u32)
    }

    /// The `external` host's underlay address: `.2`.
    pub fn external_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.underlay.network()) + 2)
    }

    /// The LoadBalancer pool must lie on the underlay and hold none of the addresses of the
    /// lab's `nodes` nodes or of `external`.
    pub fn check_lb_pool(&self, nodes: usize) -> Result<(), String> {
        let pool = self.lb_pool;
        if !self.underlay.contains(&pool) {
            return Err(format!(
                "--lb-pool {pool}: must lie inside the underlay {}",
                self.underlay
            ));
        }
        let mut hosts: Vec<Ipv4Addr> = (1..=nodes).map(|i| self.node_ip(i)).collect();
        hosts.push(self.external_ip());
        if let Some(ip) = hosts.into_iter().find(|ip| pool.contains(ip)) {
            return Err(format!(
                "--lb-pool {pool}: contains {ip}, an address of a lab machine"
            ));
        }
        Ok(())
    }
}

/// 64-bit FNV-1a hash of `s`: short stable names from long ones (pod namespaces).
pub fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_are_checked() {
        assert!(Lab::new("lab").is_ok());
        assert!(Lab::new("lab2").is_ok());
        for bad in ["", "Lab", "2lab", "a-b", "a/b", "abcdefghijklmnopq"] {
            assert!(Lab::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_netns_is_stable_and_distinct() {
        let lab = Lab::new("lab").expect("lab");
        assert_eq!(lab.pod_netns("default", "a"), lab.pod_netns("default", "a"));
        assert_ne!(lab.pod_netns("default", "a"), lab.pod_netns("other", "a"));
        assert!(
            lab.pod_netns("default", "a")
                .starts_with(&lab.netns_prefix())
        );
    }

    #[test]
    fn default_addresses_follow_the_design() {
        let a = Addressing::default();
        assert_eq!(a.node_ip(1), Ipv4Addr::new(172, 20, 0, 11));
        assert_eq!(a.external_ip(), Ipv4Addr::new(172, 20, 0, 2));
        assert_eq!(a.lb_pool.to_string(), "172.20.0.240/28");
        assert_eq!(a.check_lb_pool(3), Ok(()));
    }

    #[test]
    fn lb_pool_must_be_on_the_underlay_and_miss_the_machines() {
        let mut a = Addressing {
            lb_pool: "10.0.0.0/28".parse().expect("cidr"),
            ..Addressing::default()
        };
        let err = a.check_lb_pool(1).expect_err("off the underlay");
        assert!(
            err.contains("must lie inside the underlay 172.20.0.0/24"),
            "{err}"
        );
        a.lb_pool = "172.20.0.0/28".parse().expect("cidr");
        let err = a.check_lb_pool(1).expect_err("holds node1 and external");
        assert!(err.contains("contains 172.20.0.11"), "{err}");
    }
}
