//! `flatnet apply -f FILE|-`

#[derive(clap::Args)]
pub struct Args {
    /// Manifest file (multi-document YAML or JSON), or `-` for stdin.
    #[arg(short = 'f', long = "filename")]
    file: String,
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let text = super::read_input(&args.file)?;
    let objects = model::parse_manifests(&text, &args.file)?;
    let store = lab::client::connect(&lab).await?;
    let applied = lab::api::apply(&store, objects)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file))?;
    for a in applied {
        println!("{}/{} {}", a.kind.as_str().to_lowercase(), a.name, a.action);
    }
    Ok(0)
}
