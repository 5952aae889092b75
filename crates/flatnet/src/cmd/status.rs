//! `flatnet status`: nodes, leases, agents, the converged revision, and problems in plain words
//! (`inspect::status`).

use inspect::status::Status;

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'o', long = "output", value_parser = ["json"])]
    output: Option<String>,
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let store = lab::client::connect(&lab).await?;
    let status = Status::read(&store).await?;
    if args.output.as_deref() == Some("json") {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.to_table());
    }
    Ok(0)
}
