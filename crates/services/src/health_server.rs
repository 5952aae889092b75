//! The service proxy's health servers, as kube-proxy runs them: the node's proxy health
//! (`/healthz`, `/livez`, default `0.0.0.0:10256`) and one listener per health-check node port
//! (`0.0.0.0:<healthCheckNodePort>` of each LoadBalancer Service with
//! `externalTrafficPolicy: Local`), opened and closed as Services come and go. What they answer
//! is decided by [`crate::plan::health`]; this module owns the sockets, in the node's network
//! namespace. Each connection gets one HTTP/1.1 answer and is closed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::plan::ServiceHealth;
use crate::plan::health::{
    self as answers, Answer, DEFAULT_HEALTH_TIMEOUT, DEFAULT_HEALTHZ_PORT, SyncState,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How long a client may take to send its request head, and its largest size.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 8 * 1024;
/// Wait before trying again to open a port that could not be bound.
const REBIND: Duration = Duration::from_secs(1);

/// Which health servers the agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Where `/healthz` and `/livez` listen (kube-proxy's `--healthz-bind-address`); `None`:
    /// not served.
    pub healthz_bind: Option<SocketAddr>,
    /// Whether to listen on the health-check node ports.
    pub node_ports: bool,
    /// How long a received change may wait for the dataplane before the proxy is unhealthy.
    pub timeout: Duration,
}

impl Default for HealthConfig {
    /// `0.0.0.0:10256`, node ports on, 60 s (kube-proxy's defaults).
    fn default() -> Self {
        HealthConfig {
            healthz_bind: Some(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                DEFAULT_HEALTHZ_PORT,
            ))),
            node_ports: true,
            timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }
}

impl HealthConfig {
    /// No health server at all (tests that run several agents in one namespace).
    pub fn disabled() -> Self {
        HealthConfig {
            healthz_bind: None,
            node_ports: false,
            timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    sync: SyncState,
    services: BTreeMap<u16, ServiceHealth>,
    timeout: Option<Duration>,
}

/// What the proxy tells the health servers: when it received changes and applied them, and
/// the health checks of its last applied plan. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ProxyHealth {
    inner: Arc<Mutex<Inner>>,
    ports_changed: Arc<Notify>,
}

impl ProxyHealth {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change arrived that the dataplane does not hold yet.
    pub fn queued(&self) {
        self.lock().sync.queued(SystemTime::now());
    }

    /// The dataplane holds every change received so far.
    pub fn updated(&self) {
        self.lock().sync.updated(SystemTime::now());
    }

    /// The health checks of the plan now in the dataplane.
    pub fn set_services(&self, services: &BTreeMap<u16, ServiceHealth>) {
        let mut g = self.lock();
        let ports_differ = !g.services.keys().eq(services.keys());
        g.services.clone_from(services);
        drop(g);
        if ports_differ {
            self.ports_changed.notify_one();
        }
    }

    fn timeout(&self) -> Duration {
        self.lock().timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT)
    }

    /// Whether the proxy keeps up (kube-proxy's `IsHealthy`).
    pub fn healthy(&self) -> bool {
        let t = self.timeout();
        self.lock().sync.healthy(SystemTime::now(), t)
    }

    /// The answer of health-check node port `port`, if a service has it.
    pub fn service_answer(&self, port: u16) -> Option<Answer> {
        let healthy = self.healthy();
        let g = self.lock();
        g.services
            .get(&port)
            .map(|s| answers::service_answer(s, healthy))
    }

    /// The answer of the node's health server for `path`.
    pub fn node_answer(&self, path: &str) -> Answer {
        let t = self.timeout();
        let sync = self.lock().sync;
        answers::node_answer(path, &sync, true, SystemTime::now(), t)
    }

    fn ports(&self) -> BTreeSet<u16> {
        self.lock().services.keys().copied().collect()
    }
}

/// Runs the health servers of `cfg` in the namespace `netns` (`None`: the agent's own) until
/// dropped. A port that cannot be opened is logged and tried again every second.
pub async fn serve(cfg: HealthConfig, netns: Option<PathBuf>, health: ProxyHealth) {
    health.lock().timeout = Some(cfg.timeout);
    let node = async {
        let Some(addr) = cfg.healthz_bind else {
            return std::future::pending().await;
        };
        let mut warned = false;
        let listener = loop {
            match bind(netns.as_deref(), addr).await {
                Ok(l) => break l,
                Err(e) => {
                    // Warned once; the retries every second log at debug.
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(%addr, error = %e, "cannot open the proxy health port; retrying");
                    } else {
                        tracing::debug!(%addr, error = %e, "cannot open the proxy health port");
                    }
                    tokio::time::sleep(REBIND).await;
                }
            }
        };
        tracing::info!(%addr, "proxy health server listening");
        let h = health.clone();
        accept_loop(listener, move |path| h.node_answer(path)).await;
    };
    let ports = async {
        if !cfg.node_ports {
            return std::future::pending().await;
        }
        node_ports(netns.as_deref(), &health).await;
    };
    tokio::join!(node, ports);
}

/// Keeps one listener per health-check node port the plan has.
async fn node_ports(netns: Option<&Path>, health: &ProxyHealth) {
    let mut open: BTreeMap<u16, JoinHandle<()>> = BTreeMap::new();
    // Ports that could not be opened and were warned about (the retries log at debug).
    let mut warned: BTreeSet<u16> = BTreeSet::new();
    loop {
        // Registered before the ports are read, so no change slips between the two.
        let changed = health.ports_changed.notified();
        let want = health.ports();
        warned.retain(|p| want.contains(p));
        open.retain(|port, task| {
            let keep = want.contains(port);
            if !keep {
                task.abort();
                tracing::info!(port, "health check node port closed");
            }
            keep
        });
        let mut failed = false;
        let missing: Vec<u16> = want
            .iter()
            .filter(|p| !open.contains_key(p))
            .copied()
            .collect();
        for port in &missing {
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port));
            match bind(netns, addr).await {
                Ok(listener) => {
                    tracing::info!(port, "health check node port listening");
                    warned.remove(port);
                    let (h, port) = (health.clone(), *port);
                    let task = tokio::spawn(accept_loop(listener, move |_| {
                        // A port whose service just went answers as kube-proxy does for a
                        // service without local endpoints until the listener closes.
                        h.service_answer(port).unwrap_or_else(|| Answer {
                            status: 503,
                            headers: Vec::new(),
                            body: String::new(),
                        })
                    }));
                    open.insert(port, task);
                }
                Err(e) => {
                    if warned.insert(*port) {
                        tracing::warn!(port, error = %e, "cannot open health check node port; retrying");
                    } else {
                        tracing::debug!(port, error = %e, "cannot open health check node port");
                    }
                    failed = true;
                }
            }
        }
        if failed {
            let _ = tokio::time::timeout(REBIND, changed).await;
        } else {
            changed.await;
        }
    }
}

/// Binds a TCP listener on `addr` inside `netns` (sockets stay in the namespace they were
/// made in).
async fn bind(netns: Option<&Path>, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let netns = netns.map(Path::to_path_buf);
    let std = tokio::task::spawn_blocking(move || {
        let open = || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        };
        match netns {
            None => open(),
            #[cfg(feature = "kernel")]
            Some(p) => datapath::NetNs::open(&p)
                .and_then(|ns| ns.run(open))
                .map_err(std::io::Error::other)?,
            #[cfg(not(feature = "kernel"))]
            Some(p) => Err(std::io::Error::other(format!(
                "cannot enter {}: built without the kernel feature",
                p.display()
            ))),
        }
    })
    .await
    .map_err(std::io::Error::other)??;
    TcpListener::from_std(std)
}

/// Answers every connection of `listener` with `answer(path)`.
async fn accept_loop<F>(listener: TcpListener, answer: F)
where
    F: Fn(&str) -> Answer + Clone + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(READ_TIMEOUT, respond(stream, answer)).await;
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "health server accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads one request head and writes the answer.
async fn respond<F: Fn(&str) -> Answer>(mut s: TcpStream, answer: F) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            let bad = Answer {
                status: 400,
                headers: Vec::new(),
                body: String::new(),
            };
            return s.write_all(&bad.to_http()).await;
        }
    }
    let (method, path) = request_line(&head);
    let mut out = answer(path).to_http();
    if method == "HEAD"
        && let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n")
    {
        out.truncate(end + 4);
    }
    s.write_all(&out).await?;
    s.shutdown().await
}

/// Method and path of an HTTP/1.x request head (empty when it has none).
fn request_line(head: &[u8]) -> (&str, &str) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or_default().trim_end();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    (method, path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kube_proxys() {
        let c = HealthConfig::default();
        assert_eq!(c.healthz_bind, Some("0.0.0.0:10256".parse().unwrap()));
        assert!(c.node_ports);
        assert_eq!(c.timeout, Duration::from_secs(60));
    }

    #[test]
    fn request_line_takes_method_and_path() {
        assert_eq!(
            request_line(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("GET", "/healthz")
        );
        assert_eq!(request_line(b"\r\n\r\n"), ("", ""));
    }

    #[test]
    fn answers_follow_the_last_applied_plan() {
        let h = ProxyHealth::default();
        assert!(h.service_answer(32000).is_none());
        let mut m = BTreeMap::new();
        m.insert(
            32000,
            ServiceHealth {
                namespace: "default".into(),
                name: "web".into(),
                local_endpoints: 2,
            },
        );
        h.set_services(&m);
        assert_eq!(h.service_answer(32000).unwrap().status, 200);
        h.updated();
        h.queued();
        assert!(h.healthy(), "pending, not late");
        assert_eq!(h.node_answer("/healthz").status, 200);
        m.get_mut(&32000).unwrap().local_endpoints = 0;
        h.set_services(&m);
        assert_eq!(h.service_answer(32000).unwrap().status, 503);
    }
}
