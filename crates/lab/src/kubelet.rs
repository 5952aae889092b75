//! The kubelet role, one process per node: registers the node, watches the pods bound to it,
//! and for each pod creates a network namespace, runs the CNI plugin chain exactly as a
//! runtime would, starts the containers inside the namespace, and writes the pod's IP and
//! readiness back to the store. Deleted pods are stopped and their network torn down (CNI DEL).
//!
//! A pod deleted gracefully (it has a `deletionTimestamp`) is terminated as a kubelet does, in
//! a task of its own so other pods are served meanwhile: the containers' preStop hooks run
//! (exec, httpGet, sleep), then SIGTERM, then SIGKILL once `deletionGracePeriodSeconds` have
//! passed since the kubelet began (a shorter grace period from a later delete cuts it short);
//! readiness keeps being probed until the end (the endpoint stays `serving`); then CNI DEL,
//! and the object is removed from the store if it is still that pod (same uid).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use model::{Container, Pod};
use serde_json::{Value, json};
use store::reflector::{Backoff, Event, Reflector};
use store::{EtcdStore, Store, StoreError, keys};
use tokio::sync::mpsc;

use crate::names::Lab;
use crate::runtime::{self, Attachment, NetworkList};
use crate::shell;
use crate::topology::{CONFLIST_NAME, LabError};

/// What one kubelet runs with (its command line).
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The lab it belongs to (its store endpoint, directories, namespace names).
    pub lab: Lab,
    /// The node's name, as pods' `spec.nodeName` carries it.
    pub node: String,
    /// The node's underlay address, registered as its `InternalIP` (and used as pods' `hostIP`).
    pub node_ip: Ipv4Addr,
    /// Directory of the `flatnet` and `flatnet-cni` binaries (the CNI_PATH).
    pub bin_dir: PathBuf,
}

/// A pod this kubelet runs.
struct RunningPod {
    uid: String,
    netns: String,
    pids: Vec<u32>,
    result: Option<Value>,
    /// Re-evaluates readiness for as long as the pod runs; aborted when it stops.
    prober: Option<tokio::task::JoinHandle<()>>,
    /// Set once a graceful delete began.
    termination: Option<Termination>,
}

/// A graceful termination in progress: its SIGKILL deadline (lowered by a later delete with a
/// shorter grace period) and the task doing it.
struct Termination {
    deadline: tokio::sync::watch::Sender<Instant>,
    task: tokio::task::JoinHandle<()>,
}

/// Sent by the threads that wait for container processes.
struct Exited {
    key: String,
    uid: String,
    container: String,
    code: Option<i32>,
}

/// The kubelet process: registers the node once its network plugin is ready, then runs the
/// pods bound to it until the process is stopped; fails only if the node cannot be registered.
pub async fn run(cfg: KubeletConfig) -> Result<(), LabError> {
    let store = loop {
        match crate::client::connect(&cfg.lab).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!("store not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    learn_cluster_dns(&store).await;
    let pod_cidr = wait_network_ready(&cfg).await;
    register_node(&store, &cfg, pod_cidr).await?;
    let (exit_tx, mut exit_rx) = mpsc::channel::<Exited>(64);
    let mut pods: HashMap<String, RunningPod> = recover(&cfg, &store).await;
    let pods_prefix = keys::kind_prefix(model::Kind::Pod);
    let mut reflector = Reflector::new(store.clone(), &[pods_prefix.as_str()]);
    // The pods bound to this node in the listing under way.
    let mut desired = HashMap::new();
    loop {
        tokio::select! {
            ev = reflector.next() => match ev {
                Ok(Event::Init) => desired.clear(),
                Ok(Event::InitApply(kv)) => {
                    if let Some(pod) = mine(&cfg, &kv.value) {
                        desired.insert(kv.key, pod);
                    }
                }
                Ok(Event::InitDone { .. }) => {
                    let desired = std::mem::take(&mut desired);
                    let stale: Vec<String> = pods
                        .iter()
                        .filter(|(k, rp)| desired.get(*k).is_none_or(|p| uid(p) != rp.uid))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in stale {
                        if let Some(rp) = pods.remove(&k) {
                            stop_pod(&cfg, &k, rp).await;
                        }
                    }
                    for (k, pod) in desired {
                        if pods.contains_key(&k) {
                            begin_termination(&cfg, &store, &k, &pod, &mut pods);
                        } else if deletion_grace(&pod).is_some() {
                            // Deleted before it ever ran here: nothing to stop.
                            finalize(&store, &k, &uid(&pod)).await;
                        } else {
                            start_pod(&cfg, &store, &k, pod, &exit_tx, &mut pods).await;
                        }
                    }
                }
                Ok(Event::Apply(kv)) => {
                    let want = mine(&cfg, &kv.value);
                    let have_uid = pods.get(&kv.key).map(|p| p.uid.clone());
                    match (want, have_uid) {
                        (Some(p), Some(u)) if uid(&p) == u => {
                            begin_termination(&cfg, &store, &kv.key, &p, &mut pods);
                        }
                        (Some(p), _) => {
                            if let Some(rp) = pods.remove(&kv.key) { stop_pod(&cfg, &kv.key, rp).await; }
                            if deletion_grace(&p).is_some() {
                                finalize(&store, &kv.key, &uid(&p)).await;
                            } else {
                                start_pod(&cfg, &store, &kv.key, p, &exit_tx, &mut pods).await;
                            }
                        }
                        (None, Some(_)) => {
                            if let Some(rp) = pods.remove(&kv.key) { stop_pod(&cfg, &kv.key, rp).await; }
                        }
                        (None, None) => {}
                    }
                }
                Ok(Event::Delete { key, .. }) => {
                    if let Some(rp) = pods.remove(&key) { stop_pod(&cfg, &key, rp).await; }
                }
                Err(e) => tracing::warn!("pods: {e}; retrying in {:?}", reflector.retry_in()),
            },
            Some(ex) = exit_rx.recv() => container_exited(&store, &pods, ex).await,
        }
    }
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

/// The pod if it is bound to this node.
fn mine(cfg: &KubeletConfig, value: &[u8]) -> Option<Pod> {
    let pod: Pod = serde_json::from_slice(value).ok()?;
    (pod.spec.node_name.as_deref() == Some(cfg.node.as_str())).then_some(pod)
}

/// Waits until the network plugin is ready: the node's CNI config exists (the agent writes
/// it once it holds a subnet lease). Returns the node's pod CIDR from it.
async fn wait_network_ready(cfg: &KubeletConfig) -> ipnet::Ipv4Net {
    let path = cfg.lab.cni_conf_dir(&cfg.node).join(CONFLIST_NAME);
    let mut logged = false;
    loop {
        let subnet = NetworkList::load(&path).ok().and_then(|l| {
            l.plugins
                .iter()
                .find_map(|p| p.get("subnet")?.as_str()?.parse::<ipnet::Ipv4Net>().ok())
        });
        if let Some(s) = subnet {
            return s;
        }
        if !logged {
            tracing::info!("waiting for the network plugin's config {}", path.display());
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register_node(
    store: &EtcdStore,
    cfg: &KubeletConfig,
    pod_cidr: ipnet::Ipv4Net,
) -> Result<(), LabError> {
    let key = store::keys::object(model::Kind::Node, None, &cfg.node);
    let now = crate::now_rfc3339();
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.node,
            "labels": {"kubernetes.io/hostname": cfg.node, "kubernetes.io/os": "linux"},
            "creationTimestamp": now,
        },
        "spec": {"podCIDR": pod_cidr.to_string(), "podCIDRs": [pod_cidr.to_string()]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": cfg.node_ip.to_string()}, {"type": "Hostname", "address": cfg.node}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastTransitionTime": now}],
        },
    });
    update(store, &key, |v| {
        let labels = v.pointer("/metadata/labels").cloned();
        *v = node.clone();
        if let (Some(Value::Object(old)), Some(Value::Object(new))) =
            (labels, v.pointer_mut("/metadata/labels"))
        {
            for (k, val) in old {
                new.entry(k).or_insert(val);
            }
        }
        true
    })
    .await?;
    Ok(())
}

/// Read-modify-write of one object with optimistic concurrency; `f` returns false to skip
/// the write. A missing key starts from `null`.
pub async fn update(
    store: &EtcdStore,
    key: &str,
    mut f: impl FnMut(&mut Value) -> bool,
) -> Result<bool, StoreError> {
    for _ in 0..20 {
        let cur = store.get(key).await?;
        let (mut v, rev) = match &cur {
            Some(kv) => (kv.decode::<Value>()?, kv.mod_revision),
            None => (Value::Null, 0),
        };
        if !f(&mut v) {
            return Ok(false);
        }
        match store.put_if(key, store::encode(key, &v)?, rev).await {
            Ok(_) => return Ok(true),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict {
        key: key.to_string(),
    })
}

/// Changes the status of the pod at `key` if it is still the pod with `uid`.
/// A status the store cannot take now (etcd down) is retried until it can, for up to
/// [`STATUS_RETRY_FOR`]: a pod that became Ready during an outage must say so afterwards.
async fn set_status(store: &EtcdStore, key: &str, uid: &str, f: impl Fn(&mut Value)) {
    let deadline = Instant::now() + STATUS_RETRY_FOR;
    let mut backoff = Duration::from_millis(200);
    loop {
        let r = update(store, key, |v| {
            if v.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                return false;
            }
            if !v.get("status").is_some_and(Value::is_object) {
                v["status"] = json!({});
            }
            f(&mut v["status"]);
            true
        })
        .await;
        match r {
            Ok(_) => return,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tracing::warn!(
                    pod = key,
                    "cannot write status yet: {e}; retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::warn!(pod = key, "cannot write status: {e}");
                return;
            }
        }
    }
}

const STATUS_RETRY_FOR: Duration = Duration::from_secs(300);

fn ready_condition(ready: bool) -> Value {
    json!([
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": if ready {"True"} else {"False"}},
        {"type": "Ready", "status": if ready {"True"} else {"False"}, "lastTransitionTime": crate::now_rfc3339()},
    ])
}

async fn start_pod(
    cfg: &KubeletConfig,
    store: &EtcdStore,
    key: &str,
    pod: Pod,
    exit_tx: &mpsc::Sender<Exited>,
    pods: &mut HashMap<String, RunningPod>,
) {
    let uid = uid(&pod);
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone();
    let span = tracing::info_span!("pod", pod = %format!("{ns}/{name}"));
    let _g = span.enter();
    let cfg2 = cfg.clone();
    let pod2 = pod.clone();
    let started = tokio::task::spawn_blocking(move || create_sandbox(&cfg2, &pod2)).await;
    let (netns, result, ip) = match started {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::error!("sandbox: {e}");
            let msg = e.to_string();
            set_status(store, key, &uid, |s| {
                s["phase"] = json!("Pending");
                s["reason"] = json!("NetworkSetupFailed");
                s["message"] = json!(msg);
            })
            .await;
            pods.insert(
                key.to_string(),
                RunningPod {
                    uid,
                    netns: cfg.lab.pod_netns(&ns, &name),
                    pids: vec![],
                    result: None,
                    prober: None,
                    termination: None,
                },
            );
            return;
        }
        Err(e) => {
            tracing::error!("sandbox task: {e}");
            return;
        }
    };
    let mut pids = Vec::new();
    let mut failure = None;
    for c in &pod.spec.containers {
        match start_container(cfg, &pod, c, &netns) {
            Ok(child) => {
                pids.push(child.id());
                wait_in_thread(child, key, &uid, &c.name, exit_tx.clone());
            }
            Err(e) => {
                failure = Some(format!("container {}: {e}", c.name));
                break;
            }
        }
    }
    let ip_s = ip.to_string();
    let host_ip = cfg.node_ip.to_string();
    let netns_path = shell::netns_path(&netns);
    set_status(store, key, &uid, |s| {
        s["phase"] = json!(if failure.is_some() {
            "Failed"
        } else {
            "Running"
        });
        s["podIP"] = json!(ip_s);
        s["podIPs"] = json!([{"ip": ip_s}]);
        s["hostIP"] = json!(host_ip);
        s["hostIPs"] = json!([{"ip": host_ip}]);
        s["startTime"] = json!(crate::now_rfc3339());
        s["conditions"] = ready_condition(false);
        if let Some(f) = &failure {
            s["message"] = json!(f);
        }
        s["netns"] = json!(netns_path);
    })
    .await;
    pods.insert(
        key.to_string(),
        RunningPod {
            uid: uid.clone(),
            netns: netns.clone(),
            pids,
            result: Some(result),
            prober: None,
            termination: None,
        },
    );
    if failure.is_some() {
        return;
    }
    // Readiness in the background: the kubelet keeps serving other pods meanwhile.
    let prober = spawn_prober(store.clone(), key.to_string(), uid.clone(), pod, netns, ip);
    if let Some(rp) = pods.get_mut(key) {
        rp.prober = Some(prober);
    }
}

/// Probes a running pod's readiness (declared TCP ports accept, readiness probes pass) every
/// 50 ms until it is first Ready, then every `periodSeconds` of its probe (default 2 s), and
/// writes the `Ready` condition whenever it changes, as the kubelet's prober does.
fn spawn_prober(
    store: EtcdStore,
    key: String,
    uid: String,
    pod: Pod,
    netns: String,
    ip: Ipv4Addr,
) -> tokio::task::JoinHandle<()> {
    let period = pod
        .spec
        .containers
        .iter()
        .filter_map(|c| c.readiness_probe.as_ref()?.period_seconds)
        .min()
        .map_or(Duration::from_secs(2), |s| {
            Duration::from_secs(u64::from(s.max(1)))
        });
    tokio::spawn(async move {
        let mut last: Option<bool> = None;
        let started = Instant::now();
        loop {
            let (p, n) = (pod.clone(), netns.clone());
            let ready = tokio::task::spawn_blocking(move || ready_now(&p, &n, ip))
                .await
                .unwrap_or(false);
            // Not Ready yet is worth writing only once the first 30 s are over.
            let settled =
                ready || last == Some(true) || started.elapsed() > Duration::from_secs(30);
            if last != Some(ready) && settled {
                set_status(&store, &key, &uid, |s| {
                    if s["phase"] == "Running" {
                        s["conditions"] = ready_condition(ready);
                    }
                })
                .await;
                last = Some(ready);
            }
            let wait = if last == Some(true) || started.elapsed() > Duration::from_secs(30) {
                period
            } else {
                Duration::from_millis(50)
            };
            tokio::time::sleep(wait).await;
        }
    })
}

/// Namespace + CNI ADD; returns (netns name, CNI result, pod IP).
fn create_sandbox(cfg: &KubeletConfig, pod: &Pod) -> Result<(String, Value, Ipv4Addr), LabError> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = &pod.metadata.name;
    let netns = cfg.lab.pod_netns(&ns, name);
    if shell::netns_exists(&netns) {
        // A leftover from a crash: take it down first so the new sandbox starts clean.
        teardown_network(
            cfg,
            pod.metadata.uid.as_deref().unwrap_or_default(),
            &netns,
            None,
        );
    }
    shell::ip(["netns", "add", &netns])?;
    shell::ip(["-n", &netns, "link", "set", "lo", "up"])?;
    let dir = cfg.lab.pod_dir(&ns, name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::Other(format!("create {}: {e}", dir.display())))?;
    let list = NetworkList::load(&cfg.lab.cni_conf_dir(&cfg.node).join(CONFLIST_NAME))
        .map_err(|e| LabError::Other(e.to_string()))?;
    let att = attachment(
        cfg,
        pod.metadata.uid.as_deref().unwrap_or_default(),
        &netns,
        Some((&ns, name)),
    );
    let result = runtime::add(&list, &att).map_err(|e| {
        // The runtime must DEL after a failed ADD (CNI spec §3).
        let _ = runtime::del(&list, &att, None);
        LabError::Other(e.to_string())
    })?;
    let _ = std::fs::write(dir.join("cni-result.json"), result.to_string());
    write_sandbox_record(
        cfg,
        &netns,
        &SandboxRecord {
            key: store::keys::object(model::Kind::Pod, Some(&ns), name),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            result: Some(result.clone()),
        },
    );
    let ip = runtime::result_ip(&result)
        .ok_or_else(|| LabError::Other(format!("CNI result has no IPv4 address: {result}")))?;
    Ok((netns, result, ip))
}

fn attachment(
    cfg: &KubeletConfig,
    uid: &str,
    netns: &str,
    pod: Option<(&str, &str)>,
) -> Attachment {
    let mut args = vec![("IgnoreUnknown".to_string(), "1".to_string())];
    if let Some((ns, name)) = pod {
        args.push(("K8S_POD_NAMESPACE".into(), ns.into()));
        args.push(("K8S_POD_NAME".into(), name.into()));
        args.push(("K8S_POD_UID".into(), uid.into()));
    }
    Attachment {
        container_id: if uid.is_empty() {
            format!("netns-{netns}")
        } else {
            uid.to_string()
        },
        netns: shell::netns_path(netns),
        ifname: "eth0".into(),
        args,
        cni_path: vec![cfg.bin_dir.clone()],
        run_in: Some(shell::netns_path(&cfg.lab.node_netns(&cfg.node))),
    }
}

fn start_container(
    cfg: &KubeletConfig,
    pod: &Pod,
    c: &Container,
    netns: &str,
) -> Result<Child, LabError> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let dir = cfg.lab.pod_dir(&ns, &pod.metadata.name);
    let log = shell::log_file(&dir.join(format!("{}.log", c.name)))?;
    let log2 = log
        .try_clone()
        .map_err(|e| LabError::Other(e.to_string()))?;
    let mut cmd = match &c.command {
        Some(argv) if !argv.is_empty() => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd.args(c.args.iter().flatten());
            cmd
        }
        _ => {
            let mut cmd = Command::new(cfg.bin_dir.join("flatnet"));
            cmd.args(["lab", "responder", "--name", &pod.metadata.name]);
            for p in &c.ports {
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                cmd.arg(format!("--{proto}={}", p.container_port));
            }
            cmd
        }
    };
    cmd.env("HOSTNAME", &pod.metadata.name)
        .env("POD_NAME", &pod.metadata.name)
        .env("POD_NAMESPACE", &ns)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let _ns = shell::in_netns(&mut cmd, &shell::netns_path(netns))?;
    shell::own_sysfs(&mut cmd);
    if let Some(file) = write_resolv_conf(pod, &dir)? {
        shell::own_resolv_conf(&mut cmd, &file)?;
    }
    shell::detach(&mut cmd);
    cmd.spawn()
        .map_err(|e| LabError::Other(format!("start {:?}: {e}", cmd.get_program())))
}

/// The cluster DNS address (the tenth of the service CIDR), read from the store's network
/// config at start.
static CLUSTER_DNS: std::sync::OnceLock<Ipv4Addr> = std::sync::OnceLock::new();

async fn learn_cluster_dns(store: &EtcdStore) {
    match store.get(store::keys::CONFIG).await {
        Ok(Some(kv)) => {
            let v: Value = kv.decode().unwrap_or_default();
            if let Some(cidr) = v["serviceCIDR"].as_str().and_then(|c| c.parse().ok()) {
                let _ = CLUSTER_DNS.set(crate::resolv::cluster_dns_ip(cidr));
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!("cannot read the network config: {e}; pods keep the node's resolv.conf")
        }
    }
}

/// Writes the pod's resolv.conf into its directory (the same file for every container, and
/// for `flatnet exec`); `None` when the pod keeps the node's file.
fn write_resolv_conf(pod: &Pod, dir: &std::path::Path) -> Result<Option<PathBuf>, LabError> {
    let host = crate::resolv::HostResolv::parse(
        &std::fs::read_to_string(shell::RESOLV_CONF).unwrap_or_default(),
    );
    let Some(text) = crate::resolv::render(pod, CLUSTER_DNS.get().copied(), &host) else {
        return Ok(None);
    };
    let file = dir.join("resolv.conf");
    std::fs::write(&file, text)
        .map_err(|e| LabError::Other(format!("write {}: {e}", file.display())))?;
    Ok(Some(file))
}

fn wait_in_thread(
    mut child: Child,
    key: &str,
    uid: &str,
    container: &str,
    tx: mpsc::Sender<Exited>,
) {
    let (key, uid, container) = (key.to_string(), uid.to_string(), container.to_string());
    std::thread::spawn(move || {
        let code = child.wait().ok().and_then(|s| s.code());
        let _ = tx.blocking_send(Exited {
            key,
            uid,
            container,
            code,
        });
    });
}

async fn container_exited(store: &EtcdStore, pods: &HashMap<String, RunningPod>, ex: Exited) {
    let Some(rp) = pods.get(&ex.key) else { return };
    if rp.uid != ex.uid {
        return;
    }
    tracing::info!(pod = ex.key, container = ex.container, code = ?ex.code, "container exited");
    let failed = ex.code != Some(0);
    set_status(store, &ex.key, &ex.uid, |s| {
        s["phase"] = json!(if failed { "Failed" } else { "Succeeded" });
        s["conditions"] = ready_condition(false);
        s["message"] = json!(format!(
            "container {} exited with {:?}",
            ex.container, ex.code
        ));
    })
    .await;
}

/// Ready when every declared TCP port accepts connections and the readiness probe passes.
/// Ready now: every declared TCP port accepts a connection and every readiness probe passes.
fn ready_now(pod: &Pod, netns: &str, ip: Ipv4Addr) -> bool {
    let Ok(ns) = datapath::NetNs::open(shell::netns_path(netns)) else {
        return false;
    };
    let connect = |port: u16| {
        ns.run(|| {
            TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(200))
                .is_ok()
        })
        .unwrap_or(false)
    };
    pod.spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .all(|p| connect(p.container_port))
        && pod
            .spec
            .containers
            .iter()
            .all(|c| probe_ok(c, &ns, ip, netns))
}

fn probe_ok(c: &Container, ns: &datapath::NetNs, ip: Ipv4Addr, netns: &str) -> bool {
    let Some(probe) = &c.readiness_probe else {
        return true;
    };
    if let Some(exec) = &probe.exec {
        let argv = &exec.command;
        if argv.is_empty() {
            return false;
        }
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let Ok(_f) = shell::in_netns(&mut cmd, &shell::netns_path(netns)) else {
            return false;
        };
        return cmd.status().map(|s| s.success()).unwrap_or(false);
    }
    let port_of = |p: &model::IntOrString| -> Option<u16> {
        match p {
            model::IntOrString::Int(n) => u16::try_from(*n).ok(),
            model::IntOrString::String(name) => c
                .ports
                .iter()
                .find(|x| x.name.as_deref() == Some(name))
                .map(|x| x.container_port),
        }
    };
    if let Some(t) = &probe.tcp_socket {
        let Some(port) = port_of(&t.port) else {
            return false;
        };
        return ns
            .run(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((ip, port)),
                    Duration::from_millis(500),
                )
                .is_ok()
            })
            .unwrap_or(false);
    }
    if let Some(h) = &probe.http_get {
        let Some(port) = port_of(&h.port) else {
            return false;
        };
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        return ns
            .run(|| {
                use std::io::{Read, Write};
                let Ok(mut s) = TcpStream::connect_timeout(
                    &SocketAddr::from((ip, port)),
                    Duration::from_millis(500),
                ) else {
                    return false;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").is_err() {
                    return false;
                }
                let mut buf = [0u8; 12];
                s.read_exact(&mut buf).is_ok() && (buf[9] == b'2' || buf[9] == b'3')
            })
            .unwrap_or(false);
    }
    true
}

/// Stops a pod at once: SIGTERM, SIGKILL after 2 s, CNI DEL. A graceful termination in
/// progress is cut short (its deadline set to now) and awaited, so that a new sandbox of the
/// same name never races its teardown.
async fn stop_pod(cfg: &KubeletConfig, key: &str, mut rp: RunningPod) {
    if let Some(t) = rp.termination.take() {
        t.deadline.send_replace(Instant::now());
        let _ = t.task.await;
        return;
    }
    if let Some(p) = rp.prober.take() {
        p.abort();
    }
    tracing::info!(pod = key, "stopping");
    let cfg = cfg.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for pid in &rp.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && rp
                .pids
                .iter()
                .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        teardown_network(&cfg, &rp.uid, &rp.netns, rp.result.as_ref());
    })
    .await;
}

/// `deletionGracePeriodSeconds` of a pod being deleted gracefully (0 when it has only a
/// `deletionTimestamp`); `None` when it is not being deleted.
fn deletion_grace(pod: &Pod) -> Option<Duration> {
    if !pod.metadata.is_being_deleted() {
        return None;
    }
    let secs = pod
        .metadata
        .extra
        .get("deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    Some(Duration::from_secs(secs.max(0).unsigned_abs()))
}

/// Starts the graceful termination of a running pod that has a `deletionTimestamp`, or
/// lowers the deadline of one in progress when the grace period was shortened.
fn begin_termination(
    cfg: &KubeletConfig,
    store: &EtcdStore,
    key: &str,
    pod: &Pod,
    pods: &mut HashMap<String, RunningPod>,
) {
    let (Some(grace), Some(rp)) = (deletion_grace(pod), pods.get_mut(key)) else {
        return;
    };
    let deadline = Instant::now() + grace;
    if let Some(t) = &rp.termination {
        t.deadline.send_if_modified(|d| {
            let sooner = deadline < *d;
            if sooner {
                *d = deadline;
            }
            sooner
        });
        return;
    }
    tracing::info!(pod = key, grace = ?grace, "terminating gracefully");
    let (tx, rx) = tokio::sync::watch::channel(deadline);
    let job = Terminate {
        cfg: cfg.clone(),
        store: store.clone(),
        key: key.to_string(),
        pod: pod.clone(),
        uid: rp.uid.clone(),
        pids: rp.pids.clone(),
        netns: rp.netns.clone(),
        result: rp.result.clone(),
        prober: rp.prober.take(),
    };
    rp.termination = Some(Termination {
        deadline: tx,
        task: tokio::spawn(job.run(rx)),
    });
}

/// What a graceful termination needs of its pod.
struct Terminate {
    cfg: KubeletConfig,
    store: EtcdStore,
    key: String,
    pod: Pod,
    uid: String,
    pids: Vec<u32>,
    netns: String,
    result: Option<Value>,
    prober: Option<tokio::task::JoinHandle<()>>,
}

impl Terminate {
    async fn run(self, mut deadline: tokio::sync::watch::Receiver<Instant>) {
        let ip = self.result.as_ref().and_then(runtime::result_ip);
        let mut hooks = tokio::task::JoinSet::new();
        for c in &self.pod.spec.containers {
            if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) {
                let (c, netns) = (c.clone(), self.netns.clone());
                hooks.spawn(pre_stop(hook, c, netns, ip));
            }
        }
        until(&mut deadline, async {
            while hooks.join_next().await.is_some() {}
        })
        .await;
        hooks.abort_all();
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let pids = self.pids.clone();
        until(&mut deadline, async move {
            while pids
                .iter()
                .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if let Some(p) = &self.prober {
            p.abort();
        }
        let (cfg, uid, netns, result) = (
            self.cfg.clone(),
            self.uid.clone(),
            self.netns.clone(),
            self.result.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            teardown_network(&cfg, &uid, &netns, result.as_ref())
        })
        .await;
        tracing::info!(pod = self.key, "terminated");
        finalize(&self.store, &self.key, &self.uid).await;
    }
}

/// Runs `fut` until it ends or the (possibly lowered) deadline passes.
async fn until(
    deadline: &mut tokio::sync::watch::Receiver<Instant>,
    fut: impl Future<Output = ()>,
) {
    tokio::pin!(fut);
    let mut open = true;
    loop {
        let d = *deadline.borrow_and_update();
        tokio::select! {
            () = &mut fut => return,
            () = tokio::time::sleep_until(d.into()) => return,
            r = deadline.changed(), if open => open = r.is_ok(),
        }
    }
}

/// One container's preStop hook: exec (in the pod's network namespace, from the host
/// filesystem, as the container's command runs), httpGet to the pod's IP, or sleep.
/// `tcpSocket` is accepted and does nothing, as in the kubelet.
async fn pre_stop(
    hook: model::LifecycleHandler,
    c: Container,
    netns: String,
    ip: Option<Ipv4Addr>,
) {
    if let Some(sleep) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0).unsigned_abs())).await;
    } else if let Some(exec) = hook.exec {
        let Some((prog, args)) = exec.command.split_first() else {
            return;
        };
        let mut std_cmd = std::process::Command::new(prog);
        // The open namespace file must outlive the spawn.
        let _ns = match shell::in_netns(&mut std_cmd, &shell::netns_path(&netns)) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(container = c.name, "preStop: {e}");
                return;
            }
        };
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        match cmd.status().await {
            Ok(st) if !st.success() => {
                tracing::warn!(container = c.name, "preStop hook exited with {st}")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(container = c.name, "preStop hook: {e}"),
        }
    } else if let (Some(get), Some(ip)) = (hook.http_get, ip) {
        let port = match &get.port {
            model::IntOrString::Int(n) => u16::try_from(*n).ok(),
            model::IntOrString::String(name) => c
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port),
        };
        let (Some(port), path) = (port, get.path.unwrap_or_else(|| "/".into())) else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(ns) = datapath::NetNs::open(shell::netns_path(&netns)) else {
                return;
            };
            let _ = ns.run(|| {
                use std::io::{Read, Write};
                let addr = SocketAddr::from((ip, port));
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
                    return;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n");
                let _ = s.read(&mut [0u8; 512]);
            });
        })
        .await;
    }
}

/// Removes a pod's object once its kubelet is done with it, only if it is still the pod with
/// `uid` (a new pod of the same name is left alone). Retried while the store is unreachable.
async fn finalize(store: &EtcdStore, key: &str, uid: &str) {
    let deadline = Instant::now() + STATUS_RETRY_FOR;
    let mut backoff = Duration::from_millis(200);
    loop {
        let r = match store.get(key).await {
            Ok(Some(kv)) => {
                let same = kv.decode::<Value>().ok().is_some_and(|v| {
                    v.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid)
                });
                if !same {
                    return;
                }
                store.delete_if(key, kv.mod_revision).await.map(|_| ())
            }
            Ok(None) => return,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => return,
            // Written meanwhile (a status update): read again.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tracing::warn!(
                    pod = key,
                    "cannot remove the pod yet: {e}; retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::warn!(pod = key, "cannot remove the pod: {e}");
                return;
            }
        }
    }
}

/// Kills whatever still runs in the pod's namespace, runs CNI DEL, removes the namespace.
fn teardown_network(cfg: &KubeletConfig, uid: &str, netns: &str, result: Option<&Value>) {
    crate::cleanup::kill_in_netns(&shell::netns_path(netns));
    match NetworkList::load(&cfg.lab.cni_conf_dir(&cfg.node).join(CONFLIST_NAME)) {
        Ok(list) => {
            if let Err(e) = runtime::del(&list, &attachment(cfg, uid, netns, None), result) {
                tracing::error!("CNI DEL for {netns}: {e}");
            }
        }
        Err(e) => tracing::error!("{e}"),
    }
    if let Err(e) = shell::ip(["netns", "del", netns]) {
        tracing::warn!("{e}");
    }
    let _ = std::fs::remove_file(sandbox_dir(cfg).join(netns));
}

/// What the kubelet remembers of each sandbox it made, so a restarted kubelet adopts its
/// running pods and tears down those deleted meanwhile: nothing leaks across a crash.
#[derive(serde::Serialize, serde::Deserialize)]
struct SandboxRecord {
    key: String,
    uid: String,
    result: Option<Value>,
}

fn sandbox_dir(cfg: &KubeletConfig) -> PathBuf {
    cfg.lab.node_dir(&cfg.node).join("sandboxes")
}

fn write_sandbox_record(cfg: &KubeletConfig, netns: &str, rec: &SandboxRecord) {
    let dir = sandbox_dir(cfg);
    let _ = std::fs::create_dir_all(&dir);
    let tmp = dir.join(format!(".{netns}.tmp"));
    if std::fs::write(&tmp, serde_json::to_vec(rec).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(netns));
    }
}

/// After a restart: adopts sandboxes whose pod still exists (same uid), tears down the
/// others, then asks the plugin to garbage-collect every attachment not adopted (CNI GC).
async fn recover(cfg: &KubeletConfig, store: &EtcdStore) -> HashMap<String, RunningPod> {
    let mut adopted = HashMap::new();
    let records: Vec<(String, SandboxRecord)> = std::fs::read_dir(sandbox_dir(cfg))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if name.starts_with('.') {
                return None;
            }
            Some((
                name,
                serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?,
            ))
        })
        .collect();
    let mut backoff = Backoff::new();
    let pods = loop {
        match store.list(&keys::kind_prefix(model::Kind::Pod)).await {
            Ok((kvs, _)) => break kvs,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot list pods to recover sandboxes");
                tokio::time::sleep(wait).await;
            }
        }
    };
    for (netns, rec) in records {
        let alive = pods.iter().any(|kv| {
            kv.key == rec.key && mine(cfg, &kv.value).is_some_and(|p| uid(&p) == rec.uid)
        }) && shell::netns_exists(&netns);
        if alive {
            let pids = crate::cleanup::pids_in_netns(&shell::netns_path(&netns))
                .into_iter()
                .map(|p| p as u32)
                .collect();
            tracing::info!(pod = rec.key, "adopting running sandbox {netns}");
            let pod = pods
                .iter()
                .find(|kv| kv.key == rec.key)
                .and_then(|kv| mine(cfg, &kv.value));
            let ip = rec.result.as_ref().and_then(runtime::result_ip);
            let prober = match (pod, ip) {
                (Some(pod), Some(ip)) => Some(spawn_prober(
                    store.clone(),
                    rec.key.clone(),
                    rec.uid.clone(),
                    pod,
                    netns.clone(),
                    ip,
                )),
                _ => None,
            };
            adopted.insert(
                rec.key.clone(),
                RunningPod {
                    uid: rec.uid,
                    netns,
                    pids,
                    result: rec.result,
                    prober,
                    termination: None,
                },
            );
        } else {
            tracing::info!(
                pod = rec.key,
                "tearing down sandbox {netns} of a pod that is gone"
            );
            let cfg = cfg.clone();
            let _ = tokio::task::spawn_blocking(move || {
                teardown_network(&cfg, &rec.uid, &netns, rec.result.as_ref())
            })
            .await;
        }
    }
    let valid: Vec<(String, String)> = adopted
        .values()
        .map(|p| (p.uid.clone(), "eth0".to_string()))
        .collect();
    let cfg2 = cfg.clone();
    let gc = tokio::task::spawn_blocking(move || {
        let list = NetworkList::load(&cfg2.lab.cni_conf_dir(&cfg2.node).join(CONFLIST_NAME))?;
        runtime::gc(&list, &attachment(&cfg2, "gc", "gc", None), &valid)
    })
    .await;
    match gc {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("CNI GC: {e}"),
        Err(e) => tracing::warn!("CNI GC task: {e}"),
    }
    adopted
}
