//! `flatnet trace SRC DST [--port P] [--protocol TCP|UDP|SCTP] [-o json]`: the path of a flow's
//! first packet, from the same compiled state the agents apply (`inspect::trace`).

#[derive(clap::Args)]
pub struct Args {
    /// `ns/pod`, a pod name (namespace default), a node name, or an IP.
    src: String,
    /// `ns/pod`, a service (`ns/name` or `name`), a node name, or an IP.
    dst: String,
    /// Destination port (default: the service's first port, else 80).
    #[arg(long)]
    port: Option<u16>,
    #[arg(long, default_value = "TCP")]
    protocol: String,
    #[arg(short = 'o', long = "output", value_parser = ["json"])]
    output: Option<String>,
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let store = lab::client::connect(&lab).await?;
    let report =
        inspect::trace::trace(&store, &args.src, &args.dst, args.port, &args.protocol).await?;
    if args.output.as_deref() == Some("json") {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(0)
}
