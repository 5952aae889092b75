//! `flatnet dns`: the cluster DNS server (design.md §8), answering for the cluster domain from
//! the store. Its UDP and TCP sockets (and the socket for upstream queries) are bound in the
//! namespace it starts in; with `--store-netns` the process then moves into that namespace
//! before any thread or store connection exists, so the store is reached there while the
//! sockets stay where clients reach them (the lab runs it in a pod and etcd on the root
//! namespace's loopback). On a real host `--store-netns` is omitted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use dns::follow;
use dns::server::{Forwarder, Handler, UdpMode, spawn_udp_workers};
use dns::{Zone, ZoneConfig};
use ipnet::{IpNet, Ipv4Net};
use store::reflector::Backoff;

fn upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|e| format!("{s:?}: {e} (want IP or IP:PORT)"))
}

fn udp_mode(s: &str) -> Result<UdpMode, String> {
    match s {
        "workers" => Ok(UdpMode::Workers),
        "hickory" => Ok(UdpMode::Hickory),
        _ => Err(format!("{s:?}: want workers or hickory")),
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "static_objects"
    )]
    etcd: Vec<String>,
    #[arg(long, default_value = "/flatnet/")]
    store_prefix: String,
    /// Network namespace file (or the pid file of a process in it) the process moves into
    /// after binding its sockets, to reach the store (e.g. /proc/1/ns/net).
    #[arg(long)]
    store_netns: Option<PathBuf>,
    /// Serve a fixed set of objects from a JSON file (a `List` with `items`, or an array of
    /// Services, EndpointSlices, Pods and Namespaces) instead of following a store.
    #[arg(long, conflicts_with = "etcd")]
    static_objects: Option<PathBuf>,
    /// UDP and TCP listen address.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// TTL of every answer, and of negative answers (CoreDNS' default: 5 s).
    #[arg(long, default_value_t = dns::DEFAULT_TTL, value_parser = clap::value_parser!(u32).range(0..=3600))]
    ttl: u32,
    /// Upstream servers for names outside the cluster (IP or IP:PORT, comma-separated).
    /// None: such names get SERVFAIL at once.
    #[arg(long, value_delimiter = ',', value_parser = upstream)]
    upstream: Vec<SocketAddr>,
    /// UDP worker threads.
    #[arg(long, default_value_t = 1)]
    udp_workers: usize,
    /// Who serves UDP: `workers` (our threads, hickory encoding) or `hickory` (hickory's
    /// server loop; slower, kept for comparison).
    #[arg(long, default_value = "workers", value_parser = udp_mode)]
    udp_server: UdpMode,
    /// Service CIDR (reverse zone, and the DNS address, its tenth); default: the store's config.
    #[arg(long)]
    service_cidr: Option<Ipv4Net>,
    /// Pod CIDR (reverse zone); default: the store's config.
    #[arg(long)]
    pod_cidr: Option<Ipv4Net>,
    /// This server's Service address (`ns.dns.<domain>`); default: the tenth address of the
    /// service CIDR.
    #[arg(long)]
    dns_ip: Option<IpAddr>,
}

/// The sockets, bound before the process leaves the clients' namespace.
struct Sockets {
    udp: UdpSocket,
    tcp: tokio::net::TcpSocket,
    upstream: Option<UdpSocket>,
}

fn bind(a: &Args) -> anyhow::Result<Sockets> {
    let udp = UdpSocket::bind(a.listen).with_context(|| format!("bind udp {}", a.listen))?;
    let tcp = match a.listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .context("tcp socket")?;
    tcp.set_reuseaddr(true).context("tcp SO_REUSEADDR")?;
    tcp.bind(a.listen)
        .with_context(|| format!("bind tcp {}", a.listen))?;
    let upstream = if a.upstream.is_empty() {
        None
    } else {
        let any: SocketAddr = if a.upstream.iter().all(SocketAddr::is_ipv4) {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            "[::]:0".parse()?
        };
        Some(UdpSocket::bind(any).context("bind the upstream socket")?)
    };
    Ok(Sockets { udp, tcp, upstream })
}

/// The tenth address of a CIDR (`10.96.0.10` for `10.96.0.0/12`), as kubeadm picks for kube-dns.
pub fn tenth_address(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()).wrapping_add(10))
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.udp_workers == 0 || a.udp_workers > 64 {
        anyhow::bail!("--udp-workers {}: must be between 1 and 64", a.udp_workers);
    }
    let static_items = match &a.static_objects {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--static-objects {}", p.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("--static-objects {}: not JSON", p.display()))?;
            let items = match v {
                serde_json::Value::Array(items) => items,
                mut list => match list.get_mut("items").map(serde_json::Value::take) {
                    Some(serde_json::Value::Array(items)) => items,
                    _ => anyhow::bail!(
                        "--static-objects {}: want a JSON array or a List with items",
                        p.display()
                    ),
                },
            };
            Some(items)
        }
        None => None,
    };
    let mut cfg = ZoneConfig::new(&a.domain).map_err(|e| anyhow::anyhow!("--domain: {e}"))?;
    cfg.ttl = a.ttl;
    let sockets = bind(&a)?;
    if let Some(ns) = &a.store_netns {
        // Still single-threaded: the runtime's threads are made after this and inherit it.
        // A namespace file, or a pid file naming the process whose namespace to join (the
        // lab names etcd's), as `flatnet ingress` takes it.
        let f = ingress::run::netns_file(ns)
            .map_err(|e| anyhow::anyhow!("--store-netns {}: {e}", ns.display()))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("--store-netns {}: setns", ns.display()))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(serve(a, cfg, sockets, static_items))
}

async fn serve(
    a: Args,
    mut cfg: ZoneConfig,
    sockets: Sockets,
    static_items: Option<Vec<serde_json::Value>>,
) -> anyhow::Result<i32> {
    let started = Instant::now();
    let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);
    let store = match &static_items {
        Some(_) => None,
        None => Some(connect(&a).await),
    };
    // Reverse zones and the server's own address, from flags or the store's network config.
    let (mut svc_cidr, mut pod_cidr) = (a.service_cidr, a.pod_cidr);
    if let Some(s) = &store
        && (svc_cidr.is_none() || pod_cidr.is_none())
    {
        let conf = read_config(s).await;
        svc_cidr = svc_cidr.or(conf.0);
        pod_cidr = pod_cidr.or(conf.1);
    }
    cfg.reverse_cidrs = [svc_cidr, pod_cidr]
        .into_iter()
        .flatten()
        .map(IpNet::V4)
        .collect();
    cfg.dns_ip = a.dns_ip.or(svc_cidr.map(|c| IpAddr::V4(tenth_address(c))));
    let zone = Arc::new(RwLock::new(Zone::new(cfg)));
    match (static_items, store) {
        (Some(items), _) => {
            let mut z = zone.write().unwrap_or_else(|p| p.into_inner());
            let n = follow::load_static(&mut z, &items)
                .map_err(|e| anyhow::anyhow!("--static-objects: {e}"))?;
            tracing::info!(objects = n, names = z.name_count(), "static zone loaded");
            let _ = synced_tx.send(true);
        }
        (None, Some(store)) => {
            tokio::spawn(follow::follow(store, zone.clone(), synced_tx));
        }
        (None, None) => anyhow::bail!("give --etcd or --static-objects"),
    }
    let forwarder = match sockets.upstream {
        Some(s) => Some(Forwarder::new(s, a.upstream.clone()).context("upstream socket")?),
        None => None,
    };
    let mut server = dns::hickory_server::Server::new(Handler {
        zone: zone.clone(),
        forwarder: forwarder.clone(),
    });
    match a.udp_server {
        UdpMode::Workers => spawn_udp_workers(
            sockets.udp,
            zone.clone(),
            forwarder.clone(),
            tokio::runtime::Handle::current(),
            a.udp_workers,
        )
        .context("udp workers")?,
        UdpMode::Hickory => {
            sockets.udp.set_nonblocking(true)?;
            server.register_socket(tokio::net::UdpSocket::from_std(sockets.udp)?);
        }
    }
    tracing::info!(listen = %a.listen, upstreams = ?a.upstream, "answering on UDP (SERVFAIL for cluster names until the zone is loaded)");
    // TCP listens only once the zone is loaded: a TCP connect to the port means "ready".
    while !*synced_rx.borrow() {
        if synced_rx.changed().await.is_err() {
            anyhow::bail!("the store follower ended");
        }
    }
    let listener = sockets.tcp.listen(1024).context("tcp listen")?;
    server.register_listener(listener, Duration::from_secs(5), 64);
    tracing::info!(
        elapsed = ?started.elapsed(),
        "zone loaded; listening on TCP {}",
        a.listen
    );
    shutdown().await;
    Ok(0)
}

async fn connect(a: &Args) -> store::EtcdStore {
    let mut backoff = Backoff::new();
    loop {
        match store::EtcdStore::connect(&a.etcd, &a.store_prefix).await {
            Ok(s) => return s,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "store not reachable");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// (serviceCIDR, podCIDR) from the store's network config, when it is there.
async fn read_config(s: &store::EtcdStore) -> (Option<Ipv4Net>, Option<Ipv4Net>) {
    use store::contract::ConfigError;
    let mut backoff = Backoff::new();
    for _ in 0..20 {
        match store::contract::read_config(s).await {
            Ok(c) => return (c.service_cidr, Some(c.pod_cidr)),
            Err(ConfigError::Missing) => return (None, None),
            Err(e @ ConfigError::Invalid(_)) => {
                tracing::warn!(error = %e, "network config ignored");
                return (None, None);
            }
            Err(ConfigError::Store(e)) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot read the network config");
                tokio::time::sleep(wait).await;
            }
        }
    }
    (None, None)
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenth_address_of_the_default_service_cidr_is_kube_dns() {
        let cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(tenth_address(cidr), Ipv4Addr::new(10, 96, 0, 10));
    }

    #[test]
    fn upstreams_default_to_port_53() {
        assert_eq!(
            upstream("192.0.2.1"),
            Ok("192.0.2.1:53".parse().unwrap_or_else(|_| unreachable!()))
        );
        assert!(upstream("nope").is_err());
    }
}
