//! `flatnet connectivity [--port 80] [--protocol TCP|UDP|SCTP] [-n NS ...] [--static]
//! [-o table|json]`: the pod-to-pod connectivity matrix, probed with real packets from inside
//! each pod, or computed from the compiled NetworkPolicies (`--static`). See
//! `inspect::connectivity` for which pods take part and how probes count.

use std::time::Duration;

use inspect::connectivity::{self, Matrix};
use model::Kind;
use netpol::Protocol;

#[derive(clap::Args)]
pub struct Args {
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// TCP, UDP or SCTP (any case).
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Namespaces whose pods take part; repeat or give a comma list. Default: every namespace
    /// except kube-system, kube-public and kube-node-lease.
    #[arg(short = 'n', long = "namespace", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Compute the matrix from the compiled NetworkPolicies instead of sending packets.
    #[arg(long = "static")]
    is_static: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", default_value = "table", value_parser = ["table", "json"])]
    output: String,
    /// How long each probe waits for the exchange to complete, e.g. 1s, 500ms.
    #[arg(long, default_value = "1s", value_parser = super::wait::parse_duration)]
    timeout: Duration,
}

pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse::<Protocol>().map_err(|e| e.to_string())
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    if let Some(bad) = args.namespaces.iter().find(|n| n.is_empty()) {
        anyhow::bail!("--namespace: invalid value {bad:?}: a namespace name must not be empty");
    }
    // Before touching the store: an unsupported protocol is an error whatever the pods.
    if !args.is_static {
        connectivity::check_supported(args.protocol)?;
    }
    let store = lab::client::connect(&lab).await?;
    let pods = lab::api::get(&store, Kind::Pod, None, None).await?;
    let members = connectivity::select(&pods, &args.namespaces);
    if members.is_empty() {
        eprintln!("note: no running pods with an IP in the selected namespaces");
    }
    let not_ready: Vec<String> = members
        .iter()
        .filter(|m| !m.ready)
        .map(|m| m.key())
        .collect();
    if !not_ready.is_empty() {
        eprintln!("note: not Ready (still included): {}", not_ready.join(", "));
    }
    let matrix = if args.is_static {
        let no_port = connectivity::without_port(&members, args.protocol, args.port);
        if !no_port.is_empty() {
            eprintln!(
                "note: --static assumes every pod listens on {}/{}; these declare no such \
                 containerPort, so real probes to them find no listener: {}",
                args.protocol,
                args.port,
                no_port.join(", ")
            );
        }
        let mut values = lab::api::get(&store, Kind::Namespace, None, None).await?;
        values.extend(pods);
        values.extend(lab::api::get(&store, Kind::NetworkPolicy, None, None).await?);
        let objects = connectivity::policy_objects(values)?;
        connectivity::static_matrix(&objects, &members, args.port, args.protocol)?
    } else {
        let outcomes = connectivity::probe(
            &members,
            &|m| {
                std::path::PathBuf::from(lab::shell::netns_path(
                    &lab.pod_netns(&m.namespace, &m.name),
                ))
            },
            args.port,
            args.protocol,
            args.timeout,
        )
        .await?;
        tracing::info!(summary = ?connectivity::summary(&outcomes), "probes done");
        Matrix {
            port: args.port,
            protocol: args.protocol,
            is_static: false,
            pods: members.iter().map(|m| m.key()).collect(),
            matrix: connectivity::to_cells(&outcomes),
        }
    };
    match args.output.as_str() {
        "json" => print!("{}", matrix.to_json()),
        _ => print!("{}", matrix.to_table()),
    }
    Ok(0)
}
