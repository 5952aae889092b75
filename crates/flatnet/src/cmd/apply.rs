//! `flatnet apply -f FILE|- [-f FILE ...]`

#[derive(clap::Args)]
pub struct Args {
    /// Manifest file (multi-document YAML or JSON), or `-` for stdin; repeat `-f` for more
    /// files, as with kubectl. All of them are checked before anything is applied.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let mut objects = Vec::new();
    for file in &args.files {
        let text = super::read_input(file)?;
        objects.extend(model::parse_manifests(&text, file)?);
    }
    let store = lab::client::connect(&lab).await?;
    let applied = lab::api::apply(&store, objects)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.files.join(", ")))?;
    for a in applied {
        println!("{}/{} {}", a.kind.as_str().to_lowercase(), a.name, a.action);
    }
    Ok(0)
}
