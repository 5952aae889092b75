//! `lab up`: the machines and their cabling. A fabric namespace holds the underlay bridge;
//! every node and the `external` host hang off it with a veth. Then etcd, the network config,
//! one agent and kubelet per node, the controller and the API server (with its kubeconfig).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::names::{Addressing, Lab, node_name};

use crate::daemons::{self, Daemon};
use crate::{cleanup, shell};

/// Why a lab command failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// `lab up` found the named lab already running.
    #[error("lab {0} is already up (run `flatnet lab down` first)")]
    AlreadyUp(String),
    /// The named lab is not running (it has no etcd endpoint file).
    #[error("lab {0} is not up (run `flatnet lab up`)")]
    NotUp(String),
    /// A host command (`ip`, a daemon) failed.
    #[error("{0}")]
    Shell(#[from] shell::ShellError),
    /// The lab's etcd failed or refused a request.
    #[error("etcd: {0}")]
    Store(#[from] store::StoreError),
    /// Anything else, as a message naming what failed.
    #[error("{0}")]
    Other(String),
}

/// What `lab up` builds.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Number of nodes (`node1` .. `nodeN`).
    pub nodes: usize,
    /// The agents' route backend, `backend` in the network config: `host-gw` or `vxlan`.
    pub backend: String,
    /// The lab's address ranges.
    pub addressing: Addressing,
    /// Directory holding `flatnet` and `flatnet-cni`.
    pub bin_dir: PathBuf,
}

/// Network config stored under `config` (design.md §4).
pub fn network_config(opts: &UpOptions) -> Result<store::contract::NetworkConfig, LabError> {
    let backend = serde_json::from_value(json!(opts.backend)).map_err(|_| {
        LabError::Other(format!(
            "unknown backend {:?} (host-gw or vxlan)",
            opts.backend
        ))
    })?;
    Ok(store::contract::NetworkConfig {
        pod_cidr: opts.addressing.pod_cidr,
        node_prefix_length: opts.addressing.node_prefix,
        service_cidr: Some(opts.addressing.service_cidr),
        backend,
        load_balancer_pool: Some(opts.addressing.lb_pool),
    })
}

/// File name of the CNI network config list the agent writes into each node's CNI config
/// directory (and the kubelet reads).
pub const CONFLIST_NAME: &str = "10-flatnet.conflist";

/// Each machine's link to the fabric (in node and external namespaces), and so every node
/// agent's underlay device.
pub const UNDERLAY_DEV: &str = "eth0";

/// Builds the lab. `progress` gets one line per step. On failure everything made so far is
/// removed again.
pub async fn up(
    lab: &Lab,
    opts: &UpOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), LabError> {
    if lab.etcd_endpoint_file().exists() {
        return Err(LabError::AlreadyUp(lab.name.clone()));
    }
    // Checked before anything is made: a config the agents would refuse is refused here.
    network_config(opts)?
        .validate()
        .map_err(|e| LabError::Other(format!("--pod-cidr/--node-prefix: {e}")))?;
    if cleanup::anything_left(lab) {
        progress("removing leftovers of an earlier lab with this name");
        let r = cleanup::remove_all(lab);
        if !r.errors.is_empty() {
            return Err(LabError::Other(format!(
                "cannot remove leftovers: {}",
                r.errors.join("; ")
            )));
        }
    }
    let subnets = opts
        .addressing
        .pod_cidr
        .subnets(opts.addressing.node_prefix)
        .map(|s| s.count())
        .unwrap_or(0);
    if opts.nodes == 0 || opts.nodes > subnets || opts.nodes > 200 {
        return Err(LabError::Other(format!(
            "--nodes {}: must be between 1 and the number of /{} subnets in {} (at most 200)",
            opts.nodes, opts.addressing.node_prefix, opts.addressing.pod_cidr
        )));
    }
    opts.addressing
        .check_lb_pool(opts.nodes)
        .map_err(LabError::Other)?;
    let result = build(lab, opts, progress).await;
    if result.is_err() {
        // Show what the daemons said before their logs go with the rest.
        for entry in std::fs::read_dir(lab.log_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            if !tail.is_empty() {
                progress(&format!("{}:", entry.file_name().to_string_lossy()));
                for l in tail.into_iter().rev() {
                    progress(&format!("  {l}"));
                }
            }
        }
        let _ = cleanup::remove_all(lab);
    }
    result
}

async fn build(
    lab: &Lab,
    opts: &UpOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), LabError> {
    let start = Instant::now();
    for d in [lab.run_dir(), lab.data_dir(), lab.log_dir()] {
        std::fs::create_dir_all(&d)
            .map_err(|e| LabError::Other(format!("create {}: {e}", d.display())))?;
    }
    // etcd takes the longest to come up: the namespaces are built meanwhile.
    let (etcd, wired) = std::thread::scope(|scope| {
        let etcd = scope.spawn(|| store::EtcdProcess::start_in_own_session(&lab.data_dir()));
        let wired = wire(lab, opts);
        (etcd.join(), wired)
    });
    let etcd = etcd.map_err(|_| LabError::Other("etcd start panicked".into()))??;
    let endpoint = etcd.endpoint.clone();
    daemons::record_etcd_ports(lab, etcd.client_port(), etcd.peer_port())?;
    let pid = etcd.detach();
    daemons::record_pid(lab, &Daemon::Etcd, pid)?;
    progress(&format!("etcd started on {endpoint} (pid {pid})"));
    wired?;
    progress(&format!(
        "{} node namespace(s), fabric and external built ({} ms)",
        opts.nodes,
        start.elapsed().as_millis()
    ));

    let store =
        store::EtcdStore::connect(std::slice::from_ref(&endpoint), crate::client::PREFIX).await?;
    store::contract::write_config(&store, &network_config(opts)?)
        .await
        .map_err(|e| LabError::Other(e.to_string()))?;
    // The endpoint file marks the lab as up; written once the store answers.
    std::fs::write(lab.etcd_endpoint_file(), &endpoint).map_err(|e| {
        LabError::Other(format!("write {}: {e}", lab.etcd_endpoint_file().display()))
    })?;

    let flatnet = opts.bin_dir.join("flatnet");
    for i in 1..=opts.nodes {
        let node = node_name(i);
        // The agent leases the node's pod CIDR and writes the node's CNI config; the
        // kubelet waits for that config, as a real kubelet waits for its network plugin.
        daemons::spawn(
            lab,
            &Daemon::Agent(node.clone()),
            &flatnet,
            &[
                "agent".into(),
                lab.daemon_marker(),
                format!("--node={node}"),
                format!("--etcd={endpoint}"),
                format!("--netns={}", shell::netns_path(&lab.node_netns(&node))),
                format!("--underlay-dev={UNDERLAY_DEV}"),
                format!(
                    "--cni-conf={}",
                    lab.cni_conf_dir(&node).join(CONFLIST_NAME).display()
                ),
                format!("--ipam-dir={}", lab.node_dir(&node).join("ipam").display()),
                format!(
                    "--state-dir={}",
                    lab.node_dir(&node).join("agent").display()
                ),
            ],
        )?;
        daemons::spawn(
            lab,
            &Daemon::Kubelet(node.clone()),
            &flatnet,
            &[
                "lab".into(),
                "kubelet".into(),
                lab.daemon_marker(),
                format!("--node={node}"),
                format!("--node-ip={}", opts.addressing.node_ip(i)),
            ],
        )?;
    }
    daemons::spawn(
        lab,
        &Daemon::Controller,
        &opts.bin_dir.join("flatnet"),
        &["lab".into(), "controller".into(), lab.daemon_marker()],
    )?;
    daemons::spawn(
        lab,
        &Daemon::ApiServer,
        &opts.bin_dir.join("flatnet"),
        &["lab".into(), "apiserver".into(), lab.daemon_marker()],
    )?;
    progress(
        "agents, kubelets, controller and API server started; waiting for nodes to lease subnets and register",
    );
    wait_nodes_ready(&store, opts.nodes, Duration::from_secs(30), progress).await?;
    let port = crate::apiserver::wait_ready_and_write_kubeconfig(lab, Duration::from_secs(10))
        .await
        .map_err(|e| LabError::Other(e.to_string()))?;
    progress(&format!(
        "API server on http://127.0.0.1:{port}; kubeconfig {}",
        lab.kubeconfig().display()
    ));
    crate::kube_dns::apply(lab, &store, opts, &endpoint, progress).await?;
    apply_ingress_gateway(lab, &store, opts, &endpoint, progress).await?;
    progress(&format!(
        "lab {} is up with {} node(s) in {:.1} s",
        lab.name,
        opts.nodes,
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Namespace, name and label of the ingress gateway's Deployment and Service.
pub const INGRESS_GATEWAY_NAMESPACE: &str = "kube-system";
/// Name of the ingress gateway's Deployment and Service, and its `app.kubernetes.io/name` label.
pub const INGRESS_GATEWAY: &str = "ingress-gateway";

/// The ingress gateway as the lab runs it: the IngressClass `flatnet` (the cluster's default
/// class), a one-replica Deployment whose container is
/// `flatnet ingress` (started by the kubelet in the pod's namespace; its store client moves to
/// etcd's namespace, named by etcd's pid file, where etcd listens on loopback), and a LoadBalancer Service for ports
/// 80 and 443 (a NodePort on every node and an address from the pool).
pub fn ingress_gateway_manifest(
    flatnet: &std::path::Path,
    etcd_endpoint: &str,
    store_netns: &std::path::Path,
) -> String {
    let (ns, name) = (INGRESS_GATEWAY_NAMESPACE, INGRESS_GATEWAY);
    let labels = json!({"app.kubernetes.io/name": name});
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": model::INGRESS_CLASS,
                         "annotations": {model::DEFAULT_CLASS_ANNOTATION: "true"}},
            "spec": {"controller": model::INGRESS_CONTROLLER},
        },
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{
                        "name": "gateway",
                        "command": [
                            flatnet.display().to_string(),
                            "ingress",
                            format!("--etcd={etcd_endpoint}"),
                            format!("--store-netns={}", store_netns.display()),
                            "--workers=1",
                            format!("--publish-service={ns}/{name}"),
                        ],
                        "ports": [
                            {"name": "http", "containerPort": 80},
                            {"name": "https", "containerPort": 443},
                        ],
                    }]},
                },
            },
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "type": "LoadBalancer",
                "selector": labels,
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "https", "port": 443, "targetPort": "https"},
                ],
            },
        },
    ]});
    list.to_string()
}

async fn apply_ingress_gateway(
    lab: &Lab,
    store: &store::EtcdStore,
    opts: &UpOptions,
    etcd_endpoint: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), LabError> {
    // etcd's pid file names the namespace where etcd listens (the gateway reads it at start,
    // so an etcd restarted meanwhile is still found).
    let text = ingress_gateway_manifest(
        &opts.bin_dir.join("flatnet"),
        etcd_endpoint,
        &lab.run_dir().join("etcd.pid"),
    );
    let objects = model::parse_manifests(&text, "ingress-gateway")
        .map_err(|e| LabError::Other(format!("ingress gateway manifest: {e}")))?;
    crate::api::ensure_builtin_namespaces(store)
        .await
        .map_err(|e| LabError::Other(format!("namespaces: {e}")))?;
    crate::api::apply(store, objects)
        .await
        .map_err(|e| LabError::Other(format!("ingress gateway: {e}")))?;
    progress(&format!(
        "ingress gateway applied (IngressClass {}, {INGRESS_GATEWAY_NAMESPACE}/{INGRESS_GATEWAY}: Deployment + LoadBalancer Service)",
        model::INGRESS_CLASS
    ));
    Ok(())
}

/// Namespaces, links and addresses, with `ip` (a batch per namespace).
fn wire(lab: &Lab, opts: &UpOptions) -> Result<(), LabError> {
    let fabric = lab.fabric_netns();
    let prefix = opts.addressing.underlay.prefix_len();
    shell::ip(["netns", "add", &fabric])?;
    // The bridge before its ports: a port whose ifindex equals its veth peer's would wait for
    // the kernel's next batch of non-urgent link events (up to 1 s) before it forwards.
    shell::ip_batch_in(
        &fabric,
        &[
            "link set lo up".into(),
            "link add br0 type bridge".into(),
            "link set br0 up".into(),
        ],
    )?;
    let mut fabric_cmds = Vec::new();
    let mut hosts: Vec<(String, Ipv4Addr)> = (1..=opts.nodes)
        .map(|i| (lab.node_netns(&node_name(i)), opts.addressing.node_ip(i)))
        .collect();
    hosts.push((lab.external_netns(), opts.addressing.external_ip()));
    for (i, (ns, ip)) in hosts.iter().enumerate() {
        shell::ip(["netns", "add", ns])?;
        let port = format!("p{}", i + 1);
        // Both ends are born in their namespaces: nothing appears in the root namespace.
        shell::ip([
            "link",
            "add",
            UNDERLAY_DEV,
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &fabric,
        ])?;
        fabric_cmds.push(format!("link set {port} master br0"));
        fabric_cmds.push(format!("link set {port} up"));
        shell::ip_batch_in(
            ns,
            &[
                "link set lo up".into(),
                format!("addr add {ip}/{prefix} dev {UNDERLAY_DEV}"),
                format!("link set {UNDERLAY_DEV} up"),
            ],
        )?;
        let nsf = datapath::NetNs::open(shell::netns_path(ns))
            .map_err(|e| LabError::Other(e.to_string()))?;
        nsf.run(|| datapath::sysctl::ensure("net/ipv4/ip_forward", "1"))
            .map_err(|e| LabError::Other(e.to_string()))?
            .map_err(|e| LabError::Other(e.to_string()))?;
    }
    shell::ip_batch_in(&fabric, &fabric_cmds)?;
    wait_bridge_forwarding(&fabric, hosts.len())
}

/// The kernel turns a new bridge port to forwarding only once it has processed the port's
/// carrier event, which it batches for up to a second; until then the port drops frames.
/// Wait for that, so the lab is usable the moment `lab up` returns.
fn wait_bridge_forwarding(fabric: &str, ports: usize) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = shell::run(Command::new("bridge").args(["-n", fabric, "-j", "link", "show"]))?;
        let links: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
        let forwarding = links.iter().filter(|l| l["state"] == "forwarding").count();
        if forwarding >= ports {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Other(format!(
                "only {forwarding} of {ports} fabric bridge ports forward after 5 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait_nodes_ready(
    store: &store::EtcdStore,
    want: usize,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), LabError> {
    use store::Store;
    let deadline = Instant::now() + timeout;
    let mut seen = 0;
    loop {
        let (nodes, _) = store
            .list(&store::keys::kind_prefix(model::Kind::Node))
            .await?;
        let ready = nodes
            .iter()
            .filter_map(|kv| kv.decode::<serde_json::Value>().ok())
            .filter(crate::api::is_ready)
            .count();
        if ready != seen {
            progress(&format!("{ready}/{want} node(s) ready"));
            seen = ready;
        }
        if ready >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Other(format!(
                "only {ready} of {want} nodes registered within {timeout:?}; see logs in the lab's log directory"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `lab down`: removes everything, also after a crash. Idempotent.
pub fn down(lab: &Lab) -> cleanup::Report {
    cleanup::remove_all(lab)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn ingress_gateway_manifest_is_a_default_class_a_deployment_and_a_load_balancer() {
        let text = ingress_gateway_manifest(
            std::path::Path::new("/opt/flatnet/bin/flatnet"),
            "http://127.0.0.1:2379",
            std::path::Path::new("/run/flatnet/lab/etcd.pid"),
        );
        let objs = model::parse_manifests(&text, "gw").unwrap();
        assert_eq!(objs.len(), 3);
        assert_eq!(objs[0].kind, model::Kind::IngressClass);
        assert_eq!(objs[0].key(), "objects/ingressclasses/_/flatnet");
        let class: model::IngressClass = objs[0].typed().unwrap();
        assert!(class.is_default());
        assert_eq!(class.spec.controller, model::INGRESS_CONTROLLER);
        assert_eq!(objs[1].kind, model::Kind::Deployment);
        assert_eq!(
            objs[1].key(),
            "objects/deployments/kube-system/ingress-gateway"
        );
        let cmd = &objs[1].value["spec"]["template"]["spec"]["containers"][0]["command"];
        assert_eq!(cmd[0], "/opt/flatnet/bin/flatnet");
        assert_eq!(cmd[1], "ingress");
        assert_eq!(cmd[2], "--etcd=http://127.0.0.1:2379");
        assert_eq!(cmd[3], "--store-netns=/run/flatnet/lab/etcd.pid");
        assert_eq!(objs[2].kind, model::Kind::Service);
        assert_eq!(objs[2].value["spec"]["type"], "LoadBalancer");
        assert_eq!(objs[2].value["spec"]["ports"][1]["port"], 443);
    }
}
