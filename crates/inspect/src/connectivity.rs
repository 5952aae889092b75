//! `flatnet connectivity`: which pods are probed, the probes themselves (real packets sent from
//! inside each source pod's network namespace), and the same matrix computed from the compiled
//! policy (`--static`), plus how both are printed.
//!
//! Probes: a socket is created inside the source pod's network namespace (a socket belongs to
//! the namespace it was created in, whichever thread uses it later), then all probes run
//! concurrently on one runtime, each with its own deadline. TCP counts when the handshake
//! completes; UDP when a reply datagram comes back (the datagram is re-sent a few times
//! within the deadline; an ICMP port unreachable ends the probe at once); SCTP when the
//! association is established. A refusal, a timeout or any other error is "no connection".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use model::{Kind, Object};
use netpol::{Cluster, PodRef, Protocol};
use serde::Serialize;
use serde_json::Value;

/// Namespaces left out when no namespace is asked for: those the API server itself creates
/// for the cluster's own components.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// How many probes are in flight at once (each holds one socket).
pub const MAX_IN_FLIGHT: usize = 512;

/// Why a connectivity matrix could not be made.
#[derive(thiserror::Error, Debug)]
pub enum ConnectivityError {
    /// The kernel has no socket support for the protocol.
    #[error(
        "{protocol} is not supported by this kernel (opening a socket for it fails: {error}); \
         `--static` still answers from the compiled policy"
    )]
    Unsupported {
        /// The protocol asked for.
        protocol: Protocol,
        /// Why its socket cannot be opened.
        error: std::io::Error,
    },
    /// A source pod's network namespace cannot be used.
    #[error("pod {pod}: {reason}")]
    Pod {
        /// `namespace/name`.
        pod: String,
        /// What failed.
        reason: String,
    },
    /// The store's objects do not compile into a policy.
    #[error("{0}")]
    Policy(#[from] netpol::PolicyError),
    /// A store object is not a valid Kubernetes object.
    #[error("{0}")]
    Model(#[from] model::ModelError),
}

/// A pod taking part in the matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// `status.podIP`.
    pub ip: Ipv4Addr,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// Declared container ports as `(protocol, port)`.
    pub ports: Vec<(String, u16)>,
}

impl Member {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether a container of the pod declares `port` for `protocol`.
    pub fn declares(&self, protocol: Protocol, port: u16) -> bool {
        self.ports
            .iter()
            .any(|(p, n)| *n == port && p.eq_ignore_ascii_case(protocol.as_str()))
    }
}

/// The pods of the matrix, sorted by namespace then name: every pod that runs (`phase:
/// Running`) with an IPv4 `podIP` on the pod network (not `hostNetwork`), Ready or not, in
/// `namespaces` (empty: every namespace except [`SYSTEM_NAMESPACES`]).
pub fn select(pods: &[Value], namespaces: &[String]) -> Vec<Member> {
    let mut out: Vec<Member> = pods
        .iter()
        .filter_map(|p| {
            let namespace = p["metadata"]["namespace"].as_str().unwrap_or("default");
            let wanted = if namespaces.is_empty() {
                !SYSTEM_NAMESPACES.contains(&namespace)
            } else {
                namespaces.iter().any(|n| n == namespace)
            };
            if !wanted
                || p["status"]["phase"] != "Running"
                || p["spec"]["hostNetwork"] == Value::Bool(true)
            {
                return None;
            }
            let ip: Ipv4Addr = p["status"]["podIP"].as_str()?.parse().ok()?;
            let ports = p["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .filter_map(|port| {
                    let n = u16::try_from(port["containerPort"].as_u64()?).ok()?;
                    let proto = port["protocol"].as_str().unwrap_or("TCP").to_string();
                    Some((proto, n))
                })
                .collect();
            Some(Member {
                namespace: namespace.to_string(),
                name: p["metadata"]["name"].as_str()?.to_string(),
                ip,
                ready: lab::api::is_ready(p),
                ports,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// A connectivity matrix as `flatnet connectivity` prints it (the JSON keys are the CLI
/// contract, design.md §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// Destination port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: Protocol,
    /// Computed from the compiled policy rather than probed.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// `namespace/name`, sorted by namespace then name.
    pub pods: Vec<String>,
    /// `matrix[i][j]`: from `pods[i]` to `pods[j]`, 1 (connected / allowed) or 0.
    pub matrix: Vec<Vec<u8>>,
}

impl Matrix {
    /// The JSON document: the contract's keys in the contract's order, one matrix row per
    /// line.
    pub fn to_json(&self) -> String {
        let pods = self
            .pods
            .iter()
            .map(|p| Value::String(p.clone()).to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let n = self.matrix.len();
        let mut out = format!(
            "{{\"port\": {}, \"protocol\": \"{}\", \"static\": {},\n \"pods\": [{pods}],\n \"matrix\": [",
            self.port, self.protocol, self.is_static,
        );
        // Cells written byte by byte: a 3,000-pod matrix has 9 million of them.
        out.reserve(n * (3 * n + 5) + 4);
        for (i, r) in self.matrix.iter().enumerate() {
            out.push_str(if i == 0 { "\n  [" } else { ",\n  [" });
            for (j, &c) in r.iter().enumerate() {
                if j > 0 {
                    out.push_str(", ");
                }
                out.push(if c == 1 { '1' } else { '0' });
            }
            out.push(']');
        }
        out.push_str("]}\n");
        out
    }

    /// A truth table like upstream's e2e output: `X` connected (allowed), `.` not.
    pub fn to_table(&self) -> String {
        let how = if self.is_static {
            "computed from the compiled NetworkPolicies (--static)"
        } else {
            "probed with real packets"
        };
        let mut s = format!(
            "{}/{} {how}: X = connected, . = no connection; rows: from, columns: to\n",
            self.protocol, self.port
        );
        if self.pods.is_empty() {
            s.push_str("(no pods)\n");
            return s;
        }
        let w = self.pods.iter().map(String::len).max().unwrap_or(1);
        let _ = write!(s, "{:<w$}", "");
        for p in &self.pods {
            let _ = write!(s, "  {p:<w$}");
        }
        s.push('\n');
        for (p, row) in self.pods.iter().zip(&self.matrix) {
            let _ = write!(s, "{p:<w$}");
            for &c in row {
                let _ = write!(s, "  {:<w$}", if c == 1 { "X" } else { "." });
            }
            s.truncate(s.trim_end().len());
            s.push('\n');
        }
        s
    }
}

/// The matrix the compiled policy gives for `members` (`objects`: the store's Namespaces,
/// Pods and NetworkPolicies; other kinds are ignored).
pub fn static_matrix(
    objects: &[Object],
    members: &[Member],
    port: u16,
    protocol: Protocol,
) -> Result<Matrix, ConnectivityError> {
    let cluster = Cluster::from_objects(objects)?;
    let refs: Vec<PodRef> = members
        .iter()
        .map(|m| PodRef::new(&m.namespace, &m.name))
        .collect();
    let matrix = cluster.compile().matrix(&refs, port, protocol)?;
    Ok(Matrix {
        port,
        protocol,
        is_static: true,
        pods: members.iter().map(Member::key).collect(),
        matrix,
    })
}

/// Store objects (as JSON) of the kinds policy reads, as typed-checked [`Object`]s.
pub fn policy_objects(values: Vec<Value>) -> Result<Vec<Object>, ConnectivityError> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let o = Object::from_json(v)?;
        if matches!(o.kind, Kind::Namespace | Kind::Pod | Kind::NetworkPolicy) {
            out.push(o);
        }
    }
    Ok(out)
}

/// Fails with [`ConnectivityError::Unsupported`] when the kernel cannot open a socket of
/// `protocol` (SCTP without the `sctp` module).
pub fn check_supported(protocol: Protocol) -> Result<(), ConnectivityError> {
    let res = match protocol {
        Protocol::Tcp => std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map(drop),
        Protocol::Udp => std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map(drop),
        Protocol::Sctp => sctp_socket().map(drop),
    };
    res.map_err(|error| ConnectivityError::Unsupported { protocol, error })
}

fn sctp_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
    .map_err(std::io::Error::from)
}

/// What one probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The exchange completed (TCP handshake, UDP reply, SCTP association).
    Connected,
    /// Actively refused (TCP reset, ICMP port unreachable).
    Refused,
    /// Nothing came back within the timeout.
    TimedOut,
    /// Another error (unreachable, permission denied by a reject rule, ...).
    Failed(String),
}

/// A socket created in a source pod's network namespace, not yet connected.
enum Prepared {
    Tcp(tokio::net::TcpSocket),
    Udp(std::net::UdpSocket),
    Sctp(std::os::fd::OwnedFd),
}

fn create(protocol: Protocol) -> std::io::Result<Prepared> {
    Ok(match protocol {
        Protocol::Tcp => Prepared::Tcp(tokio::net::TcpSocket::new_v4()?),
        Protocol::Udp => {
            let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            s.set_nonblocking(true)?;
            Prepared::Udp(s)
        }
        Protocol::Sctp => Prepared::Sctp(sctp_socket()?),
    })
}

/// Probes from every member (inside its network namespace, `netns_of` gives the path) to
/// every member's address on `port`/`protocol`, the diagonal included. `outcomes[i][j]` is
/// from `members[i]` to `members[j]`. Must run inside a multi-threaded tokio runtime.
pub async fn probe(
    members: &[Member],
    netns_of: &dyn Fn(&Member) -> PathBuf,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Vec<Vec<Outcome>>, ConnectivityError> {
    check_supported(protocol)?;
    let n = members.len();
    let namespaces = members
        .iter()
        .map(|m| {
            datapath::NetNs::open(netns_of(m)).map_err(|e| ConnectivityError::Pod {
                pod: m.key(),
                reason: format!("{e} (is it still starting, or deleted?)"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ns) in namespaces.iter().enumerate() {
        for (j, dst) in members.iter().enumerate() {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break; // the semaphore is never closed
            };
            let created = ns
                .run(|| create(protocol))
                .map_err(|e| ConnectivityError::Pod {
                    pod: members[i].key(),
                    reason: e.to_string(),
                })?;
            let to = SocketAddrV4::new(dst.ip, port);
            tasks.spawn(async move {
                let outcome = match created {
                    Ok(sock) => exchange(sock, to, timeout).await,
                    Err(e) => Outcome::Failed(format!("socket: {e}")),
                };
                drop(permit);
                (i, j, outcome)
            });
        }
    }
    let mut out = vec![vec![Outcome::TimedOut; n]; n];
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((i, j, outcome)) => {
                tracing::debug!(
                    from = members[i].key(),
                    to = members[j].key(),
                    ?outcome,
                    "probe"
                );
                out[i][j] = outcome;
            }
            Err(e) => tracing::warn!("a probe task failed: {e}"),
        }
    }
    Ok(out)
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        std::io::ErrorKind::TimedOut => Outcome::TimedOut,
        _ => Outcome::Failed(e.to_string()),
    }
}

async fn exchange(sock: Prepared, to: SocketAddrV4, timeout: Duration) -> Outcome {
    let to = SocketAddr::V4(to);
    match sock {
        Prepared::Tcp(s) => match tokio::time::timeout(timeout, s.connect(to)).await {
            Ok(Ok(_stream)) => Outcome::Connected,
            Ok(Err(e)) => classify(&e),
            Err(_) => Outcome::TimedOut,
        },
        Prepared::Udp(s) => match tokio::time::timeout(timeout, udp_exchange(s, to, timeout)).await
        {
            Ok(o) => o,
            Err(_) => Outcome::TimedOut,
        },
        Prepared::Sctp(fd) => {
            let run = tokio::task::spawn_blocking(move || sctp_connect(fd, to, timeout));
            match run.await {
                Ok(Ok(())) => Outcome::Connected,
                Ok(Err(e)) => classify(&e),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
    }
}

/// Sends a datagram (again every quarter of the timeout) until a reply comes.
async fn udp_exchange(s: std::net::UdpSocket, to: SocketAddr, timeout: Duration) -> Outcome {
    let s = match tokio::net::UdpSocket::from_std(s) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if let Err(e) = s.connect(to).await {
        return classify(&e);
    }
    let mut buf = [0u8; 512];
    loop {
        if let Err(e) = s.send(b"flatnet connectivity probe\n").await {
            return classify(&e);
        }
        match tokio::time::timeout(timeout / 4, s.recv(&mut buf)).await {
            Ok(Ok(_)) => return Outcome::Connected,
            Ok(Err(e)) => return classify(&e),
            Err(_) => {} // send again
        }
    }
}

/// A blocking SCTP connect bounded by `SO_SNDTIMEO` (the kernel's SCTP connect waits at most
/// that long for the association).
fn sctp_connect(
    fd: std::os::fd::OwnedFd,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<()> {
    use nix::sys::socket::{SockaddrIn, connect, setsockopt, sockopt};
    use nix::sys::time::TimeVal;
    use std::os::fd::AsRawFd;
    let tv = TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    let SocketAddr::V4(v4) = to else {
        return Err(std::io::Error::other("IPv6 is not probed"));
    };
    match connect(fd.as_raw_fd(), &SockaddrIn::from(v4)) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINPROGRESS) | Err(nix::Error::EAGAIN) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "association not established in time",
        )),
        Err(e) => Err(e.into()),
    }
}

/// 1 for [`Outcome::Connected`], else 0.
pub fn to_cells(outcomes: &[Vec<Outcome>]) -> Vec<Vec<u8>> {
    outcomes
        .iter()
        .map(|r| {
            r.iter()
                .map(|o| u8::from(*o == Outcome::Connected))
                .collect()
        })
        .collect()
}

/// Destinations that declare no container port for `protocol`/`port`, by key (a probe to
/// them finds no listener of the built-in responder, whatever policy says).
pub fn without_port(members: &[Member], protocol: Protocol, port: u16) -> Vec<String> {
    members
        .iter()
        .filter(|m| !m.declares(protocol, port))
        .map(Member::key)
        .collect()
}

/// Counts of outcomes other than connected, for a one-line summary on stderr.
pub fn summary(outcomes: &[Vec<Outcome>]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes.iter().flatten() {
        let k = match o {
            Outcome::Connected => "connected",
            Outcome::Refused => "refused",
            Outcome::TimedOut => "timed out",
            Outcome::Failed(_) => "failed",
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, phase: &str, ip: Option<&str>, ready: bool) -> Value {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
            "spec": {"containers": [{"name": "c", "ports": [
                {"name": "serve-80-tcp", "containerPort": 80},
                {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"}]}]},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        });
        if let Some(ip) = ip {
            p["status"]["podIP"] = json!(ip);
        }
        p
    }

    #[test]
    fn selection_is_running_pods_with_an_ip_sorted_without_system_namespaces() {
        let pods = vec![
            pod("y", "a", "Running", Some("10.244.1.3"), true),
            pod("x", "b", "Running", Some("10.244.1.2"), false),
            pod("x", "a", "Running", Some("10.244.2.2"), true),
            pod("x", "pending", "Pending", None, false),
            pod("x", "noip", "Running", None, false),
            pod("x", "done", "Succeeded", Some("10.244.1.9"), false),
            pod("kube-system", "dns", "Running", Some("10.244.1.5"), true),
        ];
        let keys = |m: Vec<Member>| m.iter().map(Member::key).collect::<Vec<_>>();
        assert_eq!(keys(select(&pods, &[])), ["x/a", "x/b", "y/a"]);
        assert_eq!(keys(select(&pods, &["y".into()])), ["y/a"]);
        assert_eq!(
            keys(select(&pods, &["kube-system".into(), "y".into()])),
            ["kube-system/dns", "y/a"]
        );
        let sel = select(&pods, &[]);
        assert!(sel[0].ready && !sel[1].ready, "{sel:?}");
        assert!(sel[0].declares(Protocol::Udp, 80));
        assert!(!sel[0].declares(Protocol::Sctp, 80));
        assert!(!sel[0].declares(Protocol::Tcp, 81));
        let mut host = pod("x", "host", "Running", Some("172.20.0.11"), true);
        host["spec"]["hostNetwork"] = json!(true);
        assert!(select(&[host], &[]).is_empty());
    }

    #[test]
    fn json_has_the_contract_keys_in_order() {
        let m = Matrix {
            port: 80,
            protocol: Protocol::Tcp,
            is_static: false,
            pods: vec!["x/a".into(), "x/b".into()],
            matrix: vec![vec![1, 0], vec![1, 1]],
        };
        let text = m.to_json();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"port": 80, "protocol": "TCP", "static": false,
                   "pods": ["x/a", "x/b"], "matrix": [[1, 0], [1, 1]]})
        );
        assert_eq!(serde_json::to_value(&m).unwrap(), v, "serde agrees");
        let keys: Vec<&str> = [
            "\"port\"",
            "\"protocol\"",
            "\"static\"",
            "\"pods\"",
            "\"matrix\"",
        ]
        .into_iter()
        .collect();
        let pos: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
        let empty = Matrix {
            pods: vec![],
            matrix: vec![],
            ..m
        };
        let v: Value = serde_json::from_str(&empty.to_json()).unwrap();
        assert_eq!(v["matrix"], json!([]));
    }

    #[test]
    fn table_marks_cells_like_upstream() {
        let m = Matrix {
            port: 81,
            protocol: Protocol::Udp,
            is_static: true,
            pods: vec!["x/a".into(), "y/b".into()],
            matrix: vec![vec![1, 0], vec![0, 1]],
        };
        let t = m.to_table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("UDP/81 computed"), "{t}");
        assert_eq!(lines[1], "     x/a  y/b");
        assert_eq!(lines[2], "x/a  X    .");
        assert_eq!(lines[3], "y/b  .    X");
    }

    #[test]
    fn static_matrix_follows_policy() {
        let mut objects = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
            pod("x", "a", "Running", Some("10.244.1.2"), true),
            pod("x", "b", "Running", Some("10.244.1.3"), true),
        ];
        objects.push(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-a", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}
        }));
        let members = select(&objects[1..3], &[]);
        let objects = policy_objects(objects).unwrap();
        let m = static_matrix(&objects, &members, 80, Protocol::Tcp).unwrap();
        assert_eq!(m.pods, ["x/a", "x/b"]);
        assert_eq!(m.matrix, vec![vec![1, 1], vec![0, 1]]);
        assert!(m.is_static);
        assert_eq!(
            without_port(&members, Protocol::Tcp, 81),
            ["x/a".to_string(), "x/b".to_string()]
        );
    }

    #[test]
    fn outcomes_count_only_completed_exchanges() {
        let o = vec![
            vec![Outcome::Connected, Outcome::Refused],
            vec![Outcome::TimedOut, Outcome::Failed("no route".into())],
        ];
        assert_eq!(to_cells(&o), vec![vec![1, 0], vec![0, 0]]);
        assert_eq!(summary(&o)["timed out"], 1);
    }
}
