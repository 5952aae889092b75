//! `flatnet lab up|down|status|exec|kubeconfig`, and the lab's own daemons (`kubelet`,
//! `controller`, `apiserver`, `responder`),
//! which the lab starts itself.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: LabCmd,
}

impl Args {
    /// Daemons log at info level by default.
    pub fn is_daemon(&self) -> bool {
        matches!(
            self.command,
            LabCmd::Kubelet(_) | LabCmd::Controller | LabCmd::ApiServer | LabCmd::Responder(_)
        )
    }
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build a lab: namespaces for nodes, fabric and external, etcd, kubelets.
    Up(UpArgs),
    /// Remove everything the lab made (also after a crash). Idempotent.
    Down,
    /// Show what runs.
    Status,
    /// Run a command in a node's or the external host's network namespace.
    Exec {
        /// A node name (node1, ...) or `external`.
        target: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the path of the kubeconfig for the lab's Kubernetes API server
    /// (`export KUBECONFIG=$(flatnet lab kubeconfig)`).
    Kubeconfig,
    /// Kill a lab component (etcd, apiserver, controller, kubelet/NODE, agent/NODE) with SIGKILL, as a crash would.
    Stop { component: String },
    /// Start a stopped lab component again, as `lab up` started it.
    Start { component: String },
    /// (started by `lab up`) The kubelet role of one node.
    #[command(hide = true)]
    Kubelet(KubeletArgs),
    /// (started by `lab up`) Deployments, EndpointSlices and LoadBalancer IPs.
    #[command(hide = true)]
    Controller,
    /// (started by `lab up`) The Kubernetes API server, on loopback.
    #[command(name = "apiserver", hide = true)]
    ApiServer,
    /// (started by the kubelet) The built-in container answering with the pod's name.
    #[command(hide = true)]
    Responder(ResponderArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    #[arg(long, default_value = "host-gw", value_parser = ["host-gw", "vxlan"])]
    backend: String,
    #[arg(long, default_value = "10.244.0.0/16")]
    pod_cidr: ipnet::Ipv4Net,
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::Ipv4Net,
    /// Addresses the controller gives LoadBalancer services (on the underlay).
    #[arg(long, default_value = "172.20.0.240/28")]
    lb_pool: ipnet::Ipv4Net,
}

#[derive(clap::Args)]
struct KubeletArgs {
    #[arg(long)]
    node: String,
    #[arg(long)]
    node_ip: std::net::Ipv4Addr,
}

#[derive(clap::Args)]
struct ResponderArgs {
    #[arg(long)]
    name: String,
    #[arg(long = "tcp")]
    tcp: Vec<u16>,
    #[arg(long = "udp")]
    udp: Vec<u16>,
    #[arg(long = "sctp")]
    sctp: Vec<u16>,
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().map(PathBuf::from).unwrap_or_default())
}

pub fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    match args.command {
        LabCmd::Up(a) => super::block_on(up(a, lab)),
        LabCmd::Down => {
            let r = lab::topology::down(&lab);
            if r.is_empty() && r.errors.is_empty() {
                println!("lab {} was not up; nothing to remove", lab.name);
            } else {
                println!(
                    "lab {} removed: {} process(es), {} namespace(s), {} mount(s), {} state dir(s)",
                    lab.name, r.processes, r.namespaces, r.mounts, r.dirs
                );
            }
            for e in &r.errors {
                eprintln!("error: {e}");
            }
            Ok(i32::from(!r.errors.is_empty()))
        }
        LabCmd::Status => super::block_on(status(lab)),
        LabCmd::Exec { target, command } => {
            let ns = if target == "external" {
                lab.external_netns()
            } else {
                lab.node_netns(&target)
            };
            if !lab::shell::netns_exists(&ns) {
                anyhow::bail!(
                    "no node or host named {target:?} in lab {} (nodes are node1, node2, ...; or external)",
                    lab.name
                );
            }
            super::exec_in_netns(&lab::shell::netns_path(&ns), &command, None)
        }
        LabCmd::Kubeconfig => {
            let path = lab.kubeconfig();
            if !lab.etcd_endpoint_file().exists() {
                return Err(lab::topology::LabError::NotUp(lab.name.clone()).into());
            }
            if !path.exists() {
                anyhow::bail!(
                    "lab {} has no kubeconfig at {} (its API server never became ready; see `flatnet lab status`)",
                    lab.name,
                    path.display()
                );
            }
            println!("{}", path.display());
            Ok(0)
        }
        LabCmd::Stop { component } => {
            let d = lab::daemons::Daemon::parse(&component)?;
            if lab::daemons::stop(&lab, &d)? {
                println!("{component} stopped");
            } else {
                println!("{component} was not running");
            }
            Ok(0)
        }
        LabCmd::Start { component } => {
            let d = lab::daemons::Daemon::parse(&component)?;
            let pid = lab::daemons::start(&lab, &d)?;
            println!("{component} started (pid {pid})");
            Ok(0)
        }
        LabCmd::Kubelet(a) => super::block_on(async move {
            let cfg = lab::kubelet::KubeletConfig {
                lab,
                node: a.node,
                node_ip: a.node_ip,
                bin_dir: bin_dir()?,
            };
            lab::kubelet::run(cfg).await?;
            Ok(0)
        }),
        LabCmd::ApiServer => super::block_on(async move {
            lab::apiserver::run(lab).await?;
            Ok(0)
        }),
        LabCmd::Controller => super::block_on(async move {
            lab::controller::run(lab).await?;
            Ok(0)
        }),
        LabCmd::Responder(a) => {
            if !a.sctp.is_empty() {
                anyhow::bail!("SCTP is not supported by this kernel's lab responder");
            }
            lab::responder::serve(&a.name, &a.tcp, &a.udp)?;
            Ok(0)
        }
    }
}

async fn up(a: UpArgs, lab: lab::Lab) -> anyhow::Result<i32> {
    let addressing = lab::names::Addressing {
        pod_cidr: a.pod_cidr,
        service_cidr: a.service_cidr,
        lb_pool: a.lb_pool,
        ..Default::default()
    };
    let opts = lab::topology::UpOptions {
        nodes: a.nodes,
        backend: a.backend,
        addressing,
        bin_dir: bin_dir()?,
    };
    let progress = |s: &str| eprintln!("  {s}");
    lab::topology::up(&lab, &opts, &progress).await?;
    let store = lab::client::connect(&lab).await?;
    lab::api::ensure_builtin_namespaces(&store).await?;
    println!(
        "lab {} is up: {} node(s), backend {}",
        lab.name, opts.nodes, opts.backend
    );
    Ok(0)
}

async fn status(lab: lab::Lab) -> anyhow::Result<i32> {
    let ep = lab::client::endpoint(&lab)?;
    println!("lab {}: etcd {ep}", lab.name);
    if let Some(port) = lab::apiserver::recorded_port(&lab) {
        println!(
            "API server http://127.0.0.1:{port} (KUBECONFIG={})",
            lab.kubeconfig().display()
        );
    }
    for (id, pid) in lab::daemons::list(&lab) {
        match pid {
            Some(p) => println!("  {id:<16} running (pid {p})"),
            None => println!(
                "  {id:<16} NOT RUNNING (start it with: flatnet lab start {})",
                id.replacen('-', "/", 1)
            ),
        }
    }
    let namespaces = lab::shell::netns_with_prefix(&lab.netns_prefix());
    println!("namespaces: {}", namespaces.len());
    let store = lab::client::connect(&lab).await?;
    let nodes = lab::api::get(&store, model::Kind::Node, None, None).await?;
    let pods = lab::api::get(&store, model::Kind::Pod, None, None).await?;
    for n in &nodes {
        let name = n
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let count = pods
            .iter()
            .filter(|p| p.pointer("/spec/nodeName").and_then(|v| v.as_str()) == Some(name))
            .count();
        println!(
            "node {name}: podCIDR {}, {count} pod(s)",
            n.pointer("/spec/podCIDR")
                .and_then(|v| v.as_str())
                .unwrap_or("-")
        );
    }
    Ok(0)
}
