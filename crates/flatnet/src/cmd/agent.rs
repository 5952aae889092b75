//! `flatnet agent`: the node agent (one per node): leases the node's pod CIDR from etcd,
//! routes to the other nodes (host-gw or VXLAN), writes the node's CNI config.

use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// This node's name.
    #[arg(long)]
    node: String,
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// Network namespace to program (default: the agent's own).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Underlay interface; its first IPv4 address is the node's address.
    #[arg(long, default_value = "eth0")]
    underlay_dev: String,
    /// Where to write the node's CNI network config list.
    #[arg(long, default_value = "/etc/cni/net.d/10-flatnet.conflist")]
    cni_conf: PathBuf,
    /// IPAM directory handed to flatnet-cni (`dataDir`).
    #[arg(long, default_value = "/var/lib/cni/flatnet")]
    ipam_dir: PathBuf,
    /// Local state (the last leased subnet, for restarts after the lease expired).
    #[arg(long, default_value = "/var/lib/flatnet/agent")]
    state_dir: PathBuf,
    /// Subnet lease TTL in seconds (renewed every third of it).
    #[arg(long, default_value_t = 15)]
    lease_ttl: u64,
    #[arg(long, default_value = agent::DEFAULT_STORE_PREFIX)]
    store_prefix: String,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let cfg = agent::AgentConfig {
        node: a.node,
        netns: a.netns,
        etcd_endpoints: a.etcd,
        store_prefix: a.store_prefix,
        underlay_dev: a.underlay_dev,
        cni_conf_path: a.cni_conf,
        ipam_dir: a.ipam_dir,
        state_dir: a.state_dir,
        lease_ttl: Duration::from_secs(a.lease_ttl.max(1)),
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    agent::run(cfg, shutdown).await?;
    Ok(0)
}
