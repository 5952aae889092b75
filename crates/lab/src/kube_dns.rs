//! The cluster DNS as `lab up` deploys it: a `kube-system` Deployment `kube-dns` (label
//! `k8s-app: kube-dns`, as kubeadm's CoreDNS) whose container is `flatnet dns`, started by the
//! kubelet inside the pod's network namespace. It binds port 53 (UDP and TCP) there, then moves
//! into etcd's namespace (named by etcd's pid file: etcd listens on the root namespace's
//! loopback, which pods cannot reach) before it starts any thread. The `kube-dns` Service holds
//! the tenth address of the service CIDR (10.96.0.10 by default), the address every pod's
//! resolv.conf names.

use serde_json::json;
use store::EtcdStore;

use crate::names::Lab;
use crate::topology::{LabError, UpOptions};

/// Namespace of the cluster DNS Deployment and Service.
pub const NAMESPACE: &str = "kube-system";
/// Name of the cluster DNS Deployment and Service, and the value of its `k8s-app` label.
pub const NAME: &str = "kube-dns";

/// The Deployment and Service, as a JSON `List` manifest.
pub fn manifest(
    flatnet: &std::path::Path,
    etcd_endpoint: &str,
    store_netns: &std::path::Path,
    cluster_ip: std::net::Ipv4Addr,
) -> String {
    let labels = json!({"k8s-app": NAME});
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        // The DNS server itself resolves with the node's file (as CoreDNS).
                        "dnsPolicy": "Default",
                        "containers": [{
                            "name": "dns",
                            "command": [
                                flatnet.display().to_string(),
                                "dns",
                                format!("--etcd={etcd_endpoint}"),
                                format!("--store-netns={}", store_netns.display()),
                                "--listen=0.0.0.0:53",
                            ],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            ],
                            // TCP listens only once the zone is loaded from the store, so a
                            // connection means it answers.
                            "readinessProbe": {"tcpSocket": {"port": 53}, "periodSeconds": 2},
                        }],
                    },
                },
            },
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": cluster_ip.to_string(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        },
    ]})
    .to_string()
}

/// Applies the kube-dns Deployment and Service (without waiting for them: `wait --converged`
/// waits for the pod like any other).
pub async fn apply(
    lab: &Lab,
    store: &EtcdStore,
    opts: &UpOptions,
    etcd_endpoint: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), LabError> {
    let ip = crate::resolv::cluster_dns_ip(opts.addressing.service_cidr);
    let text = manifest(
        &opts.bin_dir.join("flatnet"),
        etcd_endpoint,
        &lab.run_dir().join("etcd.pid"),
        ip,
    );
    let objects = model::parse_manifests(&text, NAME)
        .map_err(|e| LabError::Other(format!("kube-dns manifest: {e}")))?;
    crate::api::ensure_builtin_namespaces(store)
        .await
        .map_err(|e| LabError::Other(format!("namespaces: {e}")))?;
    crate::api::apply(store, objects)
        .await
        .map_err(|e| LabError::Other(format!("kube-dns: {e}")))?;
    progress(&format!(
        "cluster DNS applied ({NAMESPACE}/{NAME} at {ip}: Deployment + Service)"
    ));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn manifest_is_a_deployment_running_flatnet_dns_and_a_service_at_the_given_ip() {
        let text = manifest(
            std::path::Path::new("/opt/bin/flatnet"),
            "http://127.0.0.1:2379",
            std::path::Path::new("/run/flatnet/lab/etcd.pid"),
            "10.96.0.10".parse().unwrap(),
        );
        let objs = model::parse_manifests(&text, "kube-dns").unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].key(), "objects/deployments/kube-system/kube-dns");
        let c = &objs[0].value["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["command"][0], "/opt/bin/flatnet");
        assert_eq!(c["command"][1], "dns");
        assert_eq!(c["command"][2], "--etcd=http://127.0.0.1:2379");
        assert_eq!(c["command"][3], "--store-netns=/run/flatnet/lab/etcd.pid");
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], 53);
        assert_eq!(objs[1].key(), "objects/services/kube-system/kube-dns");
        assert_eq!(objs[1].value["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(objs[1].value["spec"]["ports"][0]["name"], "dns");
        assert_eq!(objs[1].value["spec"]["ports"][1]["protocol"], "TCP");
    }
}
