//! `flatnet agent`: the node agent (one per node): leases the node's pod CIDR from etcd,
//! routes to the other nodes (host-gw or VXLAN), writes the node's CNI config.

use std::net::SocketAddr;
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
    /// Where kube-proxy's node health server (`/healthz`, `/livez`) listens, as `ip:port`, or
    /// `off` (kube-proxy's `--healthz-bind-address`).
    #[arg(long, env = "FLATNET_HEALTHZ_BIND_ADDRESS", default_value = "0.0.0.0:10256",
          value_parser = parse_bind)]
    healthz_bind_address: Bind,
    /// Answer on the `healthCheckNodePort` of `externalTrafficPolicy: Local` LoadBalancer
    /// Services (true/false, on/off, 1/0).
    #[arg(long, env = "FLATNET_HEALTH_CHECK_NODE_PORTS", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    health_check_node_ports: bool,
}

/// A listen address, or none (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bind(Option<SocketAddr>);

fn parse_bind(s: &str) -> Result<Bind, String> {
    match s.trim() {
        "" | "off" => Ok(Bind(None)),
        v => v
            .parse()
            .map(|a| Bind(Some(a)))
            .map_err(|e| format!("{v:?}: {e} (want ip:port or off)")),
    }
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let cfg = agent::AgentConfig {
        netns: a.netns,
        etcd_endpoints: a.etcd,
        store_prefix: a.store_prefix,
        routes: agent::RoutesConfig {
            node: a.node,
            underlay_dev: a.underlay_dev,
            cni_conf_path: a.cni_conf,
            ipam_dir: a.ipam_dir,
            state_dir: a.state_dir,
            lease_ttl: Duration::from_secs(a.lease_ttl.max(1)),
        },
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    let health = services::HealthConfig {
        healthz_bind: a.healthz_bind_address.0,
        node_ports: a.health_check_node_ports,
        ..services::HealthConfig::default()
    };
    agent::run(cfg, health, shutdown).await?;
    Ok(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["agent", "--node", "n1", "--etcd", "http://127.0.0.1:2379"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn health_flags_default_to_kube_proxys_and_parse_like_it() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            a.healthz_bind_address,
            Bind(Some("0.0.0.0:10256".parse().unwrap()))
        );
        assert!(a.health_check_node_ports);
        let a = parse(&[
            "--healthz-bind-address",
            "127.0.0.1:20256",
            "--health-check-node-ports",
            "off",
        ])
        .unwrap();
        assert_eq!(
            a.healthz_bind_address,
            Bind(Some("127.0.0.1:20256".parse().unwrap()))
        );
        assert!(!a.health_check_node_ports);
        let a = parse(&["--healthz-bind-address", "off"]).unwrap();
        assert_eq!(a.healthz_bind_address, Bind(None));
        let e = parse(&["--healthz-bind-address", "10256"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("--healthz-bind-address") && e.contains("ip:port"),
            "{e}"
        );
    }
}
