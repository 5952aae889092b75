//! `flatnet ingress`: the ingress gateway (Ingress v1, class `flatnet`). Binds its listeners
//! in the namespace it starts in; with `--store-netns` the store client alone moves to that
//! namespace (the lab runs the gateway in a pod and its etcd on the root namespace's loopback).

use std::net::SocketAddr;
use std::path::PathBuf;

/// A listener address, or none (`off`).
#[derive(Clone, Copy, Debug)]
struct Listen(Option<SocketAddr>);

fn listen_addr(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|e| format!("{s:?}: {e} (want ADDR:PORT or off)"))
}

#[derive(clap::Args)]
pub struct Args {
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    #[arg(long, default_value = "/flatnet/")]
    store_prefix: String,
    /// Network namespace file the store client enters (e.g. /proc/1/ns/net); the listeners and
    /// backend connections stay in the namespace the gateway starts in.
    #[arg(long)]
    store_netns: Option<PathBuf>,
    /// Cleartext listener (HTTP/1.1 and HTTP/2 with prior knowledge), or `off`.
    #[arg(long, default_value = "0.0.0.0:80", value_parser = listen_addr)]
    http: Listen,
    /// TLS listener (certificates from the Ingresses' TLS Secrets, ALPN h2 and http/1.1), or `off`.
    #[arg(long, default_value = "0.0.0.0:443", value_parser = listen_addr)]
    https: Listen,
    /// Proxy worker threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// The IngressClass served (via spec.ingressClassName or the legacy annotation).
    #[arg(long, default_value = model::INGRESS_CLASS)]
    class: String,
    /// Leave Ingresses without any class alone (by default flatnet is the default class).
    /// A stored IngressClass of the served name overrides this: its
    /// `ingressclass.kubernetes.io/is-default-class` annotation decides.
    #[arg(long)]
    ignore_classless: bool,
    /// `namespace/name` of the gateway's Service: its LoadBalancer IPs become the Ingresses'
    /// status address (node InternalIPs while it has none).
    #[arg(long)]
    publish_service: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if let Some(p) = &a.publish_service
        && p.split_once('/')
            .is_none_or(|(ns, n)| ns.is_empty() || n.is_empty())
    {
        anyhow::bail!("--publish-service {p:?}: want namespace/name");
    }
    let workers = match a.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let opts = ingress::Options {
        etcd: a.etcd,
        store_prefix: a.store_prefix,
        store_netns: a.store_netns,
        http: a.http.0,
        https: a.https.0,
        workers,
        watch: ingress::WatchConfig {
            filter: ingress::ClassFilter {
                class: a.class,
                serve_classless: !a.ignore_classless,
            },
            publish_service: a.publish_service,
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
    ingress::run(opts, shutdown)?;
    Ok(0)
}
