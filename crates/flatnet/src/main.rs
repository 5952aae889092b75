//! `flatnet`: the command-line interface (design.md §3). Thin: parses arguments, sets up
//! logging and calls the libraries; one module per subcommand under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "flatnet",
    version,
    about = "The Kubernetes network model as one inspectable system"
)]
struct Cli {
    /// Name of the lab to work on.
    #[arg(long, global = true, env = "FLATNET_LAB", default_value = "lab")]
    lab: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The node agent: subnet lease, routes to other nodes, the node's CNI config.
    Agent(cmd::agent::Args),
    /// Build, inspect and remove a lab cluster made of network namespaces.
    Lab(cmd::lab::Args),
    /// Create or update objects from Kubernetes YAML or JSON manifests.
    Apply(cmd::apply::Args),
    /// Delete objects named in a file, or one object by kind and name.
    Delete(cmd::delete::Args),
    /// Show objects.
    Get(cmd::get::Args),
    /// Set or remove labels on an object.
    Label(cmd::label::Args),
    /// Run a host command inside a pod's network namespace.
    Exec(cmd::exec::Args),
    /// Wait until the cluster reflects the store.
    Wait(cmd::wait::Args),
    /// Nodes, leases, agents and problems in plain words.
    Status(cmd::status::Args),
    /// The ingress gateway: serves Ingress objects (class `flatnet`) over HTTP and HTTPS.
    Ingress(cmd::ingress::Args),
    /// The cluster DNS server: answers for the cluster domain from the store.
    Dns(cmd::dns::Args),
    /// Where a flow's first packet goes and why: service proxy, route, NetworkPolicy.
    Trace(cmd::trace::Args),
    /// The pod-to-pod connectivity matrix: probed with real packets, or from policy (--static).
    Connectivity(cmd::connectivity::Args),
    /// NetworkPolicy questions: `policy explain SRC DST`.
    Policy(cmd::policy::Args),
}

fn main() {
    let cli = Cli::parse();
    let daemon = matches!(&cli.command, Cmd::Agent(_) | Cmd::Ingress(_) | Cmd::Dns(_))
        || matches!(&cli.command, Cmd::Lab(a) if a.is_daemon());
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLATNET_LOG").unwrap_or_else(|_| {
        // hickory's server logs every request at info.
        tracing_subscriber::EnvFilter::new(if daemon {
            "info,hickory_server=warn"
        } else {
            "warn"
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let lab = match lab::Lab::new(&cli.lab) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: --lab: {e}");
            std::process::exit(2);
        }
    };
    let code = match run(cli.command, lab) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(command: Cmd, lab: lab::Lab) -> anyhow::Result<i32> {
    match command {
        Cmd::Agent(a) => cmd::block_on(cmd::agent::run(a)),
        Cmd::Lab(a) => cmd::lab::run(a, lab),
        Cmd::Apply(a) => cmd::block_on(cmd::apply::run(a, lab)),
        Cmd::Delete(a) => cmd::block_on(cmd::delete::run(a, lab)),
        Cmd::Get(a) => cmd::block_on(cmd::get::run(a, lab)),
        Cmd::Label(a) => cmd::block_on(cmd::label::run(a, lab)),
        Cmd::Exec(a) => cmd::exec::run(a, lab),
        Cmd::Wait(a) => cmd::block_on(cmd::wait::run(a, lab)),
        Cmd::Status(a) => cmd::block_on(cmd::status::run(a, lab)),
        Cmd::Ingress(a) => cmd::ingress::run(a),
        Cmd::Dns(a) => cmd::dns::run(a),
        Cmd::Trace(a) => cmd::block_on(cmd::trace::run(a, lab)),
        Cmd::Connectivity(a) => cmd::block_on(cmd::connectivity::run(a, lab)),
        Cmd::Policy(a) => cmd::block_on(cmd::policy::run(a, lab)),
    }
}
